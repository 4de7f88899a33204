//! The xpol policy language: source files and spans, the pest grammar, the
//! syntax tree, and diagnostics as data.
//!
//! Architecture invariant: this crate never depends on inkwell or aya.

pub mod ast;
pub mod diagnostic;
pub mod input;
pub mod ipv4_table;
pub mod ipv6_table;
pub mod maglev;
pub mod meta;
pub mod parser;
mod recovery;
pub mod render;
pub mod span;
pub mod suggest;
pub mod testspec;

pub use diagnostic::{Diagnostic, Diagnostics, Fix, Label, Severity};
pub use span::{FileId, SourceFile, SourceMap, Span};
