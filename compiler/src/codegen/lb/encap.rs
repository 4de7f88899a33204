//! The encapsulation of `lb(POOL, encap: ...)` (IPIP or GUE, direct server
//! return), the next hop by the FIB, and the ICMP answer for a packet too
//! big for the way out.

use super::*;

impl<'ctx> Lower<'_, '_, 'ctx> {
    /// Puts the outer headers in front of the packet's IP header (dropping
    /// any VLAN tags) and sends it to `backend` (a pointer to its
    /// [`meta::BackendValue`]).
    pub(super) fn encapsulate(&self, encap: Encap, src: OuterSource, pool: PoolMaps<'ctx>, hash: IntValue<'ctx>, backend: PointerValue<'ctx>) {
        let b = &*self.b;
        let h = &self.h;
        let get = |p| b.get_fact(p);
        let i16t = b.m.cx.i16_type();
        let i32t = b.m.cx.i32_type();
        let ctx = b.ctx();
        let inner_v6 = get(h.ip6_ok);
        let inner_len = get(h.ip_len);
        let tos = get(h.tos);
        // IPv4 inside: the outer IPv4 header says "don't fragment" when the
        // inner one does; IPv6 is never fragmented on the way.
        let df = b.or(inner_v6, get(h.df));
        let outer = outer_len(pool.v6, encap);
        let growth = b.sub(b.c64(outer), b.mul(get(h.vlan_depth), b.c64(4)));

        // The Ethernet addresses, kept for when the FIB gives no next hop.
        let drop = b.block("lb_cannot_encap");
        let (data, end) = b.xdp_bounds();
        let has_eth = b.block("lb_eth");
        b.cond_br_likely(b.fits(data, 14, end), has_eth, drop);
        b.at(has_eth);
        let macs_lo = b.load_raw(data, 0, 8);
        let macs_hi = b.load_raw(data, 8, 4);
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
            let flow_label = b.zext64(b.and(hash, b.c32(0xf_ffff)));
            let word0 = b.or(b.or(b.c64(6 << 28), b.shl(tos, b.c64(20))), flow_label);
            b.store_at(data, 14, b.bswap(b.trunc(word0, i32t)));
            let payload = b.add(inner_len, b.c64(outer - 40));
            b.store_at(data, 18, b.bswap(b.trunc(payload, i16t)));
            b.store_at(data, 20, b.trunc(next_proto, b.m.i8()));
            b.store_at(data, 21, b.c8(OUTER_TTL));
            for (i, w) in src.iter().enumerate() {
                b.store_at(data, 22 + 4 * i as u64, *w);
            }
            for (i, w) in dst.iter().enumerate() {
                b.store_at(data, 38 + 4 * i as u64, *w);
            }
        } else {
            let total = b.bswap(b.trunc(b.add(inner_len, b.c64(outer)), i16t));
            let frag = b.select(df, b.c16(0x0040), b.c16(0));
            let proto = b.trunc(next_proto, b.m.i8());
            b.store_at(data, 14, b.c8(0x45));
            b.store_at(data, 15, b.trunc(tos, b.m.i8()));
            b.store_at(data, 16, total);
            b.store_at(data, 18, b.c16(0));
            b.store_at(data, 20, frag);
            b.store_at(data, 22, b.c8(OUTER_TTL));
            b.store_at(data, 23, proto);
            b.store_at(data, 26, src[0]);
            b.store_at(data, 30, dst[0]);
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
            b.store_at(data, 24, b.trunc(b.xor(sum, b.c64(0xffff)), i16t));
        }
        if let Encap::Gue { port } = encap {
            let udp = 14 + ip_hdr;
            let sport = b.or(b.and(hash, b.c32(0x3fff)), b.c32(0xc000));
            b.store_at(data, udp, b.bswap(b.trunc(sport, i16t)));
            b.store_at(data, udp + 2, b.c16(port.swap_bytes()));
            b.store_at(data, udp + 4, b.bswap(b.trunc(b.add(inner_len, b.c64(8)), i16t)));
            // Zero: no checksum, which UDP over IPv4 allows (the inner
            // packet carries its own).
            b.store_at(data, udp + 6, b.c16(0));
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

    /// Looks up the next hop (`fib`: a filled `struct bpf_fib_lookup`) and,
    /// when the FIB has it, sets the frame's Ethernet addresses (`data`:
    /// the frame, checked to hold 14 bytes) and sends it: `XDP_TX` back out of the ingress interface, else a redirect.
    /// Otherwise returns the FIB's answer, the builder in a block of its
    /// own for the caller to decide.
    pub(super) fn send_by_fib(&self, fib: PointerValue<'ctx>, ingress: IntValue<'ctx>, data: PointerValue<'ctx>) -> IntValue<'ctx> {
        let b = &*self.b;
        let i16t = b.m.cx.i16_type();
        let i32t = b.m.cx.i32_type();
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
        let smac_head = b.load_raw(fib, 52, 4);
        let tail = b.load_raw(fib, 56, 8);
        b.store_at(data, 0, b.trunc(b.lshr(tail, b.c64(16)), i32t));
        b.store_at(data, 4, b.trunc(b.lshr(tail, b.c64(48)), i16t));
        b.store_at(data, 6, smac_head);
        b.store_at(data, 10, b.trunc(tail, i16t));
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
    fn outer_source_words(&self, src: OuterSource, hash: IntValue<'ctx>) -> Vec<IntValue<'ctx>> {
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
                words[last] = b.bswap(b.or(b.c32(prefix), b.and(hash, b.c32(mask))));
                words
            }
        }
    }
}
