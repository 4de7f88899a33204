//! The xpol compiler: from `.xpol` source files to a BPF ELF object.
//!
//! The whole pipeline is [`build`]; each pass is a function from one typed
//! representation to the next (see ARCHITECTURE.md).

pub mod analysis;
pub mod check;
pub mod classifier;
#[cfg(feature = "llvm")]
pub mod codegen;
/// Without LLVM (the `llvm` feature off): every pass but code generation,
/// whose stand-in refuses with `xpol::no_codegen`.
#[cfg(not(feature = "llvm"))]
#[path = "no_codegen.rs"]
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
    /// Lower every rule one after another, with no decision tree
    /// (`classifier`): the baseline of `benches/classbench.rs`; not
    /// reachable from the CLI.
    #[doc(hidden)]
    pub linear_rules: bool,
    /// Test-only codegen faults (verifier-feedback tests); not reachable from the CLI.
    #[doc(hidden)]
    #[cfg(feature = "llvm")]
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
    build_from(Root::File(root), options)
}

/// [`build`] with the root file's text given (an editor's unsaved buffer);
/// includes are read from disk relative to `root` ([`load::load_text`]).
pub fn build_text(root: &Path, text: String, options: &BuildOptions) -> Build {
    build_from(Root::Text(root, text), options)
}

/// [`build`] of a policy read from `input` (standard input, for `xpolc
/// check -`): named `<stdin>` in diagnostics, its includes and set files
/// read relative to the current directory ([`load::load_stdin`]). Input
/// that cannot be read, is not UTF-8 or is larger than a policy may be is
/// an `xpol::io` error.
pub fn build_stdin(input: impl std::io::Read, options: &BuildOptions) -> Build {
    let text = xpol_lang::input::read_capped(input, xpol_lang::input::SOURCE_LIMIT)
        .and_then(|bytes| String::from_utf8(bytes).map_err(|_| xpol_lang::input::InputError::NotUtf8));
    match text {
        Ok(text) => build_from(Root::Stdin(text), options),
        Err(e) => Build {
            sources: SourceMap::new(),
            diagnostics: vec![Diagnostic::error("xpol::io", format!("cannot read the policy from standard input: {e}"))],
            output: None,
        },
    }
}

/// Where [`build_from`] gets the root policy.
enum Root<'a> {
    File(&'a Path),
    /// An editor's buffer for the file at this path.
    Text(&'a Path, String),
    Stdin(String),
}

/// What the passes before codegen found: for editors, which re-check on
/// every keystroke and need the syntax trees (names, includes) even when
/// the checker fails.
pub struct Checked {
    pub sources: SourceMap,
    /// Parse, check and lint diagnostics.
    pub diagnostics: Vec<Diagnostic>,
    /// The parsed files; `None` when a file failed to parse or read.
    pub loaded: Option<load::Loaded>,
    /// The checked policy; `None` when the checker found errors.
    pub ir: Option<ir::Policy>,
}

/// Load, check and lint, without codegen: the root file's text is given
/// (see [`build_text`]).
pub fn check_text(root: &Path, text: String) -> Checked {
    check_from(Root::Text(root, text))
}

/// Load, check and lint the policy at `root`, without codegen (`xpolc
/// diff` and `query` analyse the checked IR).
pub fn check_file(root: &Path) -> Checked {
    check_from(Root::File(root))
}

fn check_from(root: Root) -> Checked {
    let mut sources = SourceMap::new();
    let mut diagnostics = Vec::new();
    let loaded = match root {
        Root::File(path) => load::load(path, &mut sources),
        Root::Text(path, text) => load::load_text(path, text, &mut sources),
        Root::Stdin(text) => load::load_stdin(text, &mut sources),
    };
    let loaded = loaded.map_err(|d| diagnostics.extend(d)).ok();
    let ir = loaded.as_ref().and_then(|l| check::check(l, &sources).map_err(|d| diagnostics.extend(d)).ok());
    if let Some(ir) = &ir {
        diagnostics.extend(ir.warnings.iter().cloned());
    }
    Checked { sources, diagnostics, loaded, ir }
}

fn build_from(root: Root, options: &BuildOptions) -> Build {
    let mut sources = SourceMap::new();
    let mut diagnostics = Vec::new();
    let output = (|| {
        let loaded = match root {
            Root::File(path) => load::load(path, &mut sources),
            Root::Text(path, text) => load::load_text(path, text, &mut sources),
            Root::Stdin(text) => load::load_stdin(text, &mut sources),
        };
        let loaded = loaded.map_err(|d| diagnostics.extend(d)).ok()?;
        let ir = check::check(&loaded, &sources).map_err(|d| diagnostics.extend(d)).ok()?;
        diagnostics.extend(ir.warnings.iter().cloned());
        let gen = codegen::generate(&ir, &sources, options).map_err(|d| diagnostics.extend(d)).ok()?;
        let ast = loaded.files.into_iter().map(|f| f.policy).collect();
        Some(Output { ast, ir, object: gen.object, meta: gen.meta, llvm_ir: gen.llvm_ir, asm: gen.asm, located: gen.located })
    })();
    Build { sources, diagnostics, output }
}
