//! `crate::codegen` when the crate is built without its `llvm` feature (the
//! LLVM-free `xpol` runtime, `cargo build --no-default-features --bin
//! xpol`): the types the rest of the compiler shares with codegen, and a
//! [`generate`] that says why there is no object and where to get one.
//! Loading, checking, linting, the reference semantics and the verifier's
//! feedback need no LLVM and stay.

use crate::ir;
use xpol_lang::meta::ObjectMeta;
use xpol_lang::{Diagnostic, SourceMap};

#[path = "codegen/located.rs"]
mod located;
pub use located::Located;

/// Codegen's output, as in the build with LLVM; never made here.
pub struct Generated {
    pub object: Vec<u8>,
    pub located: Vec<Located>,
    pub meta: ObjectMeta,
    pub llvm_ir: String,
    pub asm: String,
}

/// Code of the error a policy that checked gets instead of an object.
pub const NO_CODEGEN: &str = "xpol::no_codegen";

/// Always an error: this build has no code generator. The policy was
/// loaded and checked (its own errors and warnings come first); the help
/// names the command that makes the object elsewhere.
pub fn generate(_policy: &ir::Policy, sources: &SourceMap, _options: &crate::BuildOptions) -> Result<Generated, Vec<Diagnostic>> {
    let root = sources.files().next().map(|(_, f)| f.name.clone()).unwrap_or_else(|| "POLICY.xpol".into());
    let object = std::path::Path::new(&root).with_extension("o").display().to_string();
    Err(vec![Diagnostic::error(
        NO_CODEGEN,
        format!("this xpol was built without the compiler (no LLVM): it checked {root} but cannot make its BPF object"),
    )
    .with_help(format!(
        "compile it with xpolc (`xpolc build {root} -o {object}`, on any machine with xpolc) and give xpol the object: `xpol apply {object} ...`, `xpol run {object} ...`, `xpol test {object}`"
    ))])
}
