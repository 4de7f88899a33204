//! The xpol compiler: from `.xpol` source files to a BPF ELF object.
//!
//! The whole pipeline is [`build`]; each pass is a function from one typed
//! representation to the next (see ARCHITECTURE.md).

pub mod check;
pub mod codegen;
pub mod ir;
pub mod load;
pub mod reference;
pub mod verifier;

use std::path::Path;
use xpol_lang::meta::ObjectMeta;
use xpol_lang::{Diagnostic, SourceMap};

/// What `xpolc build --emit` may print instead of (or besides) the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    Ast,
    Ir,
    Llvm,
    Asm,
}

#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Also produce textual LLVM IR and BPF assembly (`--emit llvm|asm`).
    pub text: bool,
    /// Test-only codegen faults (verifier-feedback tests); not reachable from the CLI.
    #[doc(hidden)]
    pub faults: codegen::Faults,
}

/// The result of a build: the sources read (for rendering diagnostics), all
/// diagnostics (warnings, and errors when it failed), and the outputs when it
/// succeeded.
pub struct Build {
    pub sources: SourceMap,
    pub diagnostics: Vec<Diagnostic>,
    pub output: Option<Output>,
}

pub struct Output {
    pub ast: Vec<xpol_lang::ast::Policy>,
    pub ir: ir::Policy,
    /// The BPF ELF object.
    pub object: Vec<u8>,
    /// The metadata embedded in the object.
    pub meta: ObjectMeta,
    /// Textual LLVM IR and BPF assembly, for `--emit llvm|asm`.
    pub llvm_ir: String,
    pub asm: String,
    /// Source positions in the object's line info and their spans, to map
    /// verifier messages back to expressions ([`verifier::explain`]).
    pub located: Vec<codegen::Located>,
}

impl Build {
    pub fn failed(&self) -> bool {
        self.output.is_none()
    }
}

/// The whole pipeline: load (parse the root file and its includes), check
/// (resolve names and types, lower to the policy IR), generate the object.
pub fn build(root: &Path, options: &BuildOptions) -> Build {
    let mut sources = SourceMap::new();
    let mut diagnostics = Vec::new();
    let output = (|| {
        let loaded = load::load(root, &mut sources).map_err(|d| diagnostics.extend(d)).ok()?;
        let ir = check::check(&loaded, &sources).map_err(|d| diagnostics.extend(d)).ok()?;
        diagnostics.extend(ir.warnings.iter().cloned());
        let gen = codegen::generate(&ir, &sources, options).map_err(|d| diagnostics.extend(d)).ok()?;
        let ast = loaded.files.into_iter().map(|f| f.policy).collect();
        Some(Output { ast, ir, object: gen.object, meta: gen.meta, llvm_ir: gen.llvm_ir, asm: gen.asm, located: gen.located })
    })();
    Build { sources, diagnostics, output }
}
