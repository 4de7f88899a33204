//! The xpol runtime: load a compiled policy object with aya, fill its named
//! sets from the object's metadata, run it on packets with
//! `BPF_PROG_TEST_RUN`, and read its counters.
//!
//! Architecture invariant: the runtime depends on `xpol-lang` (for the object
//! metadata schema) but never on the compiler or LLVM.
//! Architecture invariant: unsafe code and raw syscalls live only in [`sys`].

pub mod lb;
pub mod lb_edit;
pub mod loader;
pub mod log;
pub mod packet;
pub mod pcap;
pub mod store;
pub mod apply;
pub mod conntrack;
pub mod dynset;
mod ipv4_edit;
mod ipv6_edit;
pub mod synproxy;
pub mod sys;
pub mod testing;
