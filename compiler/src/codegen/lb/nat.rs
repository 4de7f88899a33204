//! `lb(POOL, nat)`: the destination rewrite in XDP and its reverse for
//! replies at the start of the `tc:egress` program.

use super::*;

impl<'ctx> Lower<'_, '_, 'ctx> {
    /// `nat`: rewrites the destination address (and port, with `port`) to
    /// the backend's, with incremental checksum updates (RFC 1624; a UDP
    /// checksum of 0, none, stays 0), records the reply's translation for
    /// TC egress (`nat_map`), and sends the packet on by the FIB (else up
    /// the stack, which forwards it). `balance` let only TCP and UDP
    /// packets of the pool's family, not fragments, come here.
    pub(super) fn translate(&self, pool: PoolMaps<'ctx>, port: Option<u16>, backend: PointerValue<'ctx>) {
        let b = &*self.b;
        let h = &self.h;
        let get = |p| b.get_fact(p);
        let i16t = b.m.cx.i16_type();
        let i32t = b.m.cx.i32_type();
        let Some(nat_map) = pool.nat else { return b.ret(XDP_DROP) };
        let drop = b.block("lb_nat_drop");
        let l3 = b.add(b.c64(14), b.mul(get(h.vlan_depth), b.c64(4)));
        let ip_hdr = if pool.v6 { b.c64(40) } else { b.mul(get(h.ihl), b.c64(4)) };
        let tcp = get(h.tcp_ok);
        // The parser's frame pointers: only map helpers ran since, and
        // LLVM can reuse the parser's bounds checks where they are the same.
        let (data, end) = (h.data, h.data_end);
        let ip = b.pkt_ptr(data, b.and(l3, b.c64(MAX_QUOTE_OFFSET)));
        let l4 = b.pkt_ptr(data, b.and(b.add(l3, ip_hdr), b.c64(MAX_QUOTE_OFFSET)));
        let (addr_off, addr_words) = if pool.v6 { (24, 4) } else { (16, 1) };
        let headers = b.block("lb_nat_headers");
        // The Ethernet header is checked on `data` itself for the FIB's
        // MACs: by the parser where the program is specialized (see
        // `encapsulate`), here in a long program.
        let ip_ok = b.fits(ip, if pool.v6 { 40 } else { 20 }, end);
        let ip_ok = if b.long_program { b.and(b.fits(data, 14, end), ip_ok) } else { ip_ok };
        let ok = b.and(ip_ok, b.fits(l4, 20, end));
        let ok_udp = b.and(ip_ok, b.fits(l4, 8, end));
        b.cond_br_likely(b.select(tcp, ok, ok_udp), headers, drop);
        b.at(headers);
        // The one's-complement difference the rewrite makes, summed as
        // loaded (RFC 1624's sum does not depend on byte order).
        // IPv4: split as 32-bit words, then widened: the rule compared the
        // 32-bit word (`ip.dst == VIP`), so LLVM puts the constant in its
        // uses where the rule held; the parser's 64-bit widening of the
        // same word, which `zext64` of it folds back to, it would not
        // replace. (IPv6's words come from the compared 64-bit halves.)
        let halves = |w: IntValue<'ctx>| {
            if pool.v6 {
                (b.and(b.zext64(w), b.c64(0xffff)), b.lshr(b.zext64(w), b.c64(16)))
            } else {
                (b.zext64(b.and(w, b.c32(0xffff))), b.zext64(b.lshr(w, b.c32(16))))
            }
        };
        // The addresses and ports as loaded (network order in memory), from
        // the parser's facts: where the rule names the VIP, they are
        // constants and the checksum deltas fold.
        let as_loaded = |v4: PointerValue<'ctx>, hi: PointerValue<'ctx>, lo: PointerValue<'ctx>| -> Vec<IntValue<'ctx>> {
            if pool.v6 {
                let (hi, lo) = (b.bswap(get(hi)), b.bswap(get(lo)));
                vec![b.trunc(hi, i32t), b.trunc(b.lshr(hi, b.c64(32)), i32t), b.trunc(lo, i32t), b.trunc(b.lshr(lo, b.c64(32)), i32t)]
            } else {
                vec![b.trunc(get(v4), i32t)]
            }
        };
        let dst_addr = as_loaded(h.dst4, h.dst6_hi, h.dst6_lo);
        let src_addr = as_loaded(h.src4, h.src6_hi, h.src6_lo);
        let port_as_loaded = |t, u| b.bswap(b.trunc(b.select(tcp, get(t), get(u)), i16t));
        let new_addr: Vec<IntValue<'ctx>> = (0..addr_words).map(|i| b.load_raw(backend, 4 * i, 4)).collect();
        let mut addr_delta = b.c64(0);
        let mut old_addr = Vec::new();
        for i in 0..addr_words as usize {
            let (old, new) = (dst_addr[i], new_addr[i]);
            let (o1, o2) = halves(old);
            let (n1, n2) = halves(new);
            addr_delta = b.add(addr_delta, b.add(b.add(b.xor(o1, b.c64(0xffff)), b.xor(o2, b.c64(0xffff))), b.add(n1, n2)));
            old_addr.push(old);
        }
        let old_port = port_as_loaded(h.tcp_dport, h.udp_dport);
        let new_port = port.map_or(old_port, |p| b.c16(p.swap_bytes()));
        let port_delta = b.add(b.xor(b.zext64(old_port), b.c64(0xffff)), b.zext64(new_port));
        let l4_delta = b.add(addr_delta, port_delta);
        // HC' = ~(~HC + delta), folded.
        let updated = |old: IntValue<'ctx>, delta: IntValue<'ctx>| fold(b, b.add(b.xor(b.zext64(old), b.c64(0xffff)), delta));
        if !pool.v6 {
            b.store_at(ip, 10, updated(b.load_raw(ip, 10, 2), addr_delta));
        }
        let tcp_bb = b.block("lb_nat_tcp");
        let udp_bb = b.block("lb_nat_udp");
        let l4_done = b.block("lb_nat_l4_done");
        b.cond_br(tcp, tcp_bb, udp_bb);
        b.at(tcp_bb);
        b.store_at(l4, 16, updated(b.load_raw(l4, 16, 2), l4_delta));
        b.br(l4_done);
        b.at(udp_bb);
        // UDP: 0 is "no checksum" and stays; a computed 0 is sent as 0xffff.
        let old_sum = b.load_raw(l4, 6, 2);
        let sum = updated(old_sum, l4_delta);
        let sum = b.select(b.eq(sum, b.c16(0)), b.c16(0xffff), sum);
        b.store_at(l4, 6, b.select(b.eq(old_sum, b.c16(0)), b.c16(0), sum));
        b.br(l4_done);
        b.at(l4_done);
        // The reply's translation back, unless it is recorded already (its
        // entry may have left the LRU table before the flow's).
        // The flow key is done with (its table updated): its buffer.
        let reply = b.stack_buf(FLOW_KEY_BYTES, FLOW_KEY_BUF);
        for (i, w) in new_addr.iter().enumerate() {
            b.store_at(reply, 4 * i as u64, *w);
        }
        for (i, w) in src_addr.iter().enumerate() {
            b.store_at(reply, 16 + 4 * i as u64, *w);
        }
        b.store_at(reply, 32, new_port);
        b.store_at(reply, 34, port_as_loaded(h.tcp_sport, h.udp_sport));
        b.store_at(reply, 36, b.select(tcp, b.c8(6), b.c8(17)));
        b.store_at(reply, 37, b.c8(if pool.v6 { 6 } else { 4 }));
        let known = b.map_lookup(nat_map, reply);
        let record = b.block("lb_nat_record");
        let recorded = b.block("lb_nat_recorded");
        let compare = b.block("lb_nat_compare");
        b.br_if_null(known, record, compare);
        // Recorded for another VIP or port (the client's port reused
        // towards another service on the same backend): this flow's wins.
        b.at(compare);
        let mut same = b.eq(b.load_raw(known, 16, 2), old_port);
        for (i, w) in old_addr.iter().enumerate() {
            same = b.and(same, b.eq(b.load_raw(known, 4 * i as u64, 4), *w));
        }
        b.cond_br_likely(same, recorded, record);
        b.at(record);
        let value = b.stack_buf(NAT_VALUE_BYTES, "lb_nat_value");
        for (i, w) in old_addr.iter().enumerate() {
            b.store_at(value, 4 * i as u64, *w);
        }
        b.store_at(value, 16, old_port);
        b.map_update(nat_map, reply, value, BPF_ANY);
        b.br(recorded);
        b.at(recorded);
        // The rewrite.
        for (i, w) in new_addr.iter().enumerate() {
            b.store_at(ip, addr_off + 4 * i as u64, *w);
        }
        b.store_at(l4, 2, new_port);

        let fib = b.stack_buf(FIB_PARAMS_BYTES, "lb_fib");
        b.store_at(fib, 0, b.c8(if pool.v6 { AF_INET6 } else { AF_INET }));
        b.store_at(fib, 1, b.select(tcp, b.c8(6), b.c8(17)));
        b.store_at(fib, 6, b.trunc(get(h.ip_len), i16t));
        let ingress = b.load_raw(b.ctx(), XDP_MD_INGRESS_IFINDEX, 4);
        b.store_at(fib, 8, ingress);
        // The addresses from the values written, not read back.
        if !pool.v6 {
            b.store_at(fib, 12, b.trunc(get(h.tos), b.m.i8()));
        }
        for (i, w) in src_addr.iter().enumerate() {
            b.store_at(fib, 16 + 4 * i as u64, *w);
        }
        for (i, w) in new_addr.iter().enumerate() {
            b.store_at(fib, 32 + 4 * i as u64, *w);
        }
        let _ = i32t;
        self.send_by_fib(fib, ingress, data);
        // No next hop here (or too big: the stack answers the client):
        // the stack forwards it.
        b.ret(XDP_PASS);
        b.at(drop);
        b.ret(XDP_DROP);
    }

}

/// The start of the `tc:egress` program of a policy with `nat` pools: a
/// reply whose 5-tuple a `nat` recorded (the pool's `nat_map`) gets the
/// VIP and port back as its source, with the kernel's checksum helpers
/// (which know a checksum the device will finish, `CHECKSUM_PARTIAL`;
/// a UDP checksum of 0 stays 0). Reads the frame itself, before the
/// policy's parser: untagged IPv4 (not a fragment) or IPv6 (no extension
/// header), TCP or UDP. Leaves the builder where the program goes on.
pub fn reverse_nat<'ctx>(b: &Bpf<'_, 'ctx>, pools: &[PoolMaps<'ctx>]) {
    const TC_PULL: u64 = 128;
    let ctx = b.ctx();
    let i32t = b.m.cx.i32_type();
    let done = b.block("nat_back_done");
    // The headers in the linear part.
    let skb_len = b.zext64(b.load_raw(ctx, 0, 4));
    let skb_bounds = || (b.int_to_ptr(b.zext64(b.load_raw(ctx, 76, 4))), b.int_to_ptr(b.zext64(b.load_raw(ctx, 80, 4))));
    let (data, end) = skb_bounds();
    let linear = b.sub(b.ptr_to_int(end), b.ptr_to_int(data));
    let want = b.select(b.cmp(IntPredicate::ULT, skb_len, b.c64(TC_PULL)), skb_len, b.c64(TC_PULL));
    let pull = b.block("nat_back_pull");
    let pulled = b.block("nat_back_pulled");
    b.cond_br(b.cmp(IntPredicate::ULT, linear, want), pull, pulled);
    b.at(pull);
    b.helper_call(helper::SKB_PULL_DATA, b.i64(), &[ctx.into(), want.into()]);
    b.br(pulled);
    b.at(pulled);
    let (data, end) = skb_bounds();
    let eth = b.block("nat_back_eth");
    b.cond_br_likely(b.fits(data, 14, end), eth, done);
    b.at(eth);
    let ethertype = b.load_raw(data, 12, 2);
    let v4 = b.block("nat_back_v4");
    let not_v4 = b.block("nat_back_not_v4");
    let v6 = b.block("nat_back_v6");
    b.cond_br(b.eq(ethertype, b.c16(0x0008)), v4, not_v4);
    b.at(not_v4);
    b.cond_br(b.eq(ethertype, b.c16(0xdd86)), v6, done);
    for family_v6 in [false, true] {
        b.at(if family_v6 { v6 } else { v4 });
        let family: Vec<&PoolMaps<'ctx>> = pools.iter().filter(|p| p.v6 == family_v6).collect();
        if family.is_empty() {
            b.br(done);
            continue;
        }
        let ip = b.pkt_ptr(data, b.c64(14));
        let header = b.block("nat_back_ip");
        b.cond_br_likely(b.fits(ip, if family_v6 { 40 } else { 20 }, end), header, done);
        b.at(header);
        let (l4_off, proto, usable) = if family_v6 {
            let proto = b.load_be(ip, 6, 1);
            (b.c64(54), proto, b.eq(b.lshr(b.load_be(ip, 0, 1), b.c64(4)), b.c64(6)))
        } else {
            let first = b.load_be(ip, 0, 1);
            let ihl = b.and(first, b.c64(0xf));
            let whole = b.eq(b.and(b.load_be(ip, 6, 2), b.c64(0x3fff)), b.c64(0));
            let ok = b.and(b.and(b.eq(b.lshr(first, b.c64(4)), b.c64(4)), b.cmp(IntPredicate::UGE, ihl, b.c64(5))), whole);
            (b.add(b.c64(14), b.mul(ihl, b.c64(4))), b.load_be(ip, 9, 1), ok)
        };
        let tcp = b.eq(proto, b.c64(6));
        let l4_proto = b.or(tcp, b.eq(proto, b.c64(17)));
        let l4 = b.pkt_ptr(data, b.and(l4_off, b.c64(MAX_QUOTE_OFFSET)));
        let has_l4 = b.select(tcp, b.fits(l4, 18, end), b.fits(l4, 8, end));
        let translatable = b.block("nat_back_l4");
        b.cond_br(b.and(b.and(usable, l4_proto), has_l4), translatable, done);
        b.at(translatable);
        let (src_at, words) = if family_v6 { (8u64, 4u64) } else { (12, 1) };
        let key = b.stack_buf(FLOW_KEY_BYTES, "nat_back_key");
        let mut old_src = Vec::new();
        for i in 0..words {
            let w = b.load_raw(ip, src_at + 4 * i, 4);
            old_src.push(w);
            b.store_at(key, 4 * i, w);
            b.store_at(key, 16 + 4 * i, b.load_raw(ip, src_at + 4 * words + 4 * i, 4));
        }
        let old_port = b.load_raw(l4, 0, 2);
        b.store_at(key, 32, old_port);
        b.store_at(key, 34, b.load_raw(l4, 2, 2));
        b.store_at(key, 36, b.trunc(proto, b.m.i8()));
        b.store_at(key, 37, b.c8(if family_v6 { 6 } else { 4 }));
        // Offsets from the frame's start, for the helpers (which move the
        // packet: every value is read before them).
        let l4_at = b.and(l4_off, b.c64(MAX_QUOTE_OFFSET));
        let csum_at = b.add(l4_at, b.select(tcp, b.c64(16), b.c64(6)));
        let l4_flags = b.select(tcp, b.c64(0), b.c64(BPF_F_MARK_MANGLED_0));
        for pool in family {
            let Some(nat) = pool.nat else { continue };
            let back = b.map_lookup(nat, key);
            let found = b.block("nat_back_found");
            let next = b.block("nat_back_next");
            b.br_if_null(back, next, found);
            b.at(found);
            for (i, old) in old_src.iter().enumerate() {
                let new = b.load_raw(back, 4 * i as u64, 4);
                b.helper_call(helper::L4_CSUM_REPLACE, b.i64(), &[ctx.into(), csum_at.into(), b.zext64(*old).into(), b.zext64(new).into(), b.or(l4_flags, b.c64(BPF_F_PSEUDO_HDR | 4)).into()]);
                if !family_v6 {
                    b.helper_call(helper::L3_CSUM_REPLACE, b.i64(), &[ctx.into(), b.c64(24).into(), b.zext64(*old).into(), b.zext64(new).into(), b.c64(4).into()]);
                }
            }
            let new_port = b.load_raw(back, 16, 2);
            b.helper_call(helper::L4_CSUM_REPLACE, b.i64(), &[ctx.into(), csum_at.into(), b.zext64(old_port).into(), b.zext64(new_port).into(), b.or(l4_flags, b.c64(2)).into()]);
            let src_off = 14 + src_at;
            b.helper_call(helper::SKB_STORE_BYTES, b.i64(), &[ctx.into(), b.c64(src_off).into(), back.into(), b.c64(4 * words).into(), b.c64(0).into()]);
            let port_ptr = b.ptr_add(back, b.c64(16));
            b.helper_call(helper::SKB_STORE_BYTES, b.i64(), &[ctx.into(), l4_at.into(), port_ptr.into(), b.c64(2).into(), b.c64(0).into()]);
            b.br(done);
            b.at(next);
        }
        b.br(done);
    }
    let _ = i32t;
    b.at(done);
}
