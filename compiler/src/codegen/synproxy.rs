//! Lowering of `synproxy(...)`: SYN cookies in XDP (docs/language.md,
//! "SYN proxy"; the kernel's `xdp_synproxy` selftest has the same shape).
//!
//! - A SYN (no ACK, RST or FIN) is answered in place: the frame becomes
//!   the SYN-ACK (addresses and ports swapped, sequence number the cookie
//!   `bpf_tcp_raw_gen_syncookie_ipv4/6` gives, acknowledging the SYN's
//!   sequence number + 1, options MSS, and when the client sent a
//!   timestamp: SACK-permitted, the timestamp, the window scale), its
//!   length set with `bpf_xdp_adjust_tail`, and sent back out with
//!   `XDP_TX`. Nothing is kept: the connection's state is in the cookie
//!   and, as nftables' synproxy encodes them, the client's window scale
//!   and SACK in the low 6 bits of our timestamp, which the client echoes.
//! - An ACK (no SYN or RST) whose acknowledgement number is a valid cookie
//!   (`bpf_tcp_raw_check_syncookie_ipv4/6`) passes to the stack, where
//!   netfilter's synproxy (installed by the runtime, `runtime/src/
//!   synproxy.rs`) checks it with the same kernel secret and opens the
//!   connection to the server. Anything else is dropped: the rules before
//!   let a connection's later packets through (`ct.state == established`).
//!
//! The helpers (Linux 6.0) read the TCP header through a pointer and a
//! length the verifier must bound: the frame is first grown by 40 bytes
//! (so that 60 bytes of TCP header are always there to check), and the
//! options are read one by one with `bpf_xdp_load_bytes` (Linux 5.18).
//!
//! The SYN's checksums are not verified: a damaged SYN gets a SYN-ACK the
//! client discards, as any reply to a SYN it did not send.

use super::builder::{helper, Bpf};
use super::lower::Lower;
use crate::ir;
use inkwell::basic_block::BasicBlock;
use inkwell::values::{IntValue, PointerValue};
use inkwell::IntPredicate;

const XDP_DROP: u64 = 1;
const XDP_TX: u64 = 3;
const XDP_PASS: u64 = 2;

const FIN: u64 = 0x01;
const SYN: u64 = 0x02;
const RST: u64 = 0x04;
const ACK: u64 = 0x10;

/// The SYN-ACK's TTL or hop limit (nftables' synproxy takes the route's,
/// usually 64).
const TTL: u64 = 64;
/// Options looked at in a SYN, at most: a SYN carries five or six (MSS,
/// SACK-permitted, timestamp, window scale, padding); after this many the
/// rest is not looked at, and the SYN-ACK offers less.
const MAX_OPTIONS: u64 = 10;
/// The low bits of our timestamp that carry the client's options
/// (nftables' `TSMASK`): the window scale (0xf: none) and SACK (bit 4).
const TS_OPT_BITS: u64 = 0x3f;
const TS_NO_WSCALE: u64 = 0xf;
const TS_SACK: u64 = 0x10;

/// One's complement sum of 32-bit words folded to 16 bits, complemented:
/// a header checksum (in host order).
fn checksum<'ctx>(b: &Bpf<'_, 'ctx>, words: &[IntValue<'ctx>]) -> IntValue<'ctx> {
    let mut sum = b.c64(0);
    for w in words {
        sum = b.add(sum, b.zext64(*w));
    }
    // 2^16 = 1 in one's complement arithmetic mod 0xffff: fold 64 -> 16.
    let fold32 = |s: IntValue<'ctx>| b.add(b.and(s, b.c64(0xffff_ffff)), b.lshr(s, b.c64(32)));
    let fold16 = |s: IntValue<'ctx>| b.add(b.and(s, b.c64(0xffff)), b.lshr(s, b.c64(16)));
    let s = fold16(fold16(fold16(fold32(fold32(sum)))));
    b.and(b.xor(s, b.c64(0xffff)), b.c64(0xffff))
}

impl<'ctx> Lower<'_, '_, 'ctx> {
    pub(super) fn synproxy(&mut self, id: ir::SynproxyId) {
        let s = self.policy.synproxies[id].clone();
        let h = &self.h;
        let (ip4_ok, ip6_ok, tcp_ok, frag, vlan_depth, l4_off, tcp_flags) = (h.ip4_ok, h.ip6_ok, h.tcp_ok, h.frag, h.vlan_depth, h.l4_off, h.tcp_flags);
        let (data, end) = (h.data, h.data_end);
        let b = &*self.b;
        let get = |p| b.zext64(b.get_fact(p));
        let set = |p: PointerValue<'ctx>| b.cmp(IntPredicate::NE, get(p), b.c64(0));
        let drop = b.block("syn_drop");
        let tcp = b.block("syn_tcp");
        let is4 = set(ip4_ok);
        let is6 = set(ip6_ok);
        // TCP over IP, not a fragment: the rest is nothing a synproxy lets
        // through.
        let usable = b.and(b.and(b.or(is4, is6), set(tcp_ok)), b.not(set(frag)));
        b.cond_br_likely(usable, tcp, drop);
        b.at(drop);
        b.ret_apart(XDP_DROP);
        b.at(tcp);
        // Where the IP and TCP headers are, masked so that the verifier
        // knows their bounds (VLAN tags: at most 2; the L4 offset: at most
        // 14 + 8 + 40 + the extension headers the parser walks).
        let l3 = b.add(b.c64(14), b.mul(b.and(get(vlan_depth), b.c64(3)), b.c64(4)));
        let l4 = b.and(get(l4_off), b.c64(0x3ff));
        let flags = b.and(get(tcp_flags), b.c64(0xff));
        let ip = b.pkt_ptr(data, l3);
        let th = b.pkt_ptr(data, l4);
        let headers = b.block("syn_headers");
        // IPv6's 40 bytes are checked where it is known to be IPv6.
        b.cond_br_likely(b.and(b.fits(ip, 20, end), b.fits(th, 20, end)), headers, drop);
        b.at(headers);
        let syn_bb = b.block("syn_syn");
        let not_syn = b.block("syn_not_syn");
        let ack_bb = b.block("syn_ack");
        b.cond_br(b.eq(b.and(flags, b.c64(SYN | ACK | RST | FIN)), b.c64(SYN)), syn_bb, not_syn);
        b.at(not_syn);
        b.cond_br_likely(b.eq(b.and(flags, b.c64(SYN | ACK | RST)), b.c64(ACK)), ack_bb, drop);

        // An ACK: its acknowledgement number must be a cookie of ours.
        b.at(ack_bb);
        let (v4, v6, checked) = (b.block("syn_ack4"), b.block("syn_ack6"), b.block("syn_ack_checked"));
        b.cond_br(is4, v4, v6);
        b.at(v4);
        let r4 = b.helper_call(helper::TCP_RAW_CHECK_SYNCOOKIE_IPV4, b.i64(), &[ip.into(), th.into()]);
        b.br(checked);
        b.at(v6);
        let v6_whole = b.block("syn_ack6_whole");
        b.cond_br_likely(b.fits(ip, 40, end), v6_whole, drop);
        b.at(v6_whole);
        let r6 = b.helper_call(helper::TCP_RAW_CHECK_SYNCOOKIE_IPV6, b.i64(), &[ip.into(), th.into()]);
        b.br(checked);
        b.at(checked);
        let r = b.phi(&[(r4, v4), (r6, v6_whole)]);
        let valid = b.block("syn_cookie_valid");
        b.cond_br_likely(b.eq(r, b.c64(0)), valid, drop);
        b.at(valid);
        self.ret_pass(XDP_PASS, true);

        let b = &*self.b;
        b.at(syn_bb);
        self.syn_ack(&s, is4, l3, l4, th, drop);
    }

    /// Turns the SYN into its SYN-ACK and sends it back (`XDP_TX`); to
    /// `drop` when it cannot.
    #[allow(clippy::too_many_arguments)]
    fn syn_ack(&self, s: &ir::Synproxy, is4: IntValue<'ctx>, l3: IntValue<'ctx>, l4: IntValue<'ctx>, th: PointerValue<'ctx>, drop: BasicBlock<'ctx>) {
        let b = &*self.b;
        // The TCP header's length, 20 to 60 bytes.
        let th_len = b.mul(b.lshr(b.zext64(b.load_raw(th, 12, 1)), b.c64(4)), b.c64(4));
        let long_enough = b.block("syn_len_ok");
        // At least the fixed header, and no longer than the frame (which
        // the kernel's stack would drop too).
        let frame_len = b.opaque(b.sub(b.ptr_to_int(self.h.data_end), b.ptr_to_int(self.h.data)));
        let in_frame = b.cmp(IntPredicate::ULE, b.add(l4, th_len), frame_len);
        b.cond_br_likely(b.and(b.cmp(IntPredicate::UGE, th_len, b.c64(20)), in_frame), long_enough, drop);
        b.at(long_enough);
        // Room for the longest SYN-ACK, and for reading 12 bytes at any
        // option's start (the new bytes are zeros: the end of the
        // options): the frame is cut to the SYN-ACK's length at the end.
        let grown = b.helper_call(helper::XDP_ADJUST_TAIL, b.i64(), &[b.ctx().into(), b.trunc(b.c64(40), b.m.cx.i32_type()).into()]);
        let roomy = b.block("syn_grown");
        b.cond_br_likely(b.eq(grown, b.c64(0)), roomy, drop);
        b.at(roomy);
        let (data, end) = b.xdp_bounds();
        let ip = b.pkt_ptr(data, l3);
        let th = b.pkt_ptr(data, l4);
        let whole = b.block("syn_whole");
        b.cond_br_likely(b.and(b.fits(ip, 20, end), b.fits(th, 60, end)), whole, drop);
        b.at(whole);
        // The length again, bounded for the verifier on both sides (a
        // helper's size must not be 0): 20 to 60.
        let extra = b.and(b.opaque(b.sub(th_len, b.c64(20))), b.c64(63));
        let th_len_arg = b.add(b.select(b.cmp(IntPredicate::UGT, extra, b.c64(40)), b.c64(40), extra), b.c64(20));
        let (g4, g6, gen) = (b.block("syn_gen4"), b.block("syn_gen6"), b.block("syn_gen"));
        b.cond_br(is4, g4, g6);
        b.at(g4);
        let c4 = b.helper_call(helper::TCP_RAW_GEN_SYNCOOKIE_IPV4, b.i64(), &[ip.into(), th.into(), th_len_arg.into()]);
        b.br(gen);
        b.at(g6);
        let g6_whole = b.block("syn_gen6_whole");
        b.cond_br_likely(b.fits(ip, 40, end), g6_whole, drop);
        b.at(g6_whole);
        let c6 = b.helper_call(helper::TCP_RAW_GEN_SYNCOOKIE_IPV6, b.i64(), &[ip.into(), th.into(), th_len_arg.into()]);
        b.br(gen);
        b.at(gen);
        let value = b.phi(&[(c4, g4), (c6, g6_whole)]);
        let made = b.block("syn_cookie");
        b.cond_br_likely(b.cmp(IntPredicate::SGE, value, b.c64(0)), made, drop);
        b.at(made);
        let cookie = b.and(value, b.c64(0xffff_ffff));

        // The client's options: window scale, SACK-permitted, timestamp.
        // A loop over them, each read with `bpf_xdp_load_bytes` into a
        // buffer at constant offsets: an option's offset then bounds no
        // memory access, so the verifier need not tell the ways the
        // options' lengths add up apart (as a stack or packet read at that
        // offset made it: it gave up at 1M instructions).
        let obuf = b.stack_buf(16, "synproxy_option");
        let byte_at = |off: u64| b.zext64(b.load_raw(obuf, off, 1));
        // What was found is kept in bytes of a stack buffer, read back
        // after the loop as one word the verifier knows nothing of: as
        // values, each way through the options (a window scale or not,
        // SACK or not, ...) was a state of its own, through all that
        // follows. Bytes: 0 the window scale (0xf: none), 1 SACK, 2 a
        // timestamp, 4..8 its value as sent.
        let found = b.stack_buf(8, "synproxy_found");
        let i8t = b.m.cx.i8_type();
        b.store_at(found, 0, b.c8(TS_NO_WSCALE as u8));
        let pos = b.var(b.c64(20), "syn_opt_pos");
        let n = b.var(b.c64(0), "syn_opt_n");
        b.set(pos, b.c64(20));
        b.set(n, b.c64(0));
        let (head, body, read, other, sized, next, done) = (b.block("syn_opt"), b.block("syn_opt_body"), b.block("syn_opt_read"), b.block("syn_opt_kind"), b.block("syn_opt_sized"), b.block("syn_opt_next"), b.block("syn_opt_done"));
        b.br(head);
        b.at(head);
        let p = b.get(pos);
        b.cond_br_likely(b.and(b.cmp(IntPredicate::ULT, p, th_len), b.cmp(IntPredicate::ULT, b.get(n), b.c64(MAX_OPTIONS))), body, done);
        b.at(body);
        let r = b.helper_call(helper::XDP_LOAD_BYTES, b.i64(), &[b.ctx().into(), b.add(l4, p).into(), obuf.into(), b.c64(12).into()]);
        b.cond_br_likely(b.eq(r, b.c64(0)), read, done);
        b.at(read);
        let kind = byte_at(0);
        let len = byte_at(1);
        let (nop, not_nop) = (b.block("syn_opt_nop"), b.block("syn_opt_not_nop"));
        b.cond_br(b.eq(kind, b.c64(1)), nop, not_nop);
        b.at(nop);
        b.set(pos, b.add(p, b.c64(1)));
        b.br(next);
        b.at(not_nop);
        b.cond_br(b.eq(kind, b.c64(0)), done, other);
        b.at(other);
        b.cond_br_likely(b.cmp(IntPredicate::UGE, len, b.c64(2)), sized, done);
        b.at(sized);
        b.set(pos, b.add(p, len));
        let is = |k: u64, l: u64| b.and(b.eq(kind, b.c64(k)), b.eq(len, b.c64(l)));
        let (ws_bb, sack_test, sack_bb, ts_test, ts_bb) = (b.block("syn_opt_ws"), b.block("syn_opt_sack_test"), b.block("syn_opt_sack"), b.block("syn_opt_ts_test"), b.block("syn_opt_ts"));
        b.cond_br(is(3, 3), ws_bb, sack_test);
        b.at(ws_bb);
        // A window scale over 14 counts as 14 (RFC 7323).
        let ws = byte_at(2);
        let ws = b.select(b.cmp(IntPredicate::UGT, ws, b.c64(14)), b.c64(14), ws);
        b.store_at(found, 0, b.trunc(ws, i8t));
        b.br(next);
        b.at(sack_test);
        b.cond_br(is(4, 2), sack_bb, ts_test);
        b.at(sack_bb);
        b.store_at(found, 1, b.c8(1));
        b.br(next);
        b.at(ts_test);
        b.cond_br(is(8, 10), ts_bb, next);
        b.at(ts_bb);
        b.store_at(found, 2, b.c8(1));
        for k in 0..4 {
            b.store_at(found, 4 + k, b.trunc(byte_at(2 + k), i8t));
        }
        b.br(next);
        b.at(next);
        // Hidden from LLVM, which would otherwise unroll the loop.
        b.set(n, b.opaque(b.add(b.get(n), b.c64(1))));
        b.br(head);
        b.at(done);
        // Volatile: LLVM would otherwise forward the stores.
        let word = b.load_raw(found, 0, 8);
        if let Some(i) = word.as_instruction() {
            let _ = i.set_volatile(true);
        }
        let field = |shift: u64, mask: u64| b.and(b.lshr(word, b.c64(shift)), b.c64(mask));
        let (client_ws, client_sack, client_ts) = (field(0, 0xf), field(8, 1), field(16, 1));
        // As stored: the value's bytes in network order.
        let their_ts = b.zext64(b.bswap(b.trunc(b.lshr(word, b.c64(32)), b.m.cx.i32_type())));

        // What the SYN-ACK offers: without the client's timestamp there is
        // nowhere to keep its window scale and SACK, so only the MSS.
        let ts_on = b.and(b.bool(s.timestamps), b.cmp(IntPredicate::NE, client_ts, b.c64(0)));
        let ws_on = b.and(ts_on, b.cmp(IntPredicate::NE, client_ws, b.c64(TS_NO_WSCALE)));
        let sack_on = b.and(b.and(ts_on, b.bool(s.sack)), b.cmp(IntPredicate::NE, client_sack, b.c64(0)));
        let opt_len = b.add(b.c64(4), b.add(b.select(ts_on, b.c64(12), b.c64(0)), b.select(ws_on, b.c64(4), b.c64(0))));
        let tcp_len = b.add(b.c64(20), opt_len);

        let now_ms = b.udiv(b.helper_call(helper::KTIME_GET_NS, b.i64(), &[]), b.c64(1_000_000));
        let our_ts = b.or(b.and(now_ms, b.c64(0xffff_ffff & !TS_OPT_BITS)), b.or(client_ws, b.select(sack_on, b.c64(TS_SACK), b.c64(0))));
        let answer = SynAck { data, end, cookie, seq_from: th, ts_on, ws_on, sack_on, our_ts, their_ts, tcp_len, l3, mss: s.mss, wscale: s.wscale };
        let (v4, v6) = (b.block("syn_answer4"), b.block("syn_answer6"));
        b.cond_br(is4, v4, v6);
        b.at(v4);
        self.answer(&answer, false, ip, drop);
        let b = &*self.b;
        b.at(v6);
        self.answer(&answer, true, ip, drop);
    }

    /// Writes the SYN-ACK over the SYN of family `v6` and sends it.
    fn answer(&self, a: &SynAck<'ctx>, v6: bool, ip: PointerValue<'ctx>, drop: BasicBlock<'ctx>) {
        let b = &*self.b;
        let i32t = b.m.cx.i32_type();
        let (data, end) = (a.data, a.end);
        let ip_len: u64 = if v6 { 40 } else { 20 };
        let whole = b.block("syn_ip_whole");
        b.cond_br_likely(b.and(b.fits(data, 14, end), b.fits(ip, ip_len, end)), whole, drop);
        b.at(whole);
        // Everything the SYN-ACK takes from the SYN, read before the frame
        // changes length. Addresses as loaded (network order in memory).
        let mac: Vec<IntValue<'ctx>> = (0..3).map(|i| b.load_raw(data, 4 * i, 4)).collect();
        let words = |base: u64, n: u64| -> Vec<IntValue<'ctx>> { (0..n).map(|i| b.load_raw(ip, base + 4 * i, 4)).collect() };
        let (src, dst) = if v6 { (words(8, 4), words(24, 4)) } else { (words(12, 1), words(16, 1)) };
        let th = a.seq_from;
        let ports = b.load_raw(th, 0, 4);
        let seq = b.zext64(b.bswap(b.load_raw(th, 4, 4)));

        // The frame's new length: Ethernet (and VLAN tags), a plain IP
        // header, the TCP header with its options.
        // Hidden from LLVM, which would otherwise fold the pointers into
        // the 32-bit difference below (pointer arithmetic the verifier
        // refuses).
        let old_len = b.opaque(b.sub(b.ptr_to_int(end), b.ptr_to_int(data)));
        let new_len = b.add(b.add(a.l3, b.c64(ip_len)), a.tcp_len);
        let delta = b.trunc(b.sub(new_len, old_len), i32t);
        let adjusted = b.helper_call(helper::XDP_ADJUST_TAIL, b.i64(), &[b.ctx().into(), delta.into()]);
        let sized = b.block("syn_sized");
        b.cond_br_likely(b.eq(adjusted, b.c64(0)), sized, drop);
        b.at(sized);
        let (data, end) = b.xdp_bounds();
        let ip = b.pkt_ptr(data, a.l3);
        let room = b.block("syn_room");
        b.cond_br_likely(b.and(b.fits(data, 14, end), b.fits(ip, ip_len + 24, end)), room, drop);
        b.at(room);
        // Ethernet: the addresses swapped, the type (and tags) kept. As
        // little-endian words, old dst d0..d5 and src s0..s5 are
        // m0 = d3d2d1d0, m1 = s1s0d5d4, m2 = s5s4s3s2.
        let c16 = b.c32(16);
        b.store_at(data, 0, b.or(b.lshr(mac[1], c16), b.shl(mac[2], c16)));
        b.store_at(data, 4, b.or(b.lshr(mac[2], c16), b.shl(mac[0], c16)));
        b.store_at(data, 8, b.or(b.lshr(mac[0], c16), b.shl(mac[1], c16)));
        let be32 = |v: IntValue<'ctx>| b.bswap(b.trunc(v, i32t));
        // The new source is the old destination.
        let (nsrc, ndst) = (dst, src);
        if v6 {
            b.store_at(ip, 0, be32(b.c64(0x6000_0000)));
            b.store_at(ip, 4, be32(b.or(b.shl(a.tcp_len, b.c64(16)), b.c64((6 << 8) | TTL))));
            for i in 0..4 {
                b.store_at(ip, 8 + 4 * i as u64, nsrc[i]);
                b.store_at(ip, 24 + 4 * i as u64, ndst[i]);
            }
        } else {
            let w0 = b.or(b.c64(0x4500_0000), b.add(b.c64(20), a.tcp_len));
            let w1 = b.c64(0x0000_4000);
            let w2 = b.c64((TTL << 24) | (6 << 16));
            let csum = checksum(b, &[w0, w1, w2, b.bswap(nsrc[0]), b.bswap(ndst[0])]);
            b.store_at(ip, 0, be32(w0));
            b.store_at(ip, 4, be32(w1));
            b.store_at(ip, 8, be32(b.or(w2, csum)));
            b.store_at(ip, 12, nsrc[0]);
            b.store_at(ip, 16, ndst[0]);
        }
        let th = b.pkt_ptr(data, b.add(a.l3, b.c64(ip_len)));
        let tcp_room = b.block("syn_tcp_room");
        b.cond_br_likely(b.fits(th, 24, end), tcp_room, drop);
        b.at(tcp_room);
        // The ports swapped: the word as loaded holds the source port in
        // its low half.
        let ports = b.or(b.lshr(ports, c16), b.shl(ports, c16));
        let ack = b.and(b.add(seq, b.c64(1)), b.c64(0xffff_ffff));
        // Data offset, flags, window 0 (as nftables' synproxy: the client
        // waits for the server's window).
        let doff_flags = b.or(b.shl(b.lshr(a.tcp_len, b.c64(2)), b.c64(28)), b.c64((SYN | ACK) << 16));
        let mss_opt = b.c64(0x0204_0000 | u64::from(a.mss));
        let ts_kind = b.select(a.sack_on, b.c64(0x0402_080a), b.c64(0x0101_080a));
        let ws_opt = b.c64(0x0103_0300 | u64::from(a.wscale));
        let zero = b.c64(0);
        // The pseudo-header (addresses, protocol, TCP length), then the
        // header and options.
        let mut sum: Vec<IntValue<'ctx>> = nsrc.iter().chain(ndst.iter()).map(|w| b.zext64(b.bswap(*w))).collect();
        sum.extend([b.add(a.tcp_len, b.c64(6)), b.zext64(b.bswap(ports)), a.cookie, ack, doff_flags, mss_opt]);
        sum.extend([b.select(a.ts_on, ts_kind, zero), b.select(a.ts_on, a.our_ts, zero), b.select(a.ts_on, a.their_ts, zero), b.select(a.ws_on, ws_opt, zero)]);
        let csum = checksum(b, &sum);
        b.store_at(th, 0, ports);
        b.store_at(th, 4, be32(a.cookie));
        b.store_at(th, 8, be32(ack));
        b.store_at(th, 12, be32(doff_flags));
        // The checksum, and the urgent pointer (0).
        b.store_at(th, 16, be32(b.shl(csum, b.c64(16))));
        b.store_at(th, 20, be32(mss_opt));
        let (ts_bb, ts_room, done) = (b.block("syn_ts"), b.block("syn_ts_room"), b.block("syn_sent"));
        b.cond_br(a.ts_on, ts_bb, done);
        b.at(ts_bb);
        b.cond_br_likely(b.fits(th, 36, end), ts_room, drop);
        b.at(ts_room);
        b.store_at(th, 24, be32(ts_kind));
        b.store_at(th, 28, be32(a.our_ts));
        b.store_at(th, 32, be32(a.their_ts));
        let (ws_bb, ws_room) = (b.block("syn_ws"), b.block("syn_ws_room"));
        b.cond_br(a.ws_on, ws_bb, done);
        b.at(ws_bb);
        b.cond_br_likely(b.fits(th, 40, end), ws_room, drop);
        b.at(ws_room);
        b.store_at(th, 36, be32(ws_opt));
        b.br(done);
        b.at(done);
        b.ret_apart(XDP_TX);
    }
}

/// What the SYN-ACK holds, decided before the frame is rewritten.
struct SynAck<'ctx> {
    /// The frame, grown.
    data: PointerValue<'ctx>,
    end: PointerValue<'ctx>,
    cookie: IntValue<'ctx>,
    /// The SYN's TCP header (its ports and sequence number).
    seq_from: PointerValue<'ctx>,
    ts_on: IntValue<'ctx>,
    ws_on: IntValue<'ctx>,
    sack_on: IntValue<'ctx>,
    our_ts: IntValue<'ctx>,
    their_ts: IntValue<'ctx>,
    tcp_len: IntValue<'ctx>,
    l3: IntValue<'ctx>,
    mss: u16,
    wscale: u8,
}
