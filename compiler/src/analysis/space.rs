//! The packet space: every packet the parser can see, as a product of
//! per-dimension interval sets (header space analysis, Kazemian et al.,
//! NSDI 2012; Batfish's `BDD`-free "cubes"). A [`Cube`] is one such
//! product; a [`Space`] a union of cubes.
//!
//! The dimensions are not the fields: they are the independent facts the
//! parser finds, chosen so that every field is a function of them (see
//! `predicate.rs`). Which headers a packet carries are dimensions of their
//! own ([`Dim::L2`], [`Dim::L3`], [`Dim::L4`], `PROTO == ABSENT`), so that
//! "field absent" is a region like any other. A dimension that a packet's
//! class does not use (the ports of a UDP-less packet) is left free: every
//! predicate region constrains it only together with the class that
//! carries it, so a free dimension never changes what a region means.
//!
//! What a product cannot say is checked when a packet is made from a cube
//! (`example.rs`): lengths must leave room for the headers the class
//! carries (`pkt.len` at least the headers', `ip.len` at least the IP and
//! L4 headers'). A cube is *feasible* when some packet lies in it.

use smallvec::SmallVec;
use std::fmt;

/// The dimensions, class dimensions first (subtraction splits on them
/// first, so that pieces stay within one class).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// 0: shorter than an Ethernet header; 1: Ethernet.
    L2 = 0,
    /// 0: no IP header; 4 or 6.
    L3,
    /// [`L4_NONE`], [`L4_TCP`], [`L4_UDP`], [`L4_ICMP`] (ICMP over IPv4, ICMPv6 over IPv6).
    L4,
    /// VLAN tags: 0 to 3.
    VlanDepth,
    /// The upper-layer protocol, or [`PROTO_ABSENT`] (an IPv6 chain not walked to its end).
    Proto,
    /// 1: a fragment.
    Frag,
    /// Fragment offset in 8-byte units.
    FragOff8,
    /// IPv6: the fixed header's next header when it is an extension
    /// header; [`NEXTHDR_IS_PROTO`] when it is the upper layer itself.
    NextHdr,
    Len,
    EthSrc,
    EthDst,
    EthType,
    Vlan1Id,
    Vlan1Pcp,
    Vlan2Id,
    Vlan2Pcp,
    /// IPv4 addresses as 32-bit integers, IPv6 as 128-bit.
    Src,
    Dst,
    Ttl,
    IpLen,
    Dscp,
    Ecn,
    Ihl,
    Id,
    Df,
    Flow,
    Sport,
    Dport,
    TcpFlags,
    Window,
    UdpLen,
    IcmpType,
    IcmpCode,
}

pub const NDIMS: usize = 33;

impl Dim {
    pub const ALL: [Dim; NDIMS] = [
        Dim::L2,
        Dim::L3,
        Dim::L4,
        Dim::VlanDepth,
        Dim::Proto,
        Dim::Frag,
        Dim::FragOff8,
        Dim::NextHdr,
        Dim::Len,
        Dim::EthSrc,
        Dim::EthDst,
        Dim::EthType,
        Dim::Vlan1Id,
        Dim::Vlan1Pcp,
        Dim::Vlan2Id,
        Dim::Vlan2Pcp,
        Dim::Src,
        Dim::Dst,
        Dim::Ttl,
        Dim::IpLen,
        Dim::Dscp,
        Dim::Ecn,
        Dim::Ihl,
        Dim::Id,
        Dim::Df,
        Dim::Flow,
        Dim::Sport,
        Dim::Dport,
        Dim::TcpFlags,
        Dim::Window,
        Dim::UdpLen,
        Dim::IcmpType,
        Dim::IcmpCode,
    ];

    /// The largest value of the dimension (the smallest is 0).
    pub fn max(self) -> u128 {
        match self {
            Dim::L2 | Dim::Frag | Dim::Df => 1,
            Dim::L3 => 6,
            Dim::L4 | Dim::VlanDepth | Dim::Ecn => 3,
            Dim::Proto | Dim::NextHdr => 256,
            Dim::FragOff8 => 0x1fff,
            Dim::Len => u32::MAX as u128,
            Dim::EthSrc | Dim::EthDst => (1 << 48) - 1,
            Dim::EthType | Dim::Id | Dim::Sport | Dim::Dport | Dim::Window | Dim::UdpLen => 0xffff,
            Dim::Vlan1Id | Dim::Vlan2Id => 4095,
            Dim::Vlan1Pcp | Dim::Vlan2Pcp => 7,
            Dim::Src | Dim::Dst => u128::MAX,
            Dim::Ttl | Dim::TcpFlags | Dim::IcmpType | Dim::IcmpCode => 0xff,
            Dim::IpLen => 0xffff + 40,
            Dim::Dscp => 63,
            Dim::Ihl => 15,
            Dim::Flow => (1 << 20) - 1,
        }
    }
}

pub const L4_NONE: u128 = 0;
pub const L4_TCP: u128 = 1;
pub const L4_UDP: u128 = 2;
pub const L4_ICMP: u128 = 3;
pub const PROTO_ABSENT: u128 = 256;
pub const NEXTHDR_IS_PROTO: u128 = 256;
/// The IPv6 extension headers the parser walks.
pub const IPV6_EXT: [u128; 5] = [0, 43, 44, 51, 60];

/// A set of values of one dimension: sorted, disjoint, non-adjacent
/// inclusive intervals.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Set(pub SmallVec<[(u128, u128); 1]>);

impl Set {
    pub fn empty() -> Set {
        Set(SmallVec::new())
    }

    pub fn range(lo: u128, hi: u128) -> Set {
        let mut s = Set::empty();
        if lo <= hi {
            s.0.push((lo, hi));
        }
        s
    }

    pub fn one(v: u128) -> Set {
        Set::range(v, v)
    }

    pub fn full(d: Dim) -> Set {
        Set::range(0, d.max())
    }

    /// From intervals in any order, overlapping or not.
    pub fn from_ranges(mut v: Vec<(u128, u128)>) -> Set {
        v.retain(|&(a, b)| a <= b);
        v.sort_unstable();
        let mut out: SmallVec<[(u128, u128); 1]> = SmallVec::new();
        for (a, b) in v {
            match out.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        Set(out)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn first(&self) -> Option<u128> {
        self.0.first().map(|r| r.0)
    }

    pub fn contains(&self, v: u128) -> bool {
        self.0.iter().any(|&(a, b)| a <= v && v <= b)
    }

    /// The number of values, saturating.
    pub fn count(&self) -> u128 {
        self.0.iter().fold(0u128, |n, &(a, b)| n.saturating_add(b - a).saturating_add(1))
    }

    pub fn intersect(&self, o: &Set) -> Set {
        let mut out = SmallVec::new();
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() && j < o.0.len() {
            let (a, b) = self.0[i];
            let (c, d) = o.0[j];
            let lo = a.max(c);
            let hi = b.min(d);
            if lo <= hi {
                out.push((lo, hi));
            }
            if b < d {
                i += 1;
            } else {
                j += 1;
            }
        }
        Set(out)
    }

    pub fn intersects(&self, o: &Set) -> bool {
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() && j < o.0.len() {
            let (a, b) = self.0[i];
            let (c, d) = o.0[j];
            if a.max(c) <= b.min(d) {
                return true;
            }
            if b < d {
                i += 1;
            } else {
                j += 1;
            }
        }
        false
    }

    pub fn is_subset(&self, o: &Set) -> bool {
        self.0.iter().all(|&(a, b)| o.0.iter().any(|&(c, d)| c <= a && b <= d))
    }

    pub fn union(&self, o: &Set) -> Set {
        let mut v: Vec<(u128, u128)> = self.0.to_vec();
        v.extend_from_slice(&o.0);
        Set::from_ranges(v)
    }

    pub fn minus(&self, o: &Set) -> Set {
        let mut out = SmallVec::new();
        for &(a, b) in &self.0 {
            let mut lo = a;
            let mut done = false;
            for &(c, d) in &o.0 {
                if d < lo || c > b {
                    continue;
                }
                if c > lo {
                    out.push((lo, c - 1));
                }
                if d >= b {
                    done = true;
                    break;
                }
                lo = d + 1;
            }
            if !done {
                out.push((lo, b));
            }
        }
        Set(out)
    }

    /// The smallest value at least `v`.
    pub fn at_least(&self, v: u128) -> Option<u128> {
        self.0.iter().find(|&&(_, b)| b >= v).map(|&(a, _)| a.max(v))
    }
}

/// A product of one [`Set`] per dimension.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cube(pub [Set; NDIMS]);

impl fmt::Debug for Cube {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for d in Dim::ALL {
            if self.get(d) != &Set::full(d) {
                m.entry(&d, &self.get(d).0);
            }
        }
        m.finish()
    }
}

impl Cube {
    /// Every value of every dimension.
    pub fn full() -> Cube {
        Cube(Dim::ALL.map(Set::full))
    }

    pub fn get(&self, d: Dim) -> &Set {
        &self.0[d as usize]
    }

    pub fn with(mut self, d: Dim, s: Set) -> Cube {
        self.0[d as usize] = s;
        self
    }

    pub fn set(&mut self, d: Dim, s: Set) {
        self.0[d as usize] = s;
    }

    /// Narrows dimension `d` to `s` (intersecting).
    pub fn narrow(mut self, d: Dim, s: &Set) -> Option<Cube> {
        let n = self.get(d).intersect(s);
        if n.is_empty() {
            return None;
        }
        self.0[d as usize] = n;
        Some(self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().any(Set::is_empty)
    }

    pub fn intersects(&self, o: &Cube) -> bool {
        self.0.iter().zip(o.0.iter()).all(|(a, b)| a.intersects(b))
    }

    pub fn intersect(&self, o: &Cube) -> Option<Cube> {
        if !self.intersects(o) {
            return None;
        }
        let mut out = self.clone();
        for (i, s) in out.0.iter_mut().enumerate() {
            if *s != o.0[i] {
                *s = s.intersect(&o.0[i]);
            }
        }
        Some(out)
    }

    pub fn is_subset(&self, o: &Cube) -> bool {
        self.0.iter().zip(o.0.iter()).all(|(a, b)| a == b || a.is_subset(b))
    }

    /// `self \ o` as disjoint cubes: dimension by dimension, the part of
    /// `self` outside `o` there and inside it on the dimensions before.
    pub fn minus(&self, o: &Cube, out: &mut Vec<Cube>) {
        if !self.intersects(o) {
            out.push(self.clone());
            return;
        }
        let mut rest = self.clone();
        for i in 0..NDIMS {
            if rest.0[i] == o.0[i] || rest.0[i].is_subset(&o.0[i]) {
                continue;
            }
            let outside = rest.0[i].minus(&o.0[i]);
            if !outside.is_empty() {
                let mut piece = rest.clone();
                piece.0[i] = outside;
                out.push(piece);
            }
            rest.0[i] = rest.0[i].intersect(&o.0[i]);
        }
    }

    /// The one dimension where two cubes differ, if they differ in one.
    fn differs_in_one(&self, o: &Cube) -> Option<Option<usize>> {
        let mut at = None;
        for i in 0..NDIMS {
            if self.0[i] != o.0[i] {
                if at.is_some() {
                    return None;
                }
                at = Some(i);
            }
        }
        Some(at)
    }
}

impl Space {
    /// Cubes equal but in one dimension merged into one, found by hashing
    /// the other dimensions: linear in the cubes per pass, so that long
    /// lists shrink before the quadratic merges.
    pub fn coalesce_by_key(&mut self) {
        loop {
            let before = self.0.len();
            for d in 0..NDIMS {
                let mut groups: std::collections::HashMap<Cube, usize> = std::collections::HashMap::with_capacity(self.0.len());
                let mut out: Vec<Cube> = Vec::with_capacity(self.0.len());
                for c in self.0.drain(..) {
                    let mut key = c.clone();
                    key.0[d] = Set::empty();
                    match groups.get(&key) {
                        Some(&i) => {
                            let u = out[i].0[d].union(&c.0[d]);
                            out[i].0[d] = u;
                        }
                        None => {
                            groups.insert(key, out.len());
                            out.push(c);
                        }
                    }
                }
                self.0 = out;
            }
            if self.0.len() == before {
                break;
            }
        }
    }
}

/// A union of cubes, disjoint unless said otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Space(pub Vec<Cube>);

impl Space {
    pub fn empty() -> Space {
        Space(Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn intersects_cube(&self, c: &Cube) -> bool {
        self.0.iter().any(|x| x.intersects(c))
    }

    pub fn intersects(&self, o: &Space) -> bool {
        self.0.iter().any(|c| o.intersects_cube(c))
    }

    pub fn intersect(&self, o: &Space) -> Space {
        let mut out = Vec::new();
        for a in &self.0 {
            for b in &o.0 {
                if let Some(c) = a.intersect(b) {
                    out.push(c);
                }
            }
        }
        Space(out)
    }

    pub fn intersect_cube(&self, c: &Cube) -> Space {
        Space(self.0.iter().filter_map(|a| a.intersect(c)).collect())
    }

    pub fn minus(&self, o: &Space) -> Space {
        let mut cur = self.0.clone();
        for b in &o.0 {
            if !cur.iter().any(|a| a.intersects(b)) {
                continue;
            }
            let mut next = Vec::with_capacity(cur.len());
            for a in &cur {
                a.minus(b, &mut next);
            }
            cur = next;
        }
        Space(cur)
    }

    /// The union, disjoint when both are.
    pub fn union(&self, o: &Space) -> Space {
        if self.is_empty() {
            return o.clone();
        }
        let mut out = self.clone();
        out.0.extend(o.minus(self).0);
        out
    }

    /// The union of spaces known to be disjoint.
    pub fn extend_disjoint(&mut self, o: Space) {
        self.0.extend(o.0);
    }

    /// Fewer cubes for the same set: two cubes that differ in one
    /// dimension become one. Bounded: past `limit` cubes it stops.
    pub fn coalesce(&mut self, limit: usize) {
        self.coalesce_by_key();
        if self.0.len() > limit {
            return;
        }
        loop {
            let mut merged = false;
            'outer: for i in 0..self.0.len() {
                for j in i + 1..self.0.len() {
                    if let Some(at) = self.0[i].differs_in_one(&self.0[j]) {
                        if let Some(d) = at {
                            let u = self.0[i].0[d].union(&self.0[j].0[d]);
                            self.0[i].0[d] = u;
                        }
                        self.0.swap_remove(j);
                        merged = true;
                        break 'outer;
                    }
                }
            }
            if !merged {
                break;
            }
        }
    }
}

impl Space {
    /// [`Space::coalesce`], and then two cubes also become their hull when
    /// the hull holds no packet of `universe` outside them (the IPv6
    /// classes of one protocol, split by extension headers, become one).
    /// Bounded: past `limit` cubes only the first step runs.
    pub fn coalesce_in(&mut self, universe: &Space, limit: usize) {
        self.coalesce(limit);
        if self.0.len() > limit {
            return;
        }
        loop {
            let mut merged = false;
            'outer: for i in 0..self.0.len() {
                for j in i + 1..self.0.len() {
                    let (a, b) = (&self.0[i], &self.0[j]);
                    let mut hull = a.clone();
                    for d in 0..NDIMS {
                        if hull.0[d] != b.0[d] {
                            hull.0[d] = hull.0[d].union(&b.0[d]);
                        }
                    }
                    let extra = Space(vec![hull.clone()]).minus(&Space(vec![a.clone(), b.clone()]));
                    if extra.0.iter().all(|c| !universe.intersects_cube(c)) {
                        self.0[i] = hull;
                        self.0.swap_remove(j);
                        merged = true;
                        break 'outer;
                    }
                }
            }
            if !merged {
                break;
            }
        }
    }
}

/// Every packet the parser can see, as disjoint class cubes
/// (docs/language.md, "Parsing"; `reference::parse`).
pub fn universe() -> Space {
    let base = Cube::full();
    let mut out = Vec::new();
    let tags = Set::from_ranges(vec![(0x8100, 0x8100), (0x88a8, 0x88a8)]);
    let none = |c: Cube| c.with(Dim::L4, Set::one(L4_NONE));
    // Shorter than an Ethernet header.
    out.push(none(base.clone().with(Dim::L2, Set::one(0)).with(Dim::L3, Set::one(0)).with(Dim::Len, Set::range(0, 13))));
    let eth = base.clone().with(Dim::L2, Set::one(1)).with(Dim::Len, Set::range(14, Dim::Len.max()));
    // Ethernet without IP: any EtherType up to two tags (a tag there is
    // one cut short), a tag at the third.
    out.push(none(eth.clone().with(Dim::L3, Set::one(0)).with(Dim::VlanDepth, Set::range(0, 2))));
    out.push(none(eth.clone().with(Dim::L3, Set::one(0)).with(Dim::VlanDepth, Set::one(3)).with(Dim::EthType, tags)));
    let not_frag = |c: Cube| c.with(Dim::Frag, Set::one(0)).with(Dim::FragOff8, Set::one(0));
    let frag = |c: Cube| c.with(Dim::Frag, Set::one(1));
    let first = |c: Cube| c.with(Dim::FragOff8, Set::one(0));
    // IPv4: the protocol always known.
    let v4 = eth
        .clone()
        .with(Dim::L3, Set::one(4))
        .with(Dim::VlanDepth, Set::range(0, 2))
        .with(Dim::EthType, Set::one(0x0800))
        .with(Dim::Src, Set::range(0, u32::MAX as u128))
        .with(Dim::Dst, Set::range(0, u32::MAX as u128))
        .with(Dim::IpLen, Set::range(20, 0xffff))
        .with(Dim::Ihl, Set::range(5, 15))
        .with(Dim::Proto, Set::range(0, 255));
    out.push(not_frag(none(v4.clone())));
    out.push(frag(none(v4.clone())));
    for (l4, proto) in [(L4_TCP, 6), (L4_UDP, 17), (L4_ICMP, 1)] {
        out.push(first(v4.clone().with(Dim::L4, Set::one(l4)).with(Dim::Proto, Set::one(proto))));
    }
    // IPv6.
    let v6 = eth
        .with(Dim::L3, Set::one(6))
        .with(Dim::VlanDepth, Set::range(0, 2))
        .with(Dim::EthType, Set::one(0x86dd))
        .with(Dim::IpLen, Set::range(40, 0xffff + 40));
    let ext = Set::from_ranges(IPV6_EXT.iter().map(|&e| (e, e)).collect());
    let upper = Set::range(0, 255).minus(&ext);
    let v6p = v6.clone().with(Dim::Proto, upper);
    let l4s = [(L4_TCP, 6), (L4_UDP, 17), (L4_ICMP, 58)];
    // The fixed header's next header is the upper layer.
    let direct = not_frag(v6p.clone().with(Dim::NextHdr, Set::one(NEXTHDR_IS_PROTO)));
    out.push(none(direct.clone()));
    for (l4, proto) in l4s {
        out.push(direct.clone().with(Dim::L4, Set::one(l4)).with(Dim::Proto, Set::one(proto)));
    }
    // A fragment header first.
    let fh = frag(v6p.clone().with(Dim::NextHdr, Set::one(44)));
    out.push(none(fh.clone()));
    for (l4, proto) in l4s {
        out.push(first(fh.clone().with(Dim::L4, Set::one(l4)).with(Dim::Proto, Set::one(proto))));
    }
    // Another extension header first (a fragment header may follow).
    let other = v6p.with(Dim::NextHdr, Set::from_ranges(vec![(0, 0), (43, 43), (51, 51), (60, 60)]));
    out.push(not_frag(none(other.clone())));
    out.push(frag(none(other.clone())));
    for (l4, proto) in l4s {
        out.push(first(other.clone().with(Dim::L4, Set::one(l4)).with(Dim::Proto, Set::one(proto))));
    }
    // A chain not walked to its end: no protocol, no fragment facts.
    out.push(none(v6.with(Dim::NextHdr, ext).with(Dim::Proto, Set::one(PROTO_ABSENT))));
    Space(out)
}

/// IPv4 or IPv6 prefixes covering an interval exactly.
pub fn prefixes(lo: u128, hi: u128, bits: u32) -> Vec<(u128, u32)> {
    prefixes_at_most(lo, hi, bits, usize::MAX)
}

/// [`prefixes`], the first `cap` of them.
pub fn prefixes_at_most(lo: u128, hi: u128, bits: u32, cap: usize) -> Vec<(u128, u32)> {
    // The last address of the block of 2^s addresses at `lo` (aligned).
    let end = |lo: u128, s: u32| if s >= 128 { u128::MAX } else { lo | ((1u128 << s) - 1) };
    let mut out = Vec::new();
    let mut lo = lo;
    loop {
        let mut s = if lo == 0 { bits } else { lo.trailing_zeros().min(bits) };
        while s > 0 && end(lo, s) > hi {
            s -= 1;
        }
        out.push((lo, bits - s));
        if out.len() >= cap {
            break;
        }
        let e = end(lo, s);
        if e >= hi {
            break;
        }
        lo = e + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_subtract_and_intersect() {
        let a = Set::range(0, 100);
        let b = Set::from_ranges(vec![(10, 20), (50, 60)]);
        assert_eq!(a.minus(&b).0.to_vec(), vec![(0, 9), (21, 49), (61, 100)]);
        assert_eq!(a.intersect(&b), b);
        assert!(b.is_subset(&a));
        assert_eq!(Set::range(0, 5).minus(&Set::range(0, 5)), Set::empty());
    }

    #[test]
    fn cube_minus_is_exact_and_disjoint() {
        let a = Cube::full().with(Dim::Sport, Set::range(0, 100)).with(Dim::Dport, Set::range(0, 100));
        let b = Cube::full().with(Dim::Sport, Set::range(50, 150)).with(Dim::Dport, Set::range(20, 30));
        let mut out = Vec::new();
        a.minus(&b, &mut out);
        let count = |c: &Cube| c.get(Dim::Sport).count() * c.get(Dim::Dport).count();
        let total: u128 = out.iter().map(count).sum();
        assert_eq!(total, 101 * 101 - 51 * 11);
        assert!(out.iter().all(|c| !c.intersects(&b)));
    }

    #[test]
    fn prefixes_cover_intervals() {
        assert_eq!(prefixes(0, u32::MAX as u128, 32), vec![(0, 0)]);
        assert_eq!(prefixes(10, 10, 32), vec![(10, 32)]);
        assert_eq!(prefixes(0, 127, 32), vec![(0, 25)]);
        assert_eq!(prefixes(1, 2, 32), vec![(1, 32), (2, 32)]);
        assert_eq!(prefixes(0, u128::MAX, 128), vec![(0, 0)]);
    }

    #[test]
    fn universe_is_disjoint() {
        let u = universe();
        for (i, a) in u.0.iter().enumerate() {
            for b in &u.0[i + 1..] {
                assert!(!a.intersects(b), "{a:?} {b:?}");
            }
        }
    }
}
