//! The encapsulation of `lb(POOL, encap: ...)` (IPIP or GUE, direct server
//! return), the next hop by the FIB, and the ICMP answer for a packet too
//! big for the way out.

use super::*;

/// Where the packet inside starts in a frame of GUE over IPv6: Ethernet,
/// IPv6, UDP.
const GUE6_INNER_AT: u64 = 14 + 40 + 8;
/// The longest packet whose bytes [`Lower::gue6_checksum`] sums: more
/// than a frame XDP sees whole (a page less the headroom and the
/// `skb_shared_info`) holds.
const GUE6_MAX_SUMMED: u64 = 4095;
/// The most bytes one `bpf_csum_diff` call takes.
const GUE6_CSUM_DIFF_MAX: u64 = 512;

impl<'ctx> Lower<'_, '_, 'ctx> {
    /// Puts the outer headers in front of the packet's IP header (dropping
    /// any VLAN tags) and sends it to `backend` (a pointer to its
    /// [`meta::BackendValue`]).
    pub(super) fn encapsulate(&self, encap: Encap, src: OuterSource, pool: PoolMaps<'ctx>, hash: Option<IntValue<'ctx>>, backend: PointerValue<'ctx>) {
        let b = &*self.b;
        let h = &self.h;
        let get = |p| b.get_fact(p);
        let i16t = b.m.cx.i16_type();
        let i32t = b.m.cx.i32_type();
        let ctx = b.ctx();
        // Computed before the flow table wherever the outer header needs it
        // (`balance`'s `eager`).
        let hash = || hash.expect("the flow hash of an outer header that carries it");
        let inner_v6 = get(h.ip6_ok);
        let inner_len = get(h.ip_len);
        let tos = get(h.tos);
        // IPv4 inside: the outer IPv4 header says "don't fragment" when the
        // inner one does; IPv6 is never fragmented on the way.
        let df = b.or(inner_v6, get(h.df));
        let outer = outer_len(pool.v6, encap);
        let growth = b.sub(b.c64(outer), b.mul(get(h.vlan_depth), b.c64(4)));

        // The Ethernet addresses, kept for when the FIB gives no next hop:
        // through the parser's frame pointer (only map helpers ran since,
        // which leave packet pointers valid), rather than loaded from the
        // context again. In a specialized program the parser checked it
        // for at least the Ethernet header on the way to every IP end, and
        // the verifier follows each end here; in a long one the facts come
        // from the facts map, and the verifier, which cannot tie them to
        // the frame's length, needs the bound checked again.
        let drop = b.block("lb_cannot_encap");
        if b.long_program {
            let has_eth = b.block("lb_eth");
            b.cond_br_likely(b.fits(h.data, 14, h.data_end), has_eth, drop);
            b.at(has_eth);
        }
        let macs_lo = b.load_raw(h.data, 0, 8);
        let macs_hi = b.load_raw(h.data, 8, 4);
        let grown = b.helper_call(helper::XDP_ADJUST_HEAD, b.i64(), &[ctx.into(), b.sub(b.c64(0), growth).into()]);
        let adjusted = b.block("lb_grown");
        b.cond_br_likely(b.eq(grown, b.c64(0)), adjusted, drop);
        b.at(adjusted);
        let (data, end) = b.xdp_bounds();
        let room = b.block("lb_room");
        b.cond_br_likely(b.fits(data, 14 + outer, end), room, drop);
        b.at(room);
        b.store_at(data, 0, macs_lo);
        b.store_at(data, 8, macs_hi);
        b.store_at(data, 12, b.c16(if pool.v6 { 0xdd86 } else { 0x0008 }));
        let gue = matches!(encap, Encap::Gue { .. });
        let inner_proto = b.select(inner_v6, b.c64(41), b.c64(4));
        let next_proto = if gue { b.c64(17) } else { inner_proto };
        let ip_hdr = if pool.v6 { 40 } else { 20 };
        let src = self.outer_source_words(src, hash);
        // The backend's address as loaded (network order in memory).
        let dst: Vec<IntValue<'ctx>> = (0..if pool.v6 { 4 } else { 1 }).map(|i| b.load_raw(backend, 4 * i, 4)).collect();
        if pool.v6 {
            let flow_label = b.zext64(b.and(hash(), b.c32(0xf_ffff)));
            let word0 = b.or(b.or(b.c64(6 << 28), b.shl(tos, b.c64(20))), flow_label);
            b.store_frame_at(data, 14, b.bswap(b.trunc(word0, i32t)));
            // Payload length | next header, hop limit: one word as stored.
            let payload = b.zext64(b.bswap(b.trunc(b.add(inner_len, b.c64(outer - 40)), i16t)));
            let next_hop_limit = b.or(next_proto, b.c64(u64::from(OUTER_TTL) << 8));
            b.store_frame_at(data, 18, b.trunc(b.or(payload, b.shl(next_hop_limit, b.c64(16))), i32t));
            for (i, w) in src.iter().enumerate() {
                b.store_frame_at(data, 22 + 4 * i as u64, *w);
            }
            for (i, w) in dst.iter().enumerate() {
                b.store_frame_at(data, 38 + 4 * i as u64, *w);
            }
        } else {
            let total = b.bswap(b.trunc(b.add(inner_len, b.c64(outer)), i16t));
            let frag = b.select(df, b.c16(0x0040), b.c16(0));
            let proto = b.trunc(next_proto, b.m.i8());
            // The header checksum: the one's-complement sum of its 16-bit
            // words as stored (the sum does not depend on byte order),
            // folded, inverted. Summed from the values, not read back from
            // the packet: a wide load of bytes that narrower stores have
            // just written waits for them to reach the cache.
            let halves = |w: IntValue<'ctx>| {
                let w = b.zext64(w);
                b.add(b.and(w, b.c64(0xffff)), b.lshr(w, b.c64(16)))
            };
            let first = b.or(b.c64(0x45), b.shl(b.and(tos, b.c64(0xff)), b.c64(8)));
            let ttl_proto = b.or(b.c64(u64::from(OUTER_TTL)), b.shl(b.zext64(proto), b.c64(8)));
            let mut sum = b.add(b.add(first, b.zext64(total)), b.add(b.zext64(frag), ttl_proto));
            sum = b.add(sum, b.add(halves(src[0]), halves(dst[0])));
            for _ in 0..2 {
                sum = b.add(b.and(sum, b.c64(0xffff)), b.lshr(sum, b.c64(16)));
            }
            let check = b.and(b.xor(sum, b.c64(0xffff)), b.c64(0xffff));
            // Five 32-bit words as stored (little-endian): version and IHL,
            // ToS, total length | ID 0, flags | TTL, protocol, checksum |
            // source | destination.
            let word = |lo: IntValue<'ctx>, hi: IntValue<'ctx>| b.trunc(b.or(lo, b.shl(hi, b.c64(16))), i32t);
            b.store_frame_at(data, 14, word(first, b.zext64(total)));
            b.store_frame_at(data, 18, word(b.c64(0), b.zext64(frag)));
            b.store_frame_at(data, 22, word(ttl_proto, check));
            b.store_frame_at(data, 26, src[0]);
            b.store_frame_at(data, 30, dst[0]);
        }
        if let Encap::Gue { port } = encap {
            let udp = 14 + ip_hdr;
            let sport = b.bswap(b.trunc(b.or(b.and(hash(), b.c32(0x3fff)), b.c32(0xc000)), i16t));
            let udp_len = b.bswap(b.trunc(b.add(inner_len, b.c64(8)), i16t));
            // Source | destination port: one word as stored.
            let ports = b.or(b.zext64(sport), b.c64(u64::from(port.swap_bytes()) << 16));
            b.store_frame_at(data, udp, b.trunc(ports, i32t));
            b.store_frame_at(data, udp + 4, udp_len);
            let check = if pool.v6 {
                // The pseudo-header and the UDP header (checksum 0), as
                // 16-bit halves as loaded, from the values stored.
                let halves = |w: IntValue<'ctx>| {
                    let w = b.zext64(w);
                    b.add(b.and(w, b.c64(0xffff)), b.lshr(w, b.c64(16)))
                };
                let mut sum = b.c64(u64::from(17u16.swap_bytes()) + u64::from(port.swap_bytes()));
                sum = b.add(sum, b.add(b.mul(b.zext64(udp_len), b.c64(2)), b.zext64(sport)));
                for w in src.iter().chain(&dst) {
                    sum = b.add(sum, halves(*w));
                }
                self.gue6_checksum(data, end, sum)
            } else {
                // Zero: no checksum, which UDP over IPv4 allows (the inner
                // packet carries its own).
                b.c16(0)
            };
            b.store_frame_at(data, udp + 6, check);
        }

        // The next hop.
        let fib = b.stack_buf(FIB_PARAMS_BYTES, "lb_fib");
        b.store_at(fib, 0, b.c8(if pool.v6 { AF_INET6 } else { AF_INET }));
        b.store_at(fib, 1, b.trunc(next_proto, b.m.i8()));
        // The outer packet's length, for the MTU check.
        b.store_at(fib, 6, b.trunc(b.add(inner_len, b.c64(outer)), i16t));
        let ingress = b.load_raw(ctx, XDP_MD_INGRESS_IFINDEX, 4);
        b.store_at(fib, 8, ingress);
        // The addresses from the values, not read back from the packet
        // (see the checksum).
        if !pool.v6 {
            b.store_at(fib, 12, b.trunc(tos, b.m.i8()));
        }
        for (i, (s, d)) in src.iter().zip(&dst).enumerate() {
            b.store_at(fib, 16 + 4 * i as u64, *s);
            b.store_at(fib, 32 + 4 * i as u64, *d);
        }
        let ret = self.send_by_fib(fib, ingress, data);
        // Too big for the way out: the client is told. Anything else (no
        // route, no neighbour entry yet, forwarding off): the stack decides.
        let too_big = b.block("lb_too_big");
        let stack = b.block("lb_to_stack");
        b.cond_br(b.eq(ret, b.c64(FIB_FRAG_NEEDED)), too_big, stack);
        b.at(too_big);
        let dont_fragment = get(h.df);
        let options = b.cmp(IntPredicate::NE, get(h.ihl), b.c64(5));
        self.packet_too_big(pool, encap, fib, [macs_lo, macs_hi], inner_v6, dont_fragment, options, get(h.vlan_depth), drop);
        b.at(stack);
        b.ret(XDP_PASS);
        b.at(drop);
        b.ret(XDP_DROP);
    }

    /// The UDP checksum of GUE over IPv6, as stored: UDP over IPv6 must
    /// carry one (RFC 8200, 8.1), over the pseudo-header, the UDP header
    /// and the whole packet inside. `outer` is the one's-complement sum of
    /// the pseudo-header and the UDP header (checksum 0) as 16-bit halves
    /// as loaded; `data` and `end` bound the encapsulated frame, the packet
    /// inside at [`GUE6_INNER_AT`].
    ///
    /// The packet inside is not summed byte by byte where its own checksums
    /// cover it: an IPv4 header whose checksum is right sums to 0 (in
    /// one's complement, 0xffff and 0 are one number), an ICMP message
    /// whose checksum is right sums to 0, and a TCP segment, a UDP datagram
    /// with a checksum or an ICMPv6 message whose checksum is right sums
    /// to minus its pseudo-header. So TCP, UDP with a checksum, ICMP over
    /// IPv4 and ICMPv6 over IPv6 add:
    /// - IPv4 inside: minus the sum of its pseudo-header (the addresses,
    ///   the protocol and the L4 length), or 0 for ICMP;
    /// - IPv6 inside: its header less its L4 pseudo-header, where the
    ///   addresses and the length cancel: the first word's halves, the
    ///   hop limit and 255 times the next header (`nh << 8` less `nh`);
    ///   only when the L4 header follows the IPv6 header (no extension
    ///   headers, which are in neither checksum).
    ///
    /// Computed from values (the parser's facts and the inner header's
    /// fields, none of them bytes just stored), whatever the length, and
    /// right exactly when the inner checksums are (docs/language.md, "Outer
    /// checksums"). Any other packet (a fragment, extension headers, UDP
    /// without a checksum, another protocol) is summed over its bytes with
    /// `bpf_csum_diff`, in chunks of 2048 down to 4 bytes by the bits of
    /// its length and then the last 1 to 3 bytes; one that is not wholly in
    /// the frame (an IP length past it) gets 0, "no checksum", which
    /// Linux's `fou` accepts over IPv6 (RFC 6935, 6936).
    fn gue6_checksum(&self, data: PointerValue<'ctx>, end: PointerValue<'ctx>, outer: IntValue<'ctx>) -> IntValue<'ctx> {
        let b = &*self.b;
        let h = &self.h;
        let get = |p| b.get_fact(p);
        let i16t = b.m.cx.i16_type();
        let c = |v: u64| b.c64(v);
        // Which packets are covered is read from the packet inside's header
        // (the bytes the parser read, not written since), not taken from
        // the facts, and decided with values 0 or 1 computed without a
        // branch (BPF has no conditional move: LLVM makes each compare or
        // select a branch; opaque values keep it from turning them back),
        // then one branch per decision. The verifier knows the facts
        // differently on each of the parser's paths (the protocol of an L4
        // copy, the lengths the extension headers' bounds refine); a branch
        // whose outcome it knows from them would have it track them along
        // all those paths, and verify what follows once per path.
        // 1 when `x` (less than 2^63) is `k`.
        let eq = |x: IntValue<'ctx>, k: u64| b.lshr(b.sub(b.opaque(b.xor(x, c(k))), c(1)), c(63));
        // 1 when `x` (less than 2^63) is at least `k`.
        let at_least = |x: IntValue<'ctx>, k: u64| b.xor(b.lshr(b.sub(b.opaque(x), c(k)), c(63)), c(1));
        // `a` when `f` is 1, `z` when it is 0.
        let pick = |f: IntValue<'ctx>, a: IntValue<'ctx>, z: IntValue<'ctx>| b.xor(z, b.and(b.xor(a, z), b.opaque(b.sub(c(0), f))));
        // Folds a sum (less than 2^48) to 16 bits.
        let fold16 = |mut x: IntValue<'ctx>| {
            for _ in 0..3 {
                x = b.add(b.and(x, c(0xffff)), b.lshr(x, c(16)));
            }
            x
        };
        let swap16 = |x: IntValue<'ctx>| b.or(b.lshr(x, c(8)), b.and(b.shl(x, c(8)), c(0xff00)));
        // The checksum of a sum: the sum modulo 0xffff is its value in one's
        // complement with 0 for zero (not 0xffff), so its inverse is never
        // 0: a computed 0 is sent as 0xffff (0 is "no checksum").
        // Folded to 16 bits first (not `urem`, a 64-bit division): a fold
        // of 0xffff is 0 modulo 0xffff.
        let finish = |sum: IntValue<'ctx>| {
            let t = b.sub(c(0xffff), fold16(sum));
            b.trunc(pick(eq(t, 0), c(0xffff), t), i16t)
        };
        // The inner packet's part of the sum where its TCP, UDP or ICMP
        // checksum covers it: its IP header less the pseudo-header that
        // checksum covers (for IPv6 the addresses and length cancel).
        let v6_sum = |proto: IntValue<'ctx>| {
            let tos = get(h.tos);
            let flow = get(h.flow);
            let hi = b.or(b.or(c(0x6000), b.shl(b.and(tos, c(0xff)), c(4))), b.lshr(flow, c(16)));
            let lo = b.and(flow, c(0xffff));
            b.add(b.add(hi, lo), b.add(b.and(get(h.ttl), c(0xff)), b.mul(proto, c(255))))
        };
        let v4_sum = |proto: IntValue<'ctx>, l4_len: IntValue<'ctx>| {
            let halves_be = |raw: IntValue<'ctx>| {
                let w = b.zext64(b.bswap(b.trunc(raw, b.m.cx.i32_type())));
                b.add(b.and(w, c(0xffff)), b.lshr(w, c(16)))
            };
            let pseudo = b.add(b.add(halves_be(get(h.src4)), halves_be(get(h.dst4))), b.add(proto, l4_len));
            b.sub(c(0xffff), fold16(pseudo))
        };
        let done = b.block("gue6_csum_done");
        let header = b.block("gue6_csum_header");
        let derived = b.block("gue6_csum_derived");
        let not_covered = b.block("gue6_csum_not_covered");
        let udp = b.block("gue6_csum_udp");
        let udp_in = b.block("gue6_csum_udp_in");
        let bytes = b.block("gue6_csum_bytes");
        let none = b.block("gue6_csum_none");
        let mut incoming = Vec::new();

        // The common case, from the parser's facts alone: TCP right after
        // the IP header (IPv6 without extension headers, IPv4 not a
        // fragment). Where the rule implies it (a TCP VIP), LLVM knows the
        // facts and this is the only path; elsewhere one branch on them
        // comes before the general decision below.
        let tcp_first = b.block("gue6_csum_tcp");
        let general = b.block("gue6_csum_general");
        let direct = b.select(get(h.ip6_ok), b.eq(get(h.ip6_nh), c(6)), b.not(get(h.frag)));
        b.cond_br_likely(b.and(get(h.tcp_ok), direct), tcp_first, general);
        b.at(tcp_first);
        let l4_len = b.sub(get(h.ip_len), b.shl(get(h.ihl), c(2)));
        let inner = swap16(fold16(b.select(get(h.ip6_ok), v6_sum(c(6)), v4_sum(c(6), l4_len))));
        incoming.push((finish(b.add(outer, inner)), b.cur()));
        b.br(done);
        b.at(general);

        // The fixed part of an IPv4 header, 20 of IPv6's 40 bytes: in the
        // frame, as the parser found them.
        b.cond_br_likely(b.fits(data, GUE6_INNER_AT + 20, end), header, none);
        b.at(header);
        // The family is known at each of the parser's ends: LLVM folds it.
        let v6 = b.zext64(get(h.ip6_ok));
        let v4 = b.xor(v6, c(1));
        let byte = |off: u64| b.zext64(b.load_raw(data, GUE6_INNER_AT + off, 1));
        let hl = pick(v6, c(40), b.shl(b.and(byte(0), c(0xf)), c(2)));
        let plen = b.load_be(data, GUE6_INNER_AT + 4, 2);
        let len = pick(v6, b.add(plen, c(40)), b.load_be(data, GUE6_INNER_AT + 2, 2));
        // IPv4: protocol, and not a fragment (MF and the offset 0); IPv6:
        // the next header, which is one of those below only when no
        // extension header comes first.
        let proto = pick(v6, byte(6), byte(9));
        let fragment = b.xor(eq(b.and(b.load_be(data, GUE6_INNER_AT + 6, 2), c(0x3fff)), 0), c(1));
        let whole = b.or(v6, b.xor(fragment, c(1)));
        let covered = b.or(eq(proto, 6), b.or(b.and(v6, eq(proto, 58)), b.and(v4, eq(proto, 1))));
        // UDP whose header is in the datagram (by its length; an IPv6
        // payload length of 0, a jumbogram, has the frame bound it).
        let in_datagram = pick(v6, b.or(at_least(plen, 8), eq(plen, 0)), at_least(b.sub(b.add(len, c(64)), hl), 64 + 8));
        let udp_whole = b.and(b.and(whole, eq(proto, 17)), in_datagram);
        b.cond_br_likely(b.cmp(IntPredicate::NE, b.and(whole, covered), c(0)), derived, not_covered);
        // UDP: covered when its checksum is not 0.
        b.at(not_covered);
        b.cond_br(b.cmp(IntPredicate::NE, udp_whole, c(0)), udp, bytes);
        b.at(udp);
        let p = b.pkt_ptr(data, b.and(b.add(c(GUE6_INNER_AT), hl), c(0xff)));
        b.cond_br_likely(b.fits(p, 8, end), udp_in, bytes);
        b.at(udp_in);
        b.cond_br_likely(b.cmp(IntPredicate::NE, b.zext64(b.load_raw(p, 6, 2)), c(0)), derived, bytes);

        b.at(derived);
        let inner4 = pick(eq(proto, 1), c(0), v4_sum(proto, b.sub(len, hl)));
        let inner = swap16(fold16(pick(v6, v6_sum(proto), inner4)));
        incoming.push((finish(b.add(outer, inner)), b.cur()));
        b.br(done);

        // The bytes: all of the packet in the frame, else no checksum.
        b.at(bytes);
        let room = b.sub(b.ptr_to_int(end), b.ptr_to_int(data));
        let summable = b.and(b.cmp(IntPredicate::ULE, len, c(GUE6_MAX_SUMMED)), b.cmp(IntPredicate::ULE, b.add(len, c(GUE6_INNER_AT)), room));
        let chunks = b.block("gue6_csum_chunks");
        b.cond_br_likely(summable, chunks, none);
        b.at(chunks);
        let null = b.m.i8_ptr().const_null();
        // Each chunk's offset is the length's bits above the chunk's (the
        // chunks before it), and each test of a bit goes through an opaque
        // register: the verifier then sees the same bounded length, and
        // one bounded offset per chunk, on every path, and prunes; it
        // would otherwise follow each combination of chunks (constant
        // offsets, the length's bits learnt from the tests) on its own.
        let at = |below: u64| b.pkt_ptr(data, b.add(b.and(len, c(0xfff & !below)), c(GUE6_INNER_AT)));
        let mut acc = c(0);
        for chunk in [2048u64, 1024, 512, 256, 128, 64, 32, 16, 8, 4] {
            let from = b.cur();
            let take = b.block("gue6_csum_chunk");
            let next = b.block("gue6_csum_chunk_next");
            b.cond_br(b.cmp(IntPredicate::NE, b.opaque(b.and(len, c(chunk))), c(0)), take, next);
            b.at(take);
            let p = at(2 * chunk - 1);
            let there = b.block("gue6_csum_chunk_there");
            b.cond_br_likely(b.fits(p, chunk, end), there, none);
            b.at(there);
            let step = chunk.min(GUE6_CSUM_DIFF_MAX);
            let mut a = acc;
            for k in 0..chunk / step {
                let q = b.ptr_add(p, c(k * step));
                a = b.helper_call(helper::CSUM_DIFF, b.i64(), &[null.into(), c(0).into(), q.into(), c(step).into(), a.into()]);
            }
            let took = b.cur();
            b.br(next);
            b.at(next);
            acc = b.phi(&[(a, took), (acc, from)]);
        }
        // The last 1 to 3 bytes, at an even offset: each the high byte of
        // a word padded with 0, which is its value as loaded.
        let p = at(3);
        let rest = b.opaque(b.and(len, c(3)));
        let from = b.cur();
        let summed = b.block("gue6_csum_summed");
        let tail = b.block("gue6_csum_tail");
        let two = b.block("gue6_csum_tail2");
        let two_in = b.block("gue6_csum_tail2_in");
        let three = b.block("gue6_csum_tail3");
        let three_in = b.block("gue6_csum_tail3_in");
        let one = b.block("gue6_csum_tail1");
        let one_in = b.block("gue6_csum_tail1_in");
        b.cond_br(b.eq(rest, c(0)), summed, tail);
        b.at(tail);
        b.cond_br(b.cmp(IntPredicate::NE, b.and(rest, c(2)), c(0)), two, one);
        b.at(two);
        b.cond_br_likely(b.fits(p, 2, end), two_in, none);
        b.at(two_in);
        let w2 = b.zext64(b.load_raw(p, 0, 2));
        b.cond_br(b.eq(rest, c(3)), three, summed);
        b.at(three);
        b.cond_br_likely(b.fits(p, 3, end), three_in, none);
        b.at(three_in);
        let w3 = b.add(w2, b.zext64(b.load_raw(p, 2, 1)));
        b.br(summed);
        b.at(one);
        b.cond_br_likely(b.fits(p, 1, end), one_in, none);
        b.at(one_in);
        let w1 = b.zext64(b.load_raw(p, 0, 1));
        b.br(summed);
        b.at(summed);
        let last = b.phi(&[(c(0), from), (w2, two_in), (w3, three_in), (w1, one_in)]);
        incoming.push((finish(b.add(b.add(outer, acc), last)), b.cur()));
        b.br(done);

        b.at(none);
        incoming.push((b.c16(0), none));
        b.br(done);
        b.at(done);
        b.phi(&incoming)
    }

    /// Looks up the next hop (`fib`: a filled `struct bpf_fib_lookup`) and,
    /// when the FIB has it, sets the frame's Ethernet addresses (`data`:
    /// the frame, checked to hold 14 bytes) and sends it: `XDP_TX` back out of the ingress interface, else a redirect.
    /// Otherwise returns the FIB's answer, the builder in a block of its
    /// own for the caller to decide.
    pub(super) fn send_by_fib(&self, fib: PointerValue<'ctx>, ingress: IntValue<'ctx>, data: PointerValue<'ctx>) -> IntValue<'ctx> {
        let b = &*self.b;
        // An input lookup, as for a packet forwarded from the ingress
        // interface (which must have forwarding on, else the FIB says so
        // and the stack gets the packet). `BPF_FIB_LOOKUP_OUTPUT` would
        // bind the way out to the ingress interface.
        let ret = b.helper_call(helper::FIB_LOOKUP, b.i64(), &[b.ctx().into(), fib.into(), b.c64(u64::from(FIB_PARAMS_BYTES)).into(), b.c64(0).into()]);
        let found = b.block("lb_next_hop");
        let not_found = b.block("lb_no_next_hop");
        b.cond_br_likely(b.eq(ret, b.c64(FIB_SUCCESS)), found, not_found);
        b.at(found);
        // smac at 52, dmac at 58 in the params; the frame wants dmac first.
        // `data` is still valid and checked: bpf_fib_lookup does not change
        // the packet (the verifier keeps packet pointers across it).
        // Each load within one of the helper's stores (it copies each
        // address as 4 bytes and 2), which the CPU forwards from its store
        // buffer: a load spanning two of them (the tail of smac and all of
        // dmac as one 64-bit word) waits for both to reach the cache. The
        // stack allows no 4-byte load at 58, so dmac is three 2-byte ones.
        for (frame_off, fib_off, bytes) in [(0, 58, 2), (2, 60, 2), (4, 62, 2), (6, 52, 4), (10, 56, 2)] {
            b.store_frame_at(data, frame_off, b.load_raw(fib, fib_off, bytes));
        }
        let out = b.load_raw(fib, 8, 4);
        let same = b.block("lb_tx");
        let other = b.block("lb_redirect");
        b.cond_br_likely(b.eq(out, ingress), same, other);
        b.at(same);
        b.ret(XDP_TX);
        b.at(other);
        let r = b.helper_call(helper::REDIRECT, b.i64(), &[b.zext64(out).into(), b.c64(0).into()]);
        b.ret_value(r);
        b.at(not_found);
        ret
    }

    /// The encapsulated packet is over the way out's MTU (`fib` holds the
    /// FIB's answer, its `mtu_result`): tell the client, as a router would,
    /// with an ICMP "fragmentation needed" (IPv4 with DF) or ICMPv6
    /// "packet too big" sent back out of the interface the packet came in
    /// by, from the address it was sent to (the VIP), naming the MTU less
    /// the outer headers and quoting the packet's IP header and 8 bytes
    /// (RFC 792, RFC 4443). An IPv4 packet without DF in an IPv4 outer
    /// header may be fragmented: the outer header has no DF either, and the
    /// stack fragments it; in an IPv6 outer header (which no router
    /// fragments) it is answered too. An IPv4 packet with options is
    /// dropped (its quote would be longer), and so is a VLAN-tagged one
    /// (the answer would leave untagged).
    #[allow(clippy::too_many_arguments)]
    fn packet_too_big(&self, pool: PoolMaps<'ctx>, encap: Encap, fib: PointerValue<'ctx>, macs: [IntValue<'ctx>; 2], inner_v6: IntValue<'ctx>, dont_fragment: IntValue<'ctx>, options: IntValue<'ctx>, vlan_depth: IntValue<'ctx>, drop: inkwell::basic_block::BasicBlock<'ctx>) {
        let b = &*self.b;
        let i16t = b.m.cx.i16_type();
        let i32t = b.m.cx.i32_type();
        let ctx = b.ctx();
        let outer = outer_len(pool.v6, encap);
        let mtu = b.zext64(b.load_raw(fib, 6, 2));
        let inner_mtu = b.select(b.cmp(IntPredicate::UGT, mtu, b.c64(outer)), b.sub(mtu, b.c64(outer)), b.c64(0));
        let answer4 = b.block("lb_frag_needed");
        let answer6 = b.block("lb_packet_too_big");
        let v4 = b.block("lb_too_big_v4");
        let fragmentable = b.block("lb_fragmentable");
        // The answer goes back untagged: a tagged packet is dropped rather
        // than answered on another VLAN.
        let untagged = b.block("lb_too_big_untagged");
        b.cond_br(b.eq(vlan_depth, b.c64(0)), untagged, drop);
        b.at(untagged);
        b.cond_br(inner_v6, answer6, v4);
        b.at(v4);
        let no_options = b.block("lb_too_big_plain");
        b.cond_br(options, drop, no_options);
        b.at(no_options);
        if pool.v6 {
            // Forwarded IPv6 is never fragmented: told even without DF.
            b.br(answer4);
        } else {
            b.cond_br(dont_fragment, answer4, fragmentable);
        }
        b.at(fragmentable);
        b.ret(XDP_PASS);
        for v6 in [false, true] {
            b.at(if v6 { answer6 } else { answer4 });
            // IP header and ICMP header, then the quote.
            let (headers, quote) = if v6 { (48u64, 48u64) } else { (28, 28) };
            let moved = b.helper_call(helper::XDP_ADJUST_HEAD, b.i64(), &[ctx.into(), b.c64(outer.wrapping_sub(headers)).into()]);
            let headed = b.block("lb_icmp_headed");
            b.cond_br_likely(b.eq(moved, b.c64(0)), headed, drop);
            b.at(headed);
            let total = 14 + headers + quote;
            let (data, end) = b.xdp_bounds();
            let cut = b.sub(b.c64(total), b.sub(b.ptr_to_int(end), b.ptr_to_int(data)));
            let cut_ok = b.helper_call(helper::XDP_ADJUST_TAIL, b.i64(), &[ctx.into(), cut.into()]);
            let tailed = b.block("lb_icmp_tailed");
            b.cond_br_likely(b.eq(cut_ok, b.c64(0)), tailed, drop);
            b.at(tailed);
            let (data, end) = b.xdp_bounds();
            let room = b.block("lb_icmp_room");
            b.cond_br_likely(b.fits(data, total, end), room, drop);
            b.at(room);
            // Back to where it came from: the Ethernet addresses swapped.
            let [lo, hi] = macs;
            b.store_at(data, 0, b.trunc(b.lshr(lo, b.c64(48)), i16t));
            b.store_at(data, 2, hi);
            b.store_at(data, 6, b.trunc(lo, i32t));
            b.store_at(data, 10, b.trunc(b.lshr(lo, b.c64(32)), i16t));
            let q = 14 + headers;
            if v6 {
                b.store_at(data, 12, b.c16(0xdd86));
                b.store_at(data, 14, b.c32(0x60u32));
                b.store_at(data, 18, b.c16((8 + quote as u16).swap_bytes()));
                b.store_at(data, 20, b.c8(58));
                b.store_at(data, 21, b.c8(OUTER_TTL));
                // From the address the packet was sent to, to its source.
                for i in 0..4 {
                    b.store_at(data, 22 + 4 * i, b.load_raw(data, q + 24 + 4 * i, 4));
                    b.store_at(data, 38 + 4 * i, b.load_raw(data, q + 8 + 4 * i, 4));
                }
                b.store_at(data, 54, b.c8(2));
                b.store_at(data, 55, b.c8(0));
                b.store_at(data, 56, b.c16(0));
                b.store_at(data, 58, b.bswap(b.trunc(inner_mtu, i32t)));
                // The checksum covers a pseudo-header: the addresses, the
                // length and the next header.
                let pseudo = b.c64(u64::from((8 + quote as u16).swap_bytes()) + u64::from(58u16.swap_bytes()));
                let sum = ones_sum(b, data, 22, 8, pseudo);
                let sum = ones_sum(b, data, 54, (8 + quote) / 4, sum);
                b.store_at(data, 56, fold(b, sum));
            } else {
                b.store_at(data, 12, b.c16(0x0008));
                b.store_at(data, 14, b.c16(0xc045));
                b.store_at(data, 16, b.c16((20 + 8 + quote as u16).swap_bytes()));
                b.store_at(data, 18, b.c32(0));
                b.store_at(data, 22, b.c8(OUTER_TTL));
                b.store_at(data, 23, b.c8(1));
                b.store_at(data, 24, b.c16(0));
                b.store_at(data, 26, b.load_raw(data, q + 16, 4));
                b.store_at(data, 30, b.load_raw(data, q + 12, 4));
                b.store_at(data, 24, fold(b, ones_sum(b, data, 14, 5, b.c64(0))));
                b.store_at(data, 34, b.c8(3));
                b.store_at(data, 35, b.c8(4));
                b.store_at(data, 36, b.c16(0));
                b.store_at(data, 38, b.c16(0));
                b.store_at(data, 40, b.bswap(b.trunc(inner_mtu, i16t)));
                b.store_at(data, 36, fold(b, ones_sum(b, data, 34, (8 + quote) / 4, b.c64(0))));
            }
            b.ret(XDP_TX);
        }
    }

    /// The outer source address as the words to store (as loaded: network
    /// order in memory): one for IPv4, four for IPv6.
    fn outer_source_words(&self, src: OuterSource, hash: impl Fn() -> IntValue<'ctx>) -> Vec<IntValue<'ctx>> {
        let b = &*self.b;
        let raw = |octets: &[u8]| -> Vec<IntValue<'ctx>> { octets.chunks(4).map(|c| b.c32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect() };
        match src {
            OuterSource::Fixed(IpAddr::V4(a)) => raw(&a.octets()),
            OuterSource::Fixed(IpAddr::V6(a)) => raw(&a.octets()),
            OuterSource::PerFlow(a, len) => {
                let octets = match a {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                };
                let mut words = raw(&octets);
                let host = octets.len() as u32 * 8 - u32::from(len);
                let mask = if host >= 32 { u32::MAX } else { (1u32 << host) - 1 };
                let last = octets.len() / 4 - 1;
                let prefix = u32::from_be_bytes([octets[4 * last], octets[4 * last + 1], octets[4 * last + 2], octets[4 * last + 3]]);
                words[last] = b.bswap(b.or(b.c32(prefix), b.and(hash(), b.c32(mask))));
                words
            }
        }
    }
}
