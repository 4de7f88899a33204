//! `synproxy(...)` in the reference semantics: what happens to a packet,
//! independent of codegen (docs/language.md, "SYN proxy").
//!
//! The cookie is the kernel's secret (`bpf_tcp_raw_gen_syncookie_*`), so
//! the reference cannot compute one: a SYN is answered (`tx`, the SYN-ACK
//! itself is checked by the kernel tests), and an ACK is taken to carry no
//! valid cookie (`drop`), which holds for every packet a test writes by
//! hand: a random acknowledgement number is a valid cookie about once in
//! 2^22.

use super::{Facts, L4Facts};
use xpol_lang::ast::Verdict;

const FIN: u64 = 0x01;
const SYN: u64 = 0x02;
const RST: u64 = 0x04;
const ACK: u64 = 0x10;

/// The verdict of `synproxy` for a packet with these facts.
pub(super) fn verdict(facts: &Facts, packet: &[u8]) -> Verdict {
    let Some(ip) = &facts.ip else { return Verdict::Drop };
    let Some((6, false, _)) = ip.proto else { return Verdict::Drop };
    let (Some(L4Facts::Tcp { flags, .. }), Some(l4)) = (&facts.l4, facts.l4_off) else { return Verdict::Drop };
    // The IP header (IPv6: its fixed 40 bytes) and 20 bytes of TCP in the frame.
    let l3 = 14 + 4 * facts.vlan_depth as usize;
    if packet.len() < l3 + if ip.v6 { 40 } else { 20 } || packet.len() < l4 + 20 {
        return Verdict::Drop;
    }
    if flags & (SYN | ACK | RST | FIN) == SYN {
        // A data offset under 5, or a header longer than the frame: no
        // cookie is made for it.
        let th_len = 4 * (packet[l4 + 12] >> 4) as usize;
        return if th_len >= 20 && packet.len() >= l4 + th_len { Verdict::Tx } else { Verdict::Drop };
    }
    Verdict::Drop
}
