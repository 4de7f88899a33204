//! The policy IR: what the checker produces and codegen consumes.
//!
//! Compared with the AST, names are resolved (fields are [`Field`]s, consts
//! are folded into [`Value`]s, sets and maps are indices), every expression
//! has a [`Type`], and probes are grouped into one [`Program`] per hook in
//! source order. Spans are kept on every rule, statement and expression.
//!
//! `Display` prints a stable text form used by `xpolc build --emit ir` and
//! by the golden tests.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use xpol_lang::ast::{Hook, Verdict};
use xpol_lang::meta::SetElem;
use xpol_lang::{Diagnostic, Span};

pub use crate::check::fields::Field;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    Bool,
    Int,
    Ip,
    Mac,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Bool => "bool",
            Type::Int => "int",
            Type::Ip => "ip",
            Type::Mac => "mac",
        })
    }
}

/// A compile-time constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    Bool(bool),
    Int(u64),
    Ip(IpAddr),
    /// MAC as the integer whose low 6 bytes, big-endian, are the address.
    Mac(u64),
}

impl Value {
    pub fn ty(self) -> Type {
        match self {
            Value::Bool(_) => Type::Bool,
            Value::Int(_) => Type::Int,
            Value::Ip(_) => Type::Ip,
            Value::Mac(_) => Type::Mac,
        }
    }
}

pub fn mac_to_u64(mac: [u8; 6]) -> u64 {
    mac.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64)
}

/// `format!("{a}/{len}")` without the formatting machinery, a quarter of
/// the time: a set of a million prefixes writes a million of these into
/// the object's metadata.
fn v4_text(a: Ipv4Addr, len: u8) -> String {
    fn push_u8(s: &mut String, v: u8) {
        if v >= 100 {
            s.push(char::from(b'0' + v / 100));
        }
        if v >= 10 {
            s.push(char::from(b'0' + v / 10 % 10));
        }
        s.push(char::from(b'0' + v % 10));
    }
    let mut s = String::with_capacity(18);
    for (i, &o) in a.octets().iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        push_u8(&mut s, o);
    }
    s.push('/');
    push_u8(&mut s, len);
    s
}

pub fn fmt_mac(v: u64) -> String {
    let b = v.to_be_bytes();
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[2], b[3], b[4], b[5], b[6], b[7])
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Ip(ip) => write!(f, "{ip}"),
            Value::Mac(m) => f.write_str(&fmt_mac(*m)),
        }
    }
}

/// A set known at compile time, normalised: prefixes have no host bits and
/// are sorted; integer ranges are sorted, merged and non-overlapping.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConstSet {
    pub v4: Vec<(Ipv4Addr, u8)>,
    pub v6: Vec<(Ipv6Addr, u8)>,
    /// Inclusive ranges.
    pub ints: Vec<(u64, u64)>,
    pub macs: Vec<u64>,
}

impl ConstSet {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len() + self.ints.len() + self.macs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements as a set's capacity counts them: a range `a..b` is b-a+1,
    /// a prefix or a MAC one.
    pub fn element_count(&self) -> u64 {
        let ints = self.ints.iter().fold(0u64, |n, &(lo, hi)| n.saturating_add((hi - lo).saturating_add(1)));
        (self.v4.len() + self.v6.len() + self.macs.len()) as u64 + ints
    }

    /// Canonical text forms of the elements (the object metadata format).
    pub fn elements(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.len());
        out.extend(self.element_texts());
        out
    }

    /// [`ConstSet::elements`], one at a time.
    fn element_texts(&self) -> impl Iterator<Item = String> + '_ {
        self.v4
            .iter()
            .map(|&(a, l)| v4_text(a, l))
            .chain(self.v6.iter().map(|(a, l)| format!("{a}/{l}")))
            .chain(self.ints.iter().map(|&(lo, hi)| if lo == hi { format!("{lo}") } else { format!("{lo}..{hi}") }))
            .chain(self.macs.iter().map(|&m| fmt_mac(m)))
    }
}

impl fmt::Display for ConstSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the elements shown are formatted: the analysis describes
        // sets of a million prefixes too.
        let n = self.len();
        if n > 8 {
            write!(f, "{{{}, ... {n} elements}}", self.element_texts().take(4).collect::<Vec<_>>().join(", "))
        } else {
            write!(f, "{{{}}}", self.element_texts().collect::<Vec<_>>().join(", "))
        }
    }
}

pub type SetId = usize;
pub type MapId = usize;
pub type LocalId = usize;
pub type RuleId = u32;

/// How a named set is stored in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedSet {
    pub name: String,
    pub elem: SetElem,
    pub contents: ConstSet,
    /// Declared with `set` (the runtime may change it) rather than created by
    /// the compiler for a large constant set.
    pub mutable: bool,
    /// `max N` as declared (checked: at least the initial elements, at
    /// least 1); `None` leaves the capacity to codegen's default.
    pub capacity: Option<u64>,
    pub span: Span,
    /// The path of `file(...)` when the elements were read from a file.
    pub file: Option<Span>,
}

/// IPv6 extension headers walked before giving up on finding the L4
/// header: the packet parser codegen emits and the reference semantics
/// both stop there (here, not in `codegen`, so the reference builds
/// without LLVM).
pub const MAX_IPV6_EXT: usize = 8;

/// Entries of a `@map` with keys and no `map @NAME max N`, as in bpftrace.
pub const DEFAULT_MAP_ENTRIES: u32 = 10_240;

/// The largest `max N` a `@map` may declare. Hash maps are preallocated
/// when the policy loads: about 100 bytes an entry (the kernel's element
/// header, the key up to 60 bytes, the value, a bucket), plus 8 bytes an
/// entry for every CPU in a per-CPU map (one the policy only writes). At
/// this limit that is about 100 MiB, plus 8 MiB per CPU.
pub const MAX_MAP_ENTRIES: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserMap {
    pub name: String,
    pub value: xpol_lang::meta::MapValueKind,
    pub keys: Vec<Type>,
    /// Read somewhere in the policy: then it must be a shared (not per-CPU) map.
    pub read: bool,
    /// `map @NAME max N` as declared (checked: 1 to [`MAX_MAP_ENTRIES`],
    /// and the map has keys).
    pub capacity: Option<u32>,
    pub span: Span,
}

impl UserMap {
    /// The most entries the map holds: as declared, else
    /// [`DEFAULT_MAP_ENTRIES`]; a map without keys has its one entry. An
    /// update that would add an entry to a full map is lost (and counted).
    pub fn entries(&self) -> u32 {
        match self.capacity {
            Some(n) => n,
            None if self.keys.is_empty() => 1,
            None => DEFAULT_MAP_ENTRIES,
        }
    }
}

pub type PoolId = usize;

/// A `pool` of backends for `lb(...)`: one family, distinct addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub v6: bool,
    pub backends: Vec<Backend>,
    /// Slots of the Maglev table (prime; `table N`).
    pub table_size: u32,
    /// Backends the pool can hold (`max N`): room for `xpol pool add`.
    pub max_backends: u32,
    /// Entries of the flow table (`flows N`).
    pub flows: u32,
    /// Seconds a flow that is not TCP keeps its backend without packets
    /// (`idle D`).
    pub idle_secs: u32,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: IpAddr,
    pub weight: u32,
}

/// Backends a pool can hold without `max N`.
pub const DEFAULT_POOL_BACKENDS: u32 = 256;
/// The largest `max N` of a pool.
pub const MAX_POOL_BACKENDS: u64 = 4096;
/// Flow-table entries without `flows N`.
pub const DEFAULT_POOL_FLOWS: u32 = 65_536;
/// The largest `flows N`: an LRU hash preallocates its entries, about 150
/// bytes each (key 40, value 8, the kernel's element header and buckets),
/// so 2^24 entries take some 2.5 GiB.
pub const MAX_POOL_FLOWS: u64 = 1 << 24;
/// The largest weight: the table gives each backend a share of its slots
/// in proportion, so weights beyond the table size say nothing more; and
/// the runtime keeps it in 16 bits of the backend's map value
/// (`meta::BACKEND_WEIGHT_SHIFT`).
pub const MAX_BACKEND_WEIGHT: u64 = xpol_lang::meta::MAX_BACKEND_WEIGHT as u64;

/// How an `lb` sends the packet to its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    /// IP in IP: IPv4 (protocol 4) or IPv6 (41) inside an outer header of
    /// the pool's family.
    Ipip,
    /// GUE (variant 1, direct IP) in UDP to this port.
    Gue { port: u16 },
}

/// What the flow hash reads (`by:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowHash {
    /// Addresses, ports and protocol (the default).
    FiveTuple,
    /// `by: ip.src`: source affinity.
    Source,
    /// `by: ports`: the ports and protocol.
    Ports,
}

/// The outer source address of an encapsulated packet (`src:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OuterSource {
    /// One address for every flow.
    Fixed(IpAddr),
    /// An address of the prefix per flow: its host bits (the last 32 at
    /// most) from the flow hash, so that backends spread flows over their
    /// receive queues.
    PerFlow(IpAddr, u8),
}

/// How `lb` delivers a packet to its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Encapsulated (direct server return: the backend answers the client).
    Encap { encap: Encap, src: OuterSource },
    /// `nat`: the destination address (and port, when given) rewritten to
    /// the backend's; replies are translated back on the way out (TC
    /// egress of the same policy).
    Nat { port: Option<u16> },
}

/// `lb(POOL, ...)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    pub pool: PoolId,
    pub delivery: Delivery,
    pub hash: FlowHash,
}

pub type LimitId = usize;

/// What a `limit` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitUnit {
    Packets,
    Bytes,
}

/// A `limit(RATE, burst: B, by: KEYS, size: N)`: a token bucket per key
/// (docs/language.md, "Rate limits"). Each occurrence in the source is its
/// own limit, with its own buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The rule it is written in.
    pub rule: RuleId,
    /// `rate` units (packets or bytes) every `period_ns` nanoseconds.
    pub rate: u64,
    pub period_ns: u64,
    pub unit: LimitUnit,
    /// The most units the bucket holds (`burst:`, checked: at least 1).
    pub burst: u64,
    /// The types of the key's components (`by:`); none: one bucket.
    pub keys: Vec<Type>,
    /// Buckets the LRU map holds when keyed (`size:`).
    pub size: u32,
    /// The `limit(...)` as written, on one line.
    pub text: String,
    pub span: Span,
}

pub type DynSetId = usize;

/// A set declared `dynamic` (docs/language.md, "Dynamic sets"): written by
/// the packet path with `add(...)` and `delete(...)`, read with `in`; an
/// element lives until its time is up. In the kernel an LRU hash of `size`
/// entries (`meta::DynSetMeta`): when it is full, an add evicts the entry
/// used least recently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynSet {
    pub name: String,
    /// What it holds: `Ip` (either family), `Int` (`int` and `port`) or `Mac`.
    pub key: Type,
    /// The element type as declared (`ip`, `int`, `port`, `mac`).
    pub elem: String,
    /// Elements it holds (`max N`).
    pub size: u32,
    /// `timeout D`: how long an element added without its own `timeout:`
    /// stays, in nanoseconds; `None`: until deleted (or evicted).
    pub timeout_ns: Option<u64>,
    pub span: Span,
}

/// Elements of a dynamic set without `max N`.
pub const DEFAULT_DYNSET_SIZE: u32 = 65_536;
/// The largest `max N` of a dynamic set: an LRU hash preallocates its
/// entries, about 100 bytes each for an address key, so 2^24 take some
/// 1.6 GiB.
pub const MAX_DYNSET_SIZE: u64 = 1 << 24;

/// What `add(...)`/`delete(...)` does to its dynamic set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetWrite {
    /// Adds the key, or moves an element's end on: it lives this many
    /// nanoseconds from now (`None`: until deleted).
    Add { timeout_ns: Option<u64> },
    Delete,
}

pub type LogId = usize;

/// A `log("PREFIX", rate: R, burst: B)` statement (docs/language.md,
/// "Logging"): a record of the packet to the policy's ring buffer. Each
/// occurrence in the source is its own, with its own rate's bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    /// The rule it is written in.
    pub rule: RuleId,
    /// `""` without a prefix.
    pub prefix: String,
    /// `rate:`: the unkeyed [`Limit`] a packet must fit in to be logged
    /// (its own, in [`Policy::limits`]); `None`: every packet is.
    pub limit: Option<LimitId>,
    /// What the rule does after the `log` (one of
    /// `xpol_lang::meta::LOG_VERDICTS`): its verdict, `mixed` when an `if`
    /// after it decides, `none` when evaluation goes on.
    pub verdict: &'static str,
    /// The statement as written, on one line.
    pub text: String,
    pub span: Span,
}

/// The most bytes of a `log` prefix.
pub const MAX_LOG_PREFIX: usize = 64;

/// Buckets of a keyed `limit` without `size:`.
pub const DEFAULT_LIMIT_SIZE: u32 = 65_536;
/// The largest `size:` of a `limit`: an LRU hash preallocates its entries,
/// about 100 bytes each for an address key, so 2^24 take some 1.6 GiB.
pub const MAX_LIMIT_SIZE: u64 = 1 << 24;
/// `burst:` of a packet rate that does not say, as nftables' `limit`.
pub const DEFAULT_LIMIT_BURST_PACKETS: u64 = 5;

/// A connection state, as `ct.state` reads it (docs/conntrack.md). The
/// field is an integer holding [`CtState::number`]; rules compare it with
/// the states' names only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtState {
    New,
    Established,
    Related,
    Invalid,
}

impl CtState {
    pub const ALL: [CtState; 4] = [CtState::New, CtState::Established, CtState::Related, CtState::Invalid];

    /// The name as written in policies.
    pub fn name(self) -> &'static str {
        match self {
            CtState::New => "new",
            CtState::Established => "established",
            CtState::Related => "related",
            CtState::Invalid => "invalid",
        }
    }

    /// The value `ct.state` holds.
    pub fn number(self) -> u64 {
        self as u64
    }

    pub fn by_name(name: &str) -> Option<CtState> {
        CtState::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// How long a connection's entry lives after the last packet that moved
/// it, by the state that packet left it in, in nanoseconds: nf_conntrack's
/// defaults (docs/conntrack.md, "Timeouts").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    pub tcp_syn_sent: u64,
    pub tcp_syn_recv: u64,
    pub tcp_established: u64,
    pub tcp_fin_wait: u64,
    pub tcp_time_wait: u64,
    pub tcp_close: u64,
    pub udp_unreplied: u64,
    pub udp_replied: u64,
    pub icmp: u64,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        const S: u64 = 1_000_000_000;
        CtTimeouts {
            tcp_syn_sent: 120 * S,
            tcp_syn_recv: 60 * S,
            tcp_established: 5 * 86_400 * S,
            tcp_fin_wait: 120 * S,
            tcp_time_wait: 120 * S,
            tcp_close: 10 * S,
            udp_unreplied: 30 * S,
            udp_replied: 120 * S,
            icmp: 30 * S,
        }
    }
}

/// The connection table `ct.state` reads: there when a rule reads it
/// (docs/conntrack.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conntrack {
    /// Entries of the LRU table (`conntrack flows N`).
    pub flows: u32,
    /// The programs that record connections, with the packets they pass:
    /// the first of `xdp` and `tc:ingress` (what comes in), and
    /// `tc:egress` (what goes out). The checker gives the policy those
    /// programs. A `tc:ingress` program after an `xdp` one reads the table
    /// only.
    pub trackers: Vec<Hook>,
    pub timeouts: CtTimeouts,
    /// The first `ct.state` a rule reads.
    pub span: Span,
}

/// Entries of the connection table without `conntrack flows N`.
pub const DEFAULT_CT_FLOWS: u32 = 65_536;
/// The largest `conntrack flows N`: an LRU hash preallocates its entries,
/// about 150 bytes each (key 40, value 16, the kernel's element header and
/// buckets), so 2^24 take some 2.5 GiB.
pub const MAX_CT_FLOWS: u64 = 1 << 24;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expr {
    pub kind: ExprKind,
    pub ty: Type,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    /// The operator of `b OP' a` for `a OP b`.
    pub fn flipped(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            op => op,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetRef {
    Named(SetId),
    /// A dynamic set: its elements whose time is not up.
    Dynamic(DynSetId),
    /// Small constant sets are compared inline.
    Inline(ConstSet),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExprKind {
    Const(Value),
    Field(Field),
    Local(LocalId),
    /// Reads 0 for a missing key.
    MapRead { map: MapId, keys: Vec<Expr> },
    Neg(Box<Expr>),
    BitNot(Box<Expr>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// Membership of an int, ip or mac in a set.
    In(Box<Expr>, SetRef),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    /// `limit(...)` number `limit` with its key's components (none when
    /// unkeyed): true when the packet fits in the bucket of its key, and
    /// then takes its cost from it; unknown when a component is absent.
    /// Only in a condition, through `&&`, `||` and `!` (checked), where
    /// evaluation stops once the outcome is decided.
    Limit { limit: LimitId, keys: Vec<Expr> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    Count,
    Sum(Expr),
    Assign(Expr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StmtKind {
    Verdict(Verdict),
    /// Index into [`Policy::redirects`].
    Redirect(usize),
    If { cond: Expr, then_body: Vec<Stmt>, else_body: Vec<Stmt> },
    Let { local: LocalId, value: Expr },
    MapUpdate { map: MapId, keys: Vec<Expr>, op: MapOp },
    /// Balance over a pool; ends evaluation like a verdict.
    Lb(Balance),
    /// Writes a record of the packet (index into [`Policy::logs`]); the
    /// verdict stays whatever follows.
    Log(LogId),
    /// `add(...)` or `delete(...)` of a dynamic set; with an absent key
    /// component, nothing.
    SetWrite { set: DynSetId, key: Expr, op: SetWrite },
    /// Answers a SYN with a SYN cookie, passes an ACK carrying a valid one,
    /// drops the rest (index into [`Policy::synproxies`]); ends evaluation
    /// like a verdict. XDP only.
    Synproxy(SynproxyId),
}

pub type SynproxyId = usize;

/// `synproxy(mss: 1460, wscale: 7, sack, timestamps)`: the SYN-ACK's
/// options (docs/language.md, "SYN proxy"), and the TCP destination ports
/// the rule's predicate names, which the host's netfilter side is scoped
/// to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Synproxy {
    pub rule: RuleId,
    pub mss: u16,
    pub wscale: u8,
    pub sack: bool,
    pub timestamps: bool,
    /// Inclusive ranges.
    pub ports: Vec<(u16, u16)>,
    pub text: String,
    pub span: Span,
}

impl Synproxy {
    /// What it does, with every option resolved: two that print alike
    /// answer alike, however they were written.
    pub fn canonical(&self) -> String {
        format!("synproxy(mss: {}, wscale: {}, sack: {}, timestamps: {})", self.mss, self.wscale, self.sack, self.timestamps)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub rule: RuleId,
    pub predicate: Option<Expr>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub hook: Hook,
    pub probes: Vec<Probe>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: RuleId,
    pub hook: Hook,
    /// The probe header (hook and predicate).
    pub span: Span,
    /// The header text on one line: hook and predicate, without the label.
    pub text: String,
    /// `rule "NAME"`: the rule's identity, when labelled.
    pub label: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Local {
    pub name: String,
    pub ty: Type,
}

/// What a program decides for a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Drop,
    Tx,
    Abort,
    Redirect,
    /// Balanced to a backend (`lb`): sent on encapsulated (`XDP_TX`, a
    /// redirect, or up the stack when the kernel must find the next hop).
    Lb,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Drop => "drop",
            Outcome::Tx => "tx",
            Outcome::Abort => "abort",
            Outcome::Redirect => "redirect",
            Outcome::Lb => "lb",
        }
    }
}

/// One case of a `test` block: a packet and the outcome it must get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCase {
    /// The name of its `test` block.
    pub test: String,
    /// `on HOOK`; else the policy's first hook.
    pub hook: Option<Hook>,
    pub packet: xpol_lang::testspec::TestPacket,
    pub expect: Outcome,
    /// The rule that must decide (`by LINE`).
    pub decided_by: Option<RuleId>,
    /// Map entries the packet must leave behind (`, @m[k] == v`).
    pub maps: Vec<MapExpect>,
    /// `=> lb(POOL, ADDR)`: the pool, and the backend when named.
    pub lb: Option<(PoolId, Option<IpAddr>)>,
    /// `after D` before the case: nanoseconds the clock moves on first.
    pub after_ns: u64,
    /// `, log`, `, log("PREFIX")`, `, !log`: what the packet must log.
    pub logs: Vec<LogExpect>,
    pub span: Span,
}

/// `log`, `log("PREFIX")` (the packet is logged, by a `log` with that
/// prefix), `!log` (it logs nothing) or `!log("PREFIX")` (nothing with
/// that prefix) in a test case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogExpect {
    pub logged: bool,
    pub prefix: Option<String>,
    pub span: Span,
}

/// A map entry's value after a test packet (0: no entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapExpect {
    pub map: MapId,
    pub keys: Vec<Value>,
    pub value: u64,
    pub span: Span,
}

/// An interface `redirect` names, and the first statement that does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectTarget {
    pub ifname: String,
    /// The name in the first `redirect(...)` naming it.
    pub span: Span,
}

/// A checked policy, ready for codegen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub programs: Vec<Program>,
    pub rules: Vec<Rule>,
    pub sets: Vec<NamedSet>,
    pub maps: Vec<UserMap>,
    pub locals: Vec<Local>,
    /// The interfaces `redirect` names, each once, in order of first use:
    /// slot `i` of the redirect map holds the ifindex of `redirects[i]`.
    pub redirects: Vec<RedirectTarget>,
    pub pools: Vec<Pool>,
    /// The pools `lb(..., nat)` balances over, in order: the `tc:egress`
    /// program translates their replies back first.
    pub nat_pools: Vec<PoolId>,
    /// Every `limit(...)` and the rate of every `log(..., rate: R)`, in
    /// source order.
    pub limits: Vec<Limit>,
    /// The connection table, when a rule reads `ct.state`.
    pub conntrack: Option<Conntrack>,
    /// Every `log` statement, in source order.
    pub logs: Vec<Log>,
    /// The sets declared `dynamic`, in source order.
    pub dynsets: Vec<DynSet>,
    /// Every `synproxy(...)`, in source order.
    pub synproxies: Vec<Synproxy>,
    /// The cases of its `test` blocks, in order.
    pub tests: Vec<TestCase>,
    pub warnings: Vec<Diagnostic>,
}

// ---------------------------------------------------------------- printing

struct Printer<'a> {
    policy: &'a Policy,
}

impl Printer<'_> {
    fn expr(&self, e: &Expr) -> String {
        match &e.kind {
            ExprKind::Const(v) => v.to_string(),
            ExprKind::Field(f) => f.name().to_string(),
            ExprKind::Local(l) => format!("${}", self.policy.locals[*l].name),
            ExprKind::MapRead { map, keys } => format!("@{}{}", self.policy.maps[*map].name, self.keys(keys)),
            ExprKind::Neg(a) => format!("-{}", self.expr(a)),
            ExprKind::BitNot(a) => format!("~{}", self.expr(a)),
            ExprKind::Arith(op, a, b) => format!("({} {} {})", self.expr(a), arith_str(*op), self.expr(b)),
            ExprKind::Cmp(op, a, b) => match (&a.kind, &b.kind) {
                // A connection state by its name.
                (ExprKind::Field(Field::CtState), ExprKind::Const(Value::Int(n))) => format!("({} {} {})", self.expr(a), op.as_str(), ct_state_name(*n)),
                _ => format!("({} {} {})", self.expr(a), op.as_str(), self.expr(b)),
            },
            ExprKind::In(a, set) => match set {
                SetRef::Named(s) => format!("({} in set {})", self.expr(a), self.policy.sets[*s].name),
                SetRef::Dynamic(s) => format!("({} in dynamic set {})", self.expr(a), self.policy.dynsets[*s].name),
                SetRef::Inline(c) if a.kind == ExprKind::Field(Field::CtState) => {
                    let names: Vec<&str> = c.ints.iter().flat_map(|&(lo, hi)| lo..=hi).map(ct_state_name).collect();
                    format!("({} in {{{}}})", self.expr(a), names.join(", "))
                }
                SetRef::Inline(c) => format!("({} in {})", self.expr(a), c),
            },
            ExprKind::Not(a) => format!("!{}", self.expr(a)),
            ExprKind::And(a, b) => format!("({} && {})", self.expr(a), self.expr(b)),
            ExprKind::Or(a, b) => format!("({} || {})", self.expr(a), self.expr(b)),
            ExprKind::Limit { limit, keys } => {
                let by = if keys.is_empty() { String::new() } else { format!(" by {}", self.keys(keys)) };
                format!("limit#{limit}{by}")
            }
        }
    }

    fn keys(&self, keys: &[Expr]) -> String {
        if keys.is_empty() {
            String::new()
        } else {
            format!("[{}]", keys.iter().map(|k| self.expr(k)).collect::<Vec<_>>().join(", "))
        }
    }

    fn stmts(&self, out: &mut String, stmts: &[Stmt], indent: usize) {
        let pad = "  ".repeat(indent);
        for s in stmts {
            match &s.kind {
                StmtKind::Verdict(v) => out.push_str(&format!("{pad}{}\n", v.as_str())),
                StmtKind::Redirect(i) => out.push_str(&format!("{pad}redirect {:?}\n", self.policy.redirects[*i].ifname)),
                StmtKind::Let { local, value } => {
                    let l = &self.policy.locals[*local];
                    out.push_str(&format!("{pad}let ${}: {} = {}\n", l.name, l.ty, self.expr(value)))
                }
                StmtKind::MapUpdate { map, keys, op } => {
                    let rhs = match op {
                        MapOp::Count => "count()".to_string(),
                        MapOp::Sum(e) => format!("sum({})", self.expr(e)),
                        MapOp::Assign(e) => self.expr(e),
                    };
                    out.push_str(&format!("{pad}@{}{} = {rhs}\n", self.policy.maps[*map].name, self.keys(keys)))
                }
                StmtKind::Lb(lb) => out.push_str(&format!("{pad}{}\n", self.balance(lb))),
                StmtKind::Log(id) => out.push_str(&format!("{pad}log#{id}\n")),
                StmtKind::SetWrite { set, key, op } => {
                    let name = &self.policy.dynsets[*set].name;
                    match op {
                        SetWrite::Add { timeout_ns: Some(t) } => out.push_str(&format!("{pad}add({name}, {}, timeout: {}s)\n", self.expr(key), t / 1_000_000_000)),
                        SetWrite::Add { timeout_ns: None } => out.push_str(&format!("{pad}add({name}, {})\n", self.expr(key))),
                        SetWrite::Delete => out.push_str(&format!("{pad}delete({name}, {})\n", self.expr(key))),
                    }
                }
                StmtKind::Synproxy(id) => out.push_str(&format!("{pad}{}\n", self.policy.synproxies[*id].canonical())),
                StmtKind::If { cond, then_body, else_body } => {
                    out.push_str(&format!("{pad}if {} {{\n", self.expr(cond)));
                    self.stmts(out, then_body, indent + 1);
                    if !else_body.is_empty() {
                        out.push_str(&format!("{pad}}} else {{\n"));
                        self.stmts(out, else_body, indent + 1);
                    }
                    out.push_str(&format!("{pad}}}\n"));
                }
            }
        }
    }
}

impl Printer<'_> {
    fn balance(&self, lb: &Balance) -> String {
        let by = match lb.hash {
            FlowHash::FiveTuple => "5-tuple",
            FlowHash::Source => "ip.src",
            FlowHash::Ports => "ports",
        };
        let delivery = match lb.delivery {
            Delivery::Encap { encap, src } => {
                let encap = match encap {
                    Encap::Ipip => "ipip".to_string(),
                    Encap::Gue { port } => format!("gue, port: {port}"),
                };
                let src = match src {
                    OuterSource::Fixed(a) => a.to_string(),
                    OuterSource::PerFlow(a, l) => format!("{a}/{l} per flow"),
                };
                format!("encap: {encap}, src: {src}")
            }
            Delivery::Nat { port: None } => "nat".to_string(),
            Delivery::Nat { port: Some(p) } => format!("nat, port: {p}"),
        };
        format!("lb {}, {delivery}, by: {by}", self.policy.pools[lb.pool].name)
    }
}

/// The name of the connection state numbered `n` (`CtState::number`).
fn ct_state_name(n: u64) -> &'static str {
    CtState::ALL.into_iter().find(|s| s.number() == n).map_or("?", CtState::name)
}

fn arith_str(op: ArithOp) -> &'static str {
    match op {
        ArithOp::Add => "+",
        ArithOp::Sub => "-",
        ArithOp::Mul => "*",
        ArithOp::Div => "/",
        ArithOp::Mod => "%",
        ArithOp::And => "&",
        ArithOp::Or => "|",
        ArithOp::Xor => "^",
        ArithOp::Shl => "<<",
        ArithOp::Shr => ">>",
    }
}


impl Policy {
    /// An expression in the IR's text form, without spans: two expressions
    /// with the same text test the same thing.
    pub fn expr_text(&self, e: &Expr) -> String {
        Printer { policy: self }.expr(e)
    }

    /// A probe's body in the IR's text form, without spans.
    pub fn body_text(&self, body: &[Stmt]) -> String {
        let mut out = String::new();
        Printer { policy: self }.stmts(&mut out, body, 0);
        out
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = Printer { policy: self };
        let mut out = String::new();
        for s in &self.sets {
            let kind = if s.mutable { "set" } else { "const set" };
            let elem = match s.elem {
                SetElem::Cidr => "cidr",
                SetElem::Int => "int",
                SetElem::Mac => "mac",
            };
            let max = s.capacity.map(|n| format!(" max {n}")).unwrap_or_default();
            out.push_str(&format!("{kind} {}: {elem}{max} = {}\n", s.name, s.contents));
        }
        for d in &self.dynsets {
            let timeout = d.timeout_ns.map(|t| format!(" timeout {}s", t / 1_000_000_000)).unwrap_or_default();
            out.push_str(&format!("dynamic set {}: {} max {}{timeout}\n", d.name, d.key, d.size));
        }
        for pool in &self.pools {
            let backends: Vec<String> = pool.backends.iter().map(|b| format!("{} weight {}", b.addr, b.weight)).collect();
            out.push_str(&format!(
                "pool {}: {} table {} max {} flows {} idle {}s = {{{}}}\n",
                pool.name,
                if pool.v6 { "ipv6" } else { "ipv4" },
                pool.table_size,
                pool.max_backends,
                pool.flows,
                pool.idle_secs,
                backends.join(", ")
            ));
        }
        for (i, l) in self.limits.iter().enumerate() {
            let unit = match l.unit {
                LimitUnit::Packets => "packets",
                LimitUnit::Bytes => "bytes",
            };
            let keys: Vec<String> = l.keys.iter().map(|t| t.to_string()).collect();
            let by = if keys.is_empty() { "one bucket".to_string() } else { format!("by [{}], size {}", keys.join(", "), l.size) };
            out.push_str(&format!("limit#{i} rule {}: {} {unit} per {}ns, burst {}, {by}\n", l.rule, l.rate, l.period_ns, l.burst));
        }
        if let Some(ct) = &self.conntrack {
            let hooks: Vec<&str> = ct.trackers.iter().map(|h| h.as_str()).collect();
            out.push_str(&format!("conntrack flows {}, tracked on {}\n", ct.flows, hooks.join(", ")));
        }
        for (i, l) in self.logs.iter().enumerate() {
            let rate = l.limit.map(|id| format!(", rate limit#{id}")).unwrap_or_default();
            out.push_str(&format!("log#{i} rule {}: prefix {:?}{rate}, then {}\n", l.rule, l.prefix, l.verdict));
        }
        for m in &self.maps {
            let keys: Vec<String> = m.keys.iter().map(|t| t.to_string()).collect();
            let max = m.capacity.map(|n| format!(", max {n}")).unwrap_or_default();
            out.push_str(&format!("map @{}[{}]: {:?}{}{max}\n", m.name, keys.join(", "), m.value, if m.read { ", read" } else { "" }));
        }
        for prog in &self.programs {
            out.push_str(&format!("\nprogram {}:\n", prog.hook.as_str()));
            for probe in &prog.probes {
                let rule = &self.rules[probe.rule as usize];
                let pred = probe.predicate.as_ref().map(|e| p.expr(e)).unwrap_or_else(|| "true".into());
                let label = rule.label.as_ref().map(|l| format!(" \"{l}\"")).unwrap_or_default();
                out.push_str(&format!("  rule {}{label} `{}` when {}:\n", rule.id, rule.text, pred));
                p.stmts(&mut out, &probe.body, 2);
            }
            out.push_str("  (no rule decided) pass\n");
        }
        for t in &self.tests {
            let packet = match &t.packet {
                xpol_lang::testspec::TestPacket::Hex(b) => format!("hex({} bytes)", b.len()),
                xpol_lang::testspec::TestPacket::Fields { kind, args } => {
                    let args: Vec<String> = args.iter().map(|(n, v)| format!("{n}: {v:?}")).collect();
                    format!("{kind}({})", args.join(", "))
                }
            };
            let by = t.decided_by.map(|r| format!(" by rule {r}")).unwrap_or_default();
            let on = t.hook.map(|h| format!(" on {}", h.as_str())).unwrap_or_default();
            let expect = match t.lb {
                Some((pool, None)) => format!("lb({})", self.pools[pool].name),
                Some((pool, Some(addr))) => format!("lb({}, {addr})", self.pools[pool].name),
                None => t.expect.as_str().to_string(),
            };
            let after = if t.after_ns > 0 { format!("after {}ns, ", t.after_ns) } else { String::new() };
            out.push_str(&format!("\ntest {:?}{on}: {after}{packet} => {expect}{by}", t.test));
            for m in &t.maps {
                let keys: Vec<String> = m.keys.iter().map(|k| k.to_string()).collect();
                let keys = if keys.is_empty() { String::new() } else { format!("[{}]", keys.join(", ")) };
                out.push_str(&format!(", @{}{keys} == {}", self.maps[m.map].name, m.value));
            }
            for l in &t.logs {
                let not = if l.logged { "" } else { "!" };
                let prefix = l.prefix.as_ref().map(|p| format!("({p:?})")).unwrap_or_default();
                out.push_str(&format!(", {not}log{prefix}"));
            }
        }
        if !self.tests.is_empty() {
            out.push('\n');
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod v4_text_tests {
    use super::v4_text;
    use std::net::Ipv4Addr;

    #[test]
    fn writes_what_format_writes() {
        for o in 0..=255u8 {
            for (a, len) in [(Ipv4Addr::new(o, 0, 10, 255), o % 33), (Ipv4Addr::new(9, o, 99, 100), 32), (Ipv4Addr::new(255, 1, o, o), o)] {
                assert_eq!(v4_text(a, len), format!("{a}/{len}"));
            }
        }
    }
}
