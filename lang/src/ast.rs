//! The syntax tree of one `.xpol` file, exactly as written: names are not yet
//! resolved and nothing is type-checked. Every node carries the [`Span`] of
//! the text it came from.

use crate::span::Span;
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Include(Include),
    Set(SetDecl),
    Map(MapDecl),
    Conntrack(ConntrackDecl),
    Pool(PoolDecl),
    Const(ConstDecl),
    Probe(Probe),
    Test(TestBlock),
}

/// `test "NAME" [on HOOK] { PACKET => VERDICT ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct TestBlock {
    pub name: StrLit,
    /// `on HOOK`: the program the cases run through (default: the
    /// policy's first hook, in the order xdp, tc:ingress, tc:egress).
    pub hook: Option<(Hook, Span)>,
    pub cases: Vec<TestCase>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TestCase {
    /// `on HOOK` before the packet: the program this case runs through
    /// (else the block's).
    pub hook: Option<(Hook, Span)>,
    pub packet: PacketDesc,
    /// `pass`, `drop`, `tx`, `abort`, `redirect` or `lb`.
    pub expect: Ident,
    /// `=> lb(POOL)` or `=> lb(POOL, ADDR)` (then `expect` is `lb`).
    pub lb: Option<LbExpect>,
    /// `by LINE`: the rule on that line of the file must decide.
    pub decided_by: Option<(u32, Span)>,
    /// `, @map[KEYS] == VALUE`: map entries after the packet.
    pub maps: Vec<MapExpect>,
    /// `, log`, `, log("PREFIX")`, `, !log`: what the packet logs.
    pub logs: Vec<LogExpect>,
    /// `after D` (one or more) written before the case: nanoseconds the
    /// clock moves on before the packet, and the span of the first.
    pub after: Option<(u64, Span)>,
    pub span: Span,
}

/// `=> lb(POOL, ADDR)` in a test case: the packet is balanced to a
/// backend of the pool (to `ADDR`, when given).
#[derive(Clone, Debug, PartialEq)]
pub struct LbExpect {
    pub pool: Ident,
    pub backend: Option<Expr>,
}

/// `log`, `log("PREFIX")` or `!log` in a test case: the packet is logged
/// (by a `log` with that prefix), or not at all.
#[derive(Clone, Debug, PartialEq)]
pub struct LogExpect {
    /// False for `!log`.
    pub logged: bool,
    pub prefix: Option<StrLit>,
    pub span: Span,
}

/// `@seen[198.18.0.1] == 1` in a test case: the entry's value after the
/// packet (0 for a missing entry), in the kernel and in the reference.
#[derive(Clone, Debug, PartialEq)]
pub struct MapExpect {
    pub map: Ident,
    pub keys: Vec<Expr>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PacketDesc {
    /// `hex("0200...")`
    Hex(StrLit),
    /// `tcp(src: 198.18.0.1, dport: 22)`
    Fields { kind: Ident, args: Vec<(Ident, Expr)> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A string literal, unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrLit {
    pub value: String,
    pub span: Span,
}

/// `include "std/bogons.xpol"`
#[derive(Clone, Debug, PartialEq)]
pub struct Include {
    pub path: StrLit,
    pub span: Span,
}

/// `set NAME: TYPE = { elements }` or `set NAME: TYPE = file("path")`.
/// A named set becomes a BPF map whose contents the runtime may replace.
#[derive(Clone, Debug, PartialEq)]
pub struct SetDecl {
    pub name: Ident,
    /// The element type as written: `cidr`, `ip`, `int`, `port`, `mac`.
    pub ty: Ident,
    /// `max N`: the most elements the set may hold when the runtime changes
    /// it (a range `a..b` counts b-a+1), and the span of `max N`.
    pub max: Option<(u64, Span)>,
    pub init: SetInit,
    pub span: Span,
    /// `dynamic [max N] [timeout D]`: a set the packet path writes
    /// (`add(...)`, `delete(...)`), empty at load; `init` is then empty.
    pub dynamic: Option<DynamicSet>,
}

/// The options of a dynamic set after `dynamic`.
#[derive(Clone, Debug, PartialEq)]
pub struct DynamicSet {
    /// `timeout D`: how long an element added without its own `timeout:`
    /// stays, in seconds, and the span of `timeout D`.
    pub timeout: Option<(u64, Span)>,
    /// `= { ... }` or `= file(...)` after it: an error (a dynamic set
    /// starts empty).
    pub init: Option<Span>,
    /// `dynamic` and its options.
    pub span: Span,
}

/// `add(...)` or `delete(...)` of a dynamic set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetOp {
    Add,
    Delete,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SetInit {
    /// `{ a, b, c..d }`; the span covers the braces.
    Elements { elements: Vec<Expr>, span: Span },
    /// `file("blocklist.txt")`: one element per line, `#` comments, path relative to the policy file.
    File(StrLit),
    /// A `file(...)` the loader has read: its elements (spans in the file).
    Read { path: StrLit, elements: Vec<Expr> },
}

/// `map @NAME max N`: the most entries `@NAME` holds (its BPF map's
/// `max_entries`). The map itself is declared by its uses; this only sizes
/// it.
#[derive(Clone, Debug, PartialEq)]
pub struct MapDecl {
    /// The name without `@`; its span covers the name only.
    pub map: Ident,
    /// `N`, and the span of `max N`.
    pub max: (u64, Span),
    pub span: Span,
}

/// `conntrack flows N`: options of the connection table `ct.state`
/// reads (docs/conntrack.md). The checker knows the option words.
#[derive(Clone, Debug, PartialEq)]
pub struct ConntrackDecl {
    /// The options as written, in order: the word and its value, and the
    /// span of both.
    pub options: Vec<(Ident, u64, Span)>,
    pub span: Span,
}

/// `pool NAME [table N] [flows N] [idle D] [max N] = { ADDR [weight W], ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct PoolDecl {
    pub name: Ident,
    /// `default pool ...`: see [`ConstDecl::default`].
    pub default: Option<Span>,
    /// The options as written, in order.
    pub options: Vec<PoolOption>,
    pub backends: Vec<BackendDecl>,
    /// The braces.
    pub body: Span,
    pub span: Span,
}

/// `table 251`, `flows 100000`, `idle 30s`, `max 16`: the option word
/// and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolOption {
    pub word: Ident,
    pub value: u64,
    /// For a time (`30s`): the value is in seconds, the unit as written.
    pub unit: Option<char>,
    /// The word and its value.
    pub span: Span,
}

/// One backend of a pool: `198.18.1.10 weight 2`.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendDecl {
    pub addr: Expr,
    /// `weight W` and its span.
    pub weight: Option<(u64, Span)>,
    pub span: Span,
}

/// `[default] const NAME = expr`
#[derive(Clone, Debug, PartialEq)]
pub struct ConstDecl {
    pub name: Ident,
    /// `default`: the declaration holds unless the policy declares the
    /// name without `default` (an included file's parameter).
    pub default: Option<Span>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::Xdp, Hook::TcIngress, Hook::TcEgress];

    /// The spelling in source: `xdp`, `tc:ingress`, `tc:egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::TcIngress => "tc:ingress",
            Hook::TcEgress => "tc:egress",
        }
    }
}

/// `HOOK /predicate/ { statements }`
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// `rule "NAME"` before the hook: the rule's identity across versions
    /// of the policy (checked by the compiler: unique, a limited charset).
    pub label: Option<StrLit>,
    pub hook: Hook,
    pub hook_span: Span,
    pub predicate: Option<Expr>,
    pub body: Block,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Pass,
    Drop,
    Tx,
    Abort,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
            Verdict::Tx => "tx",
            Verdict::Abort => "abort",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    /// `pass`, `drop`, `tx`, `abort`
    Verdict(Verdict),
    /// `redirect(eth1)` or `redirect("eth0.100")`
    Redirect(StrLit),
    /// `if (cond) { ... } else if (cond) { ... } else { ... }`; `else if` is an
    /// `else` block holding a single `If` statement.
    If { cond: Expr, then_block: Block, else_block: Option<Block> },
    /// `let NAME = expr`
    Let { name: Ident, value: Expr },
    /// `lb(POOL, name: value, name, ...)`: balance over a pool. The options
    /// are checked by the checker.
    Lb { pool: Ident, args: Vec<LbArg> },
    /// `@map[k1, k2] = value`; `keys` is empty for `@map = value`. The value is
    /// an ordinary expression; the aggregations `count()` and `sum(e)` are
    /// [`ExprKind::Call`]s that the checker accepts only here.
    MapAssign { map: Ident, keys: Vec<Expr>, value: Expr },
    /// `log`, `log("PREFIX", rate: 10/s, burst: 5)`: a record of the
    /// packet. The arguments as written; the checker checks them.
    Log(Vec<LogArg>),
    /// `add(SET, KEY, timeout: 10m)`, `delete(SET, KEY)`: write a dynamic
    /// set. `option` is the one option as written (name, value in
    /// seconds, span); the checker knows `timeout`.
    SetWrite { op: SetOp, set: Ident, key: Expr, option: Option<(Ident, u64, Span)> },
    /// `synproxy(mss: 1460, wscale: 7, sack, timestamps)`: SYN cookies in
    /// XDP; the options as written (`lb`'s shape), checked by the checker.
    Synproxy(Vec<LbArg>),
}

/// One argument of `log(...)`: the prefix, or an option.
#[derive(Clone, Debug, PartialEq)]
pub enum LogArg {
    Prefix(StrLit),
    Option { name: Ident, value: LogValue, span: Span },
}

/// The value of a `log` option: `rate: 10/s`, `burst: 5 packets`,
/// `burst: 5`.
#[derive(Clone, Debug, PartialEq)]
pub enum LogValue {
    Rate(Rate),
    Amount { count: u64, unit: Ident, span: Span },
    Expr(Expr),
}

/// One option of `lb(...)`: `encap: ipip`, `port: 6080`, `nat`.
#[derive(Clone, Debug, PartialEq)]
pub struct LbArg {
    pub name: Ident,
    pub value: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// Decimal or `0x` hexadecimal.
    Int(u64),
    Bool(bool),
    /// `198.51.100.7`, `2001:db8::1`
    Ip(IpAddr),
    /// `198.51.100.0/24`, `2001:db8::/32`. The parser keeps host bits as
    /// written; the checker reports them.
    Cidr(IpAddr, u8),
    /// `02:00:00:00:00:01`
    Mac([u8; 6]),
    /// `lo..hi`, both ends included.
    Range(Box<Expr>, Box<Expr>),
    /// `{ e1, e2, ... }` in expression position.
    SetLit(Vec<Expr>),
    /// A dotted name: `ip.src`, `tcp.dport`, or a single name (a const, a
    /// `let`, a set). Resolution is the checker's job.
    Path(Vec<Ident>),
    /// `@name[k1, k2]` or `@name` read as a value.
    MapRead { map: Ident, keys: Vec<Expr> },
    Unary { op: UnOp, operand: Box<Expr> },
    Binary { op: BinOp, lhs: Box<Expr>, rhs: Box<Expr> },
    /// `count()`, `sum(e)`, and any other `name(args)` (rejected by the checker).
    Call { func: Ident, args: Vec<Expr> },
    /// `limit(100/s, burst: 20, by: ip.src)`: true while the packet fits in
    /// the rate. The checker checks the units and options.
    Limit(Box<Limit>),
}

/// `limit(RATE, name: value, ...)` as written.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    pub rate: Rate,
    pub args: Vec<LimitArg>,
}

/// `100/s`, `10 mbytes/s`: a count, a unit (none: packets) and a period.
#[derive(Clone, Debug, PartialEq)]
pub struct Rate {
    pub count: u64,
    pub unit: Option<Ident>,
    pub per: Ident,
    pub span: Span,
}

/// One option of `limit(...)`: `burst: 20`, `by: (ip.src, tcp.dport)`.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitArg {
    pub name: Ident,
    pub value: LimitValue,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LimitValue {
    Expr(Expr),
    /// `(a, b, ...)`: two or more expressions; the span covers the brackets.
    Tuple(Vec<Expr>, Span),
    /// `64 kbytes`, `20 packets`: a count and its unit.
    Amount { count: u64, unit: Ident, span: Span },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    /// `!`
    Not,
    /// `-`
    Neg,
    /// `~`
    BitNot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    BitAnd,
    BitOr,
    BitXor,
    Shl,
    Shr,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    And,
    Or,
}

impl BinOp {
    pub fn as_str(self) -> &'static str {
        use BinOp::*;
        match self {
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            Mod => "%",
            BitAnd => "&",
            BitOr => "|",
            BitXor => "^",
            Shl => "<<",
            Shr => ">>",
            Eq => "==",
            Ne => "!=",
            Lt => "<",
            Le => "<=",
            Gt => ">",
            Ge => ">=",
            In => "in",
            NotIn => "!in",
            And => "&&",
            Or => "||",
        }
    }
}
