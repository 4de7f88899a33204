//! What the verifier's feedback needs of codegen's debug locations, in a
//! file of its own: the build without LLVM (`crate::codegen` is then
//! `no_codegen.rs`) has the same type.

/// A source position given to LLVM and the span it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    pub file: xpol_lang::FileId,
    pub line: u32,
    pub col: u32,
    pub span: xpol_lang::Span,
}
