//! Connection state as docs/conntrack.md states it: which connection a
//! packet belongs to, the state `ct.state` reads, and what passing the
//! packet changes in the table, on the virtual clock
//! ([`super::State::clock_ns`]). Written from the document, with its own
//! types: the table's layout in the kernel (`xpol_lang::meta::CtKey`) is
//! codegen's and the runtime's business.

use super::{be, Facts, L4Facts, State};
use crate::ir::{self, CtState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A connection: for TCP and UDP its endpoints in order (`lo` the lesser
/// by address, then port); for an echo the requester (`lo`) and the
/// responder, with the identifier as both ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub lo: IpAddr,
    pub hi: IpAddr,
    pub lo_port: u16,
    pub hi_port: u16,
    pub proto: u8,
}

/// A TCP connection's state (docs/conntrack.md, "TCP").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    SynSent,
    SynRecv,
    Established,
    FinWait,
    TimeWait,
    Close,
}

/// An entry of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The clock's time at which it is gone.
    pub expires_ns: u64,
    /// TCP's state; `None` for UDP and echoes.
    pub tcp: Option<TcpState>,
    /// The first packet came from `lo`.
    pub orig_lo: bool,
    /// A packet the other way has passed.
    pub seen_reply: bool,
    pub fin_orig: bool,
    pub fin_reply: bool,
}

/// What the table says of a packet: `ct.state` (`None`: absent), and the
/// entry to write if the packet passes a program that records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    pub state: Option<CtState>,
    pub write: Option<(Key, Entry)>,
}

/// An address as a number, for the order of endpoints.
fn number(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The connection of a TCP or UDP packet from `src:sport` to `dst:dport`,
/// and whether the packet comes from its `lo` side.
fn ordered(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> (Key, bool) {
    let from_lo = (number(src), sport) <= (number(dst), dport);
    let key = if from_lo { Key { lo: src, hi: dst, lo_port: sport, hi_port: dport, proto } } else { Key { lo: dst, hi: src, lo_port: dport, hi_port: sport, proto } };
    (key, from_lo)
}

fn is_echo_request(v6: bool, ty: u64) -> bool {
    ty == if v6 { 128 } else { 8 }
}

fn is_echo_reply(v6: bool, ty: u64) -> bool {
    ty == if v6 { 129 } else { 0 }
}

fn is_error(v6: bool, ty: u64) -> bool {
    if v6 {
        (1..=4).contains(&ty)
    } else {
        matches!(ty, 3 | 4 | 5 | 11 | 12)
    }
}

/// The entry of `key` that is still there at the state's clock.
fn live(state: &State, key: &Key) -> Option<Entry> {
    state.conntrack.get(key).copied().filter(|e| state.clock_ns < e.expires_ns)
}

/// A packet's connection state, and the entry passing it writes.
pub(super) fn classify(policy: &ir::Policy, facts: &Facts, packet: &[u8], state: &State) -> Classified {
    let absent = Classified { state: None, write: None };
    let (Some(ct), Some(ip), Some(l4)) = (&policy.conntrack, &facts.ip, &facts.l4) else { return absent };
    let t = &ct.timeouts;
    let now = state.clock_ns;
    match *l4 {
        L4Facts::Tcp { sport, dport, flags, .. } => {
            let (key, from_lo) = ordered(ip.src, sport as u16, ip.dst, dport as u16, 6);
            tcp(t, key, from_lo, flags, live(state, &key), now)
        }
        L4Facts::Udp { sport, dport, .. } => {
            let (key, from_lo) = ordered(ip.src, sport as u16, ip.dst, dport as u16, 17);
            let (ct_state, write) = match live(state, &key) {
                None => (CtState::New, Entry { expires_ns: now.saturating_add(t.udp_unreplied), tcp: None, orig_lo: from_lo, seen_reply: false, fin_orig: false, fin_reply: false }),
                Some(e) if from_lo == e.orig_lo => {
                    let timeout = if e.seen_reply { t.udp_replied } else { t.udp_unreplied };
                    (if e.seen_reply { CtState::Established } else { CtState::New }, Entry { expires_ns: now.saturating_add(timeout), ..e })
                }
                Some(e) => (CtState::Established, Entry { expires_ns: now.saturating_add(t.udp_replied), seen_reply: true, ..e }),
            };
            Classified { state: Some(ct_state), write: Some((key, write)) }
        }
        L4Facts::Icmp { v6, ty, .. } => {
            let Some(at) = facts.l4_off else { return absent };
            let proto = if v6 { 58 } else { 1 };
            if is_echo_request(v6, ty) || is_echo_reply(v6, ty) {
                let id = be(packet, at + 4, 2).unwrap_or(0) as u16;
                let request = is_echo_request(v6, ty);
                let (lo, hi) = if request { (ip.src, ip.dst) } else { (ip.dst, ip.src) };
                let key = Key { lo, hi, lo_port: id, hi_port: id, proto };
                let (ct_state, write) = match (live(state, &key), request) {
                    (None, true) => (CtState::New, Some(Entry { expires_ns: now.saturating_add(t.icmp), tcp: None, orig_lo: true, seen_reply: false, fin_orig: false, fin_reply: false })),
                    (None, false) => (CtState::Invalid, None),
                    (Some(e), true) => (if e.seen_reply { CtState::Established } else { CtState::New }, Some(Entry { expires_ns: now.saturating_add(t.icmp), ..e })),
                    (Some(e), false) => (CtState::Established, Some(Entry { expires_ns: now.saturating_add(t.icmp), seen_reply: true, ..e })),
                };
                Classified { state: Some(ct_state), write: write.map(|e| (key, e)) }
            } else if is_error(v6, ty) {
                let related = quoted(packet, at + 8, v6).and_then(|key| live(state, &key)).is_some();
                Classified { state: Some(if related { CtState::Related } else { CtState::Invalid }), write: None }
            } else {
                // Neither a connection's packet nor about one (neighbour
                // discovery, router advertisements): no state.
                absent
            }
        }
    }
}

/// TCP's packet classes, by its flags in this order of precedence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Rst,
    SynAck,
    Syn,
    Fin,
    Ack,
    Nothing,
}

fn class(flags: u64) -> Class {
    let has = |bit: u64| flags & bit != 0;
    if has(0x04) {
        Class::Rst
    } else if has(0x02) {
        if has(0x10) { Class::SynAck } else { Class::Syn }
    } else if has(0x01) {
        Class::Fin
    } else if has(0x10) {
        Class::Ack
    } else {
        Class::Nothing
    }
}

fn timeout(t: &ir::CtTimeouts, s: TcpState) -> u64 {
    match s {
        TcpState::SynSent => t.tcp_syn_sent,
        TcpState::SynRecv => t.tcp_syn_recv,
        TcpState::Established => t.tcp_established,
        TcpState::FinWait => t.tcp_fin_wait,
        TcpState::TimeWait => t.tcp_time_wait,
        TcpState::Close => t.tcp_close,
    }
}

/// docs/conntrack.md, "TCP".
fn tcp(t: &ir::CtTimeouts, key: Key, from_lo: bool, flags: u64, entry: Option<Entry>, now: u64) -> Classified {
    let invalid = Classified { state: Some(CtState::Invalid), write: None };
    let fresh = |s: TcpState| Entry { expires_ns: now.saturating_add(timeout(t, s)), tcp: Some(s), orig_lo: from_lo, seen_reply: false, fin_orig: false, fin_reply: false };
    let class = class(flags);
    let Some(e) = entry else {
        return match class {
            Class::Syn => Classified { state: Some(CtState::New), write: Some((key, fresh(TcpState::SynSent))) },
            // Picked up in the middle (a table that lost it, a policy
            // applied under way): the side that sends first is the
            // originator.
            Class::Ack => Classified { state: Some(CtState::New), write: Some((key, fresh(TcpState::Established))) },
            _ => invalid,
        };
    };
    let orig = from_lo == e.orig_lo;
    let now_state = e.tcp.unwrap_or(TcpState::Established);
    // A SYN on a closed or closing connection starts a new one.
    if class == Class::Syn && matches!(now_state, TcpState::TimeWait | TcpState::Close) {
        return Classified { state: Some(CtState::New), write: Some((key, fresh(TcpState::SynSent))) };
    }
    let mut next = e;
    if !orig {
        next.seen_reply = true;
    }
    let moved = match class {
        Class::Rst => Some(TcpState::Close),
        Class::Syn => (orig && now_state == TcpState::SynSent).then_some(TcpState::SynSent),
        Class::SynAck if !orig && matches!(now_state, TcpState::SynSent | TcpState::SynRecv) => Some(TcpState::SynRecv),
        Class::SynAck if !orig && now_state == TcpState::Established => Some(TcpState::Established),
        Class::SynAck => None,
        Class::Fin => match now_state {
            TcpState::SynSent => None,
            TcpState::Close => Some(TcpState::Close),
            _ => {
                if orig {
                    next.fin_orig = true;
                } else {
                    next.fin_reply = true;
                }
                Some(if next.fin_orig && next.fin_reply { TcpState::TimeWait } else { TcpState::FinWait })
            }
        },
        Class::Ack => match now_state {
            TcpState::SynSent => None,
            TcpState::SynRecv if orig => Some(TcpState::Established),
            s => Some(s),
        },
        Class::Nothing => None,
    };
    let Some(s) = moved else { return invalid };
    next.tcp = Some(s);
    next.expires_ns = now.saturating_add(timeout(t, s));
    let ct_state = if !orig || e.seen_reply { CtState::Established } else { CtState::New };
    Classified { state: Some(ct_state), write: Some((key, next)) }
}

/// The connection of the packet an ICMP error quotes at `at`: an IP header
/// of the error's family, whole, followed directly by 8 bytes of TCP, UDP
/// or an echo (IPv4: not a later fragment). The quoted packet went the
/// other way, but a connection's key is the same from both sides.
fn quoted(p: &[u8], at: usize, v6: bool) -> Option<Key> {
    let (src, dst, proto, l4) = if v6 {
        if p.len() < at + 40 || p[at] >> 4 != 6 {
            return None;
        }
        let a = |o: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[o..o + 16]).expect("16 bytes")));
        (a(at + 8), a(at + 24), p[at + 6], at + 40)
    } else {
        if p.len() < at + 20 || p[at] >> 4 != 4 {
            return None;
        }
        let ihl = (p[at] & 15) as usize;
        if ihl < 5 || be(p, at + 6, 2)? & 0x1fff != 0 {
            return None;
        }
        let a = |o: usize| IpAddr::V4(Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]));
        (a(at + 12), a(at + 16), p[at + 9], at + ihl * 4)
    };
    if p.len() < l4 + 8 {
        return None;
    }
    let port = |o: usize| be(p, l4 + o, 2).map(|v| v as u16);
    match proto {
        6 | 17 => Some(ordered(src, port(0)?, dst, port(2)?, proto).0),
        1 | 58 if proto == if v6 { 58 } else { 1 } => {
            let ty = u64::from(p[l4]);
            let id = port(4)?;
            if is_echo_request(v6, ty) {
                Some(Key { lo: src, hi: dst, lo_port: id, hi_port: id, proto })
            } else if is_echo_reply(v6, ty) {
                Some(Key { lo: dst, hi: src, lo_port: id, hi_port: id, proto })
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Writes what passing the packet changes (a program that records
/// connections passed it). The table keeps every entry: the kernel's LRU
/// table forgets the least recently used past its size, which tests stay
/// under.
pub(super) fn commit(c: &Classified, state: &mut State) {
    if let Some((key, entry)) = c.write {
        state.conntrack.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_ordered_by_address_then_port() {
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let (k1, lo1) = ordered(a, 9, b, 1, 6);
        let (k2, lo2) = ordered(b, 1, a, 9, 6);
        assert_eq!(k1, k2);
        assert!(lo1 && !lo2);
        assert_eq!((k1.lo, k1.lo_port), (a, 9));
        // Same address: the port decides.
        let (k3, lo3) = ordered(a, 80, a, 40000, 17);
        assert!(lo3 && k3.lo_port == 80);
    }

    #[test]
    fn tcp_handshake_and_close() {
        let t = ir::CtTimeouts::default();
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let (key, a_lo) = ordered(a, 40000, b, 80, 6);
        let step = |entry: Option<Entry>, from_a: bool, flags: u64| tcp(&t, key, from_a == a_lo, flags, entry, 0);
        let syn = step(None, true, 0x02);
        assert_eq!(syn.state, Some(CtState::New));
        let e = syn.write.unwrap().1;
        assert_eq!(e.tcp, Some(TcpState::SynSent));
        // Unsolicited: SYN-ACK, FIN, RST without an entry.
        for flags in [0x12, 0x01, 0x04, 0x00] {
            assert_eq!(step(None, false, flags).state, Some(CtState::Invalid), "{flags:#x}");
        }
        let synack = step(Some(e), false, 0x12);
        assert_eq!(synack.state, Some(CtState::Established));
        let e = synack.write.unwrap().1;
        assert_eq!((e.tcp, e.seen_reply), (Some(TcpState::SynRecv), true));
        let ack = step(Some(e), true, 0x10);
        assert_eq!(ack.state, Some(CtState::Established));
        let e = ack.write.unwrap().1;
        assert_eq!(e.tcp, Some(TcpState::Established));
        let fin = step(Some(e), true, 0x11).write.unwrap().1;
        assert_eq!((fin.tcp, fin.fin_orig), (Some(TcpState::FinWait), true));
        let fin2 = step(Some(fin), false, 0x11).write.unwrap().1;
        assert_eq!(fin2.tcp, Some(TcpState::TimeWait));
        assert_eq!(fin2.expires_ns, t.tcp_time_wait);
        // A new SYN on the closed connection starts over.
        let again = step(Some(fin2), false, 0x02);
        assert_eq!(again.state, Some(CtState::New));
        assert_eq!(again.write.unwrap().1.orig_lo, !a_lo);
    }
}

/// An entry as the kernel's table stores it (`xpol_lang::meta::CtKey`,
/// `CtValue`; the expiry left at 0), for tests that compare the two
/// tables: the reference's own reading of that documented layout.
pub fn as_stored(key: &Key, entry: &Entry) -> (xpol_lang::meta::CtKey, xpol_lang::meta::CtValue) {
    use xpol_lang::meta;
    let bytes = |a: IpAddr| -> [u8; 16] {
        match a {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                b
            }
            IpAddr::V6(a) => a.octets(),
        }
    };
    let k = meta::CtKey {
        lo: bytes(key.lo),
        hi: bytes(key.hi),
        lo_port: key.lo_port.to_be_bytes(),
        hi_port: key.hi_port.to_be_bytes(),
        proto: key.proto,
        family: if key.lo.is_ipv6() { 6 } else { 4 },
        pad: [0; 2],
    };
    let state = match entry.tcp {
        None => 0,
        Some(TcpState::SynSent) => meta::CT_TCP_SYN_SENT,
        Some(TcpState::SynRecv) => meta::CT_TCP_SYN_RECV,
        Some(TcpState::Established) => meta::CT_TCP_ESTABLISHED,
        Some(TcpState::FinWait) => meta::CT_TCP_FIN_WAIT,
        Some(TcpState::TimeWait) => meta::CT_TCP_TIME_WAIT,
        Some(TcpState::Close) => meta::CT_TCP_CLOSE,
    };
    let bit = |on: bool, b: u8| if on { b } else { 0 };
    let flags = bit(entry.orig_lo, meta::CT_ORIG_LO) | bit(entry.seen_reply, meta::CT_SEEN_REPLY) | bit(entry.fin_orig, meta::CT_FIN_ORIG) | bit(entry.fin_reply, meta::CT_FIN_REPLY);
    (k, meta::CtValue { expires_ns: [0; 8], state, flags, pad: [0; 6] })
}

impl super::State {
    /// The connection table's live entries at the clock, as the kernel
    /// stores them, each with the nanoseconds it has left.
    pub fn ct_stored(&self) -> Vec<(xpol_lang::meta::CtKey, xpol_lang::meta::CtValue, u64)> {
        let mut out: Vec<_> = self
            .conntrack
            .iter()
            .filter(|(_, e)| self.clock_ns < e.expires_ns)
            .map(|(k, e)| {
                let (k, v) = as_stored(k, e);
                (k, v, e.expires_ns - self.clock_ns)
            })
            .collect();
        out.sort_by_key(|(k, _, _)| k.to_bytes());
        out
    }
}
