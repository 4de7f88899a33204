//! The parser: pest grammar (`xpol.pest`) to [`ast::Policy`], with a span on
//! every node. Syntax errors become [`Diagnostic`]s in plain words.

use crate::ast::{self, BinOp, Block, Expr, ExprKind, Hook, Ident, Item, Probe, Stmt, StmtKind, StrLit, UnOp, Verdict};
use crate::recovery::{self, Expected};
use crate::{Diagnostic, FileId, Span};
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

#[derive(pest_derive::Parser)]
#[grammar = "xpol.pest"]
struct XpolParser;

/// Nesting deeper than this is refused before parsing: pest recurses per
/// level and would otherwise overflow the stack on hostile input.
const MAX_NESTING: usize = 200;

/// The deepest expression the parser accepts (`xpol::syntax::too_deep`),
/// in nodes from the top of an expression down to a leaf: a chain of 300
/// `||` is 300 deep. The passes after the parser (the checker, codegen, the
/// reference semantics) walk expressions recursively; at this depth they
/// stay within a 2 MiB thread stack in a debug build, with room to spare
/// (they overflowed at about 1,000).
pub const MAX_EXPR_DEPTH: usize = 256;

fn pratt() -> &'static PrattParser<Rule> {
    static PRATT: OnceLock<PrattParser<Rule>> = OnceLock::new();
    PRATT.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::or, Assoc::Left))
            .op(Op::infix(Rule::and, Assoc::Left))
            .op(Op::infix(Rule::eq, Assoc::Left)
                | Op::infix(Rule::ne, Assoc::Left)
                | Op::infix(Rule::lt, Assoc::Left)
                | Op::infix(Rule::le, Assoc::Left)
                | Op::infix(Rule::gt, Assoc::Left)
                | Op::infix(Rule::ge, Assoc::Left)
                | Op::infix(Rule::in_op, Assoc::Left)
                | Op::infix(Rule::not_in, Assoc::Left))
            .op(Op::infix(Rule::range, Assoc::Left))
            .op(Op::infix(Rule::bor, Assoc::Left))
            .op(Op::infix(Rule::bxor, Assoc::Left))
            .op(Op::infix(Rule::band, Assoc::Left))
            .op(Op::infix(Rule::shl, Assoc::Left) | Op::infix(Rule::shr, Assoc::Left))
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left) | Op::infix(Rule::div, Assoc::Left) | Op::infix(Rule::rem, Assoc::Left))
            .op(Op::prefix(Rule::not) | Op::prefix(Rule::neg) | Op::prefix(Rule::bnot))
    })
}

/// Parses one file. Reports every syntax error it can find (up to
/// [`MAX_SYNTAX_ERRORS`]): after one, parsing goes on at the next line that
/// starts a top-level item (`recovery::recovery_points`), the text of the
/// item that failed blanked out.
pub fn parse(text: &str, file: FileId) -> Result<ast::Policy, Vec<Diagnostic>> {
    if let Some(d) = check_nesting(text, file) {
        return Err(vec![d]);
    }
    // Found on the first error only: a file that parses needs none.
    let mut points = None;
    // The text parsed: `text` with the items that failed blanked out, every
    // byte offset (and line) unchanged.
    let mut work = std::borrow::Cow::Borrowed(text);
    let mut errors = Vec::new();
    loop {
        match XpolParser::parse(Rule::policy, &work) {
            Ok(mut pairs) => {
                let policy = pairs.next().expect("the grammar always yields a policy");
                let mut b = AstBuilder { file, errors: Vec::new() };
                let items = policy.into_inner().filter(|p| p.as_rule() != Rule::EOI).filter_map(|p| b.item(p)).collect();
                errors.extend(b.errors);
                if errors.is_empty() {
                    return Ok(ast::Policy { items });
                }
                break;
            }
            Err(e) => {
                let points = points.get_or_insert_with(|| recovery::recovery_points(text));
                let (d, failed) = syntax_error(e, file, text, points);
                errors.push(d);
                if errors.len() >= MAX_SYNTAX_ERRORS || !blank(work.to_mut(), failed) {
                    break;
                }
            }
        }
    }
    errors.sort_by_key(|d| d.primary_span().map(|s| (s.start, s.end)));
    Err(errors)
}

/// Syntax errors reported per file at most: past them, the rest of the file
/// is likely to be read wrong.
pub const MAX_SYNTAX_ERRORS: usize = 20;

/// Blanks `text[range]` out, keeping newlines and the byte length of every
/// character; false when there was nothing left to blank (no progress).
fn blank(text: &mut String, range: std::ops::Range<usize>) -> bool {
    let Some(part) = text.get(range.clone()) else { return false };
    if part.chars().all(char::is_whitespace) {
        return false;
    }
    let blanked: String = part.chars().flat_map(|c| std::iter::repeat_n(if c == '\n' { '\n' } else { ' ' }, if c == '\n' { 1 } else { c.len_utf8() })).collect();
    text.replace_range(range, &blanked);
    true
}

fn check_nesting(text: &str, file: FileId) -> Option<Diagnostic> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(
                        Diagnostic::error("xpol::syntax", format!("brackets are nested more than {MAX_NESTING} deep"))
                            .with_label(Span::new(file, i, i + 1), "too deep here"),
                    );
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// What a grammar rule is called in an error message.
fn describe(rule: &Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::item | Rule::include | Rule::set_decl | Rule::map_decl | Rule::map_word | Rule::const_decl | Rule::probe => "a declaration or a probe",
        Rule::test_block | Rule::test_on | Rule::test_case | Rule::hex_packet | Rule::packet_ctor | Rule::field_arg => "a test case such as `tcp(dport: 22) => drop`",
        Rule::expect => "an outcome (`pass`, `drop`, `tx`, `abort`, `redirect`, `lb(POOL)`)",
        Rule::decided_by => "`by LINE`",
        Rule::map_expect => "a map entry such as `@seen[198.18.0.1] == 1`",
        Rule::hook => "a hook (`xdp`, `tc:ingress`, `tc:egress`)",
        Rule::predicate => "a predicate `/.../`",
        Rule::block => "`{`",
        // `lb_word` also starts a test's `=> lb(POOL)`: `lb_stmt` and
        // `lb_expect` say which.
        Rule::stmt | Rule::verdict | Rule::redirect | Rule::if_stmt | Rule::let_stmt | Rule::map_assign | Rule::lb_stmt | Rule::log_stmt | Rule::set_stmt | Rule::synproxy_stmt | Rule::synproxy_word => {
            "a statement such as `pass`, `drop`, `log`, `if`, `let` or `@map[...] = count()`"
        }
        Rule::expr | Rule::pred_expr | Rule::paren | Rule::set_lit | Rule::map_read | Rule::call | Rule::path => "an expression",
        Rule::mac | Rule::ip4 | Rule::ip6 | Rule::cidr4 | Rule::cidr6 | Rule::hex_int | Rule::dec_int | Rule::boolean => "a value",
        Rule::prefix_len => "a prefix length",
        Rule::not | Rule::neg | Rule::bnot => "an expression",
        Rule::or | Rule::and | Rule::eq | Rule::ne | Rule::not_in | Rule::in_op | Rule::le | Rule::ge | Rule::shl | Rule::shr => "an operator",
        Rule::lt | Rule::gt | Rule::range | Rule::bor | Rule::bxor | Rule::band | Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::rem => {
            "an operator"
        }
        Rule::map_keys => "`[`",
        Rule::decl_map_name => "a map name such as `@seen`",
        Rule::string => "a string in double quotes",
        Rule::ifname => "an interface name",
        Rule::ident | Rule::name => "a name",
        Rule::set_file | Rule::set_body => "`{` or `file(\"...\")`",
        Rule::max_n | Rule::max_word => "`max N`",
        Rule::rule_label | Rule::rule_word => "`rule \"NAME\"`",
        Rule::conntrack_decl | Rule::conntrack_word => "`conntrack flows N`",
        Rule::ct_opt => "a `conntrack` option such as `flows 65536`",
        Rule::pool_decl | Rule::pool_word | Rule::pool_body => "a pool such as `pool web = { 198.18.1.10, 198.18.1.11 }`",
        Rule::pool_opt | Rule::pool_opt_word => "`table N`, `flows N`, `idle D` or `max N`",
        Rule::duration => "a time (`30s`, `5m`, `1h`)",
        Rule::backend => "a backend address",
        Rule::weight_word => "`weight N`",
        Rule::lb_arg => "an `lb` option such as `encap: ipip`",
        Rule::lb_expect => "`lb(POOL)` or `lb(POOL, ADDR)`",
        Rule::test_after | Rule::after_word => "`after D` or a test case",
        Rule::time_span => "a time (`100ms`, `1.5s`, `2m`)",
        Rule::limit_call | Rule::limit_word => "`limit(RATE, ...)`",
        Rule::rate => "a rate such as `100/s` or `10 mbytes/s`",
        Rule::rate_num => "a number",
        Rule::rate_unit => "a unit (`bytes`, `kbytes`, `mbytes`, `gbytes`) or a period (`s`, `m`, `h`)",
        Rule::limit_arg => "a `limit` option such as `burst: 20`, `by: ip.src` or `size: 65536`",
        Rule::limit_tuple => "a key such as `(ip.src, tcp.dport)`",
        Rule::amount => "an amount such as `64 kbytes`",
        Rule::log_arg | Rule::log_option => "a prefix such as `\"telnet: \"` or a `log` option such as `rate: 10/s`",
        // `log_word` also starts a statement: `log_stmt` and `log_expect`
        // say which.
        Rule::log_expect | Rule::log_not => "`log`, `log(\"PREFIX\")` or `!log`",
        Rule::else_part => "`else`",
        Rule::set_dynamic | Rule::dynamic_word => "`dynamic`",
        Rule::set_timeout | Rule::timeout_word => "`max N` or `timeout D`",
        Rule::set_op => "a statement such as `pass`, `drop`, `log`, `if`, `let` or `@map[...] = count()`",
        Rule::set_stmt_opt => "`timeout: D`",
        _ => return None,
    })
}

/// The diagnostic for a syntax error, and the text of the item that failed
/// (to blank out before parsing again). `points`: the recovery points.
fn syntax_error(e: pest::error::Error<Rule>, file: FileId, text: &str, points: &[usize]) -> (Diagnostic, std::ops::Range<usize>) {
    let (start, end) = match e.location {
        pest::error::InputLocation::Pos(p) => (p, p),
        pest::error::InputLocation::Span((s, e)) => (s, e),
    };
    let start = start.min(text.len());
    let positives: Vec<Rule> = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => positives.clone(),
        pest::error::ErrorVariant::CustomError { .. } => Vec::new(),
    };
    let expects = |rules: &[Rule]| positives.iter().any(|p| rules.contains(p));
    // Where pest stopped: at the start of an item (it tried the end of the
    // file there), or inside one.
    // (At the start of the file pest names nothing it expected.)
    let item_start = positives.contains(&Rule::EOI) || recovery::only_trivia_before(text, start);
    let next_point = points.iter().copied().find(|&p| p > start).unwrap_or(text.len());
    let at_end = recovery::only_trivia_after(text, start);
    if !item_start && (points.binary_search(&start).is_ok() || at_end) {
        // An item ran into the next one, or into the end of the file: the
        // item that failed is the one before, and an unclosed bracket in it
        // is the likely cause (the next item is not what it was waiting for).
        let from = points.iter().copied().rev().find(|&p| p < start).unwrap_or(0);
        let open = recovery::unclosed(text, from, start);
        if let Some(&(at, bracket)) = open.last() {
            return (unclosed_error(file, text, start, at_end, at, bracket, &open), from..start);
        }
        return (unexpected(file, text, start, end, &positives, false), from..start);
    }
    let failed = if item_start { start..next_point } else { points.iter().copied().rev().find(|&p| p <= start).unwrap_or(0)..next_point };
    if let Some(bad) = recovery::bad_literal(text, start) {
        let d = Diagnostic::error("xpol::syntax::literal", bad.message).with_label(Span::new(file, bad.span.start, bad.span.end), bad.label).with_help(bad.help);
        return (d, failed);
    }
    let mut d = unexpected(file, text, start, end, &positives, item_start);
    let expected = Expected {
        item: item_start,
        hook: expects(&[Rule::hook]),
        statement: expects(&[Rule::verdict, Rule::redirect, Rule::if_stmt, Rule::let_stmt, Rule::map_assign, Rule::lb_stmt, Rule::log_stmt, Rule::set_stmt]),
        outcome: expects(&[Rule::expect, Rule::lb_expect]),
        operator: expects(&[Rule::or, Rule::and, Rule::eq, Rule::ne, Rule::lt, Rule::le, Rule::gt, Rule::ge, Rule::in_op, Rule::not_in]),
    };
    for s in recovery::suggest(text, start, expected) {
        d = d.with_fix(Span::new(file, s.span.start, s.span.end), s.replacement, s.message, s.machine_applicable);
    }
    (d, failed)
}

/// "expected X, found Y" at `start`.
/// `item_start`: where an item starts (or the file ends).
fn unexpected(file: FileId, text: &str, start: usize, end: usize, positives: &[Rule], item_start: bool) -> Diagnostic {
    // Point at the token that is there (or the end of the file).
    let token_end = text[start..].char_indices().find(|(_, c)| c.is_whitespace()).map(|(i, _)| start + i).unwrap_or(text.len());
    let end = if end > start { end } else { token_end.max(start + text[start..].chars().next().map_or(0, char::len_utf8)) };
    // At most 20 characters of it, escaped: the file may be anything.
    let found = if start >= text.len() {
        "the end of the file".to_string()
    } else {
        format!("`{}`", crate::diagnostic::excerpt(text[start..end.min(text.len())].trim_end(), 20))
    };
    let mut expected: Vec<&str> = if item_start {
        // Between items: what an item starts with, rather than each kind.
        vec!["a rule (`xdp`, `tc:ingress`, `tc:egress`) or a declaration (`set`, `const`, `pool`, `map`, `conntrack`, `include`, `test`)"]
    } else {
        positives.iter().filter_map(describe).collect()
    };
    expected.sort();
    expected.dedup();
    let message = if expected.is_empty() {
        format!("unexpected {found}")
    } else {
        format!("expected {}, found {found}", expected.join(" or "))
    };
    let mut d = Diagnostic::error("xpol::syntax", message).with_label(Span::new(file, start, end.min(text.len())), "here");
    // Common slips, explained.
    let before = text[..start].trim_end();
    // (After the `/` of a rate, a unit was expected: not that slip.)
    let in_rate = positives.contains(&Rule::rate_unit);
    if !in_rate && (before.ends_with('/') || text[start..].starts_with('{') && text[..start].matches('/').count() % 2 == 1) {
        d = d.with_help("a predicate is written between slashes: `xdp /tcp.dport == 22/ { drop }`; inside it, write division in parentheses");
    }
    d
}

/// A bracket (at `at`) still open where the next item starts (`start`) or
/// the file ends: reported at the bracket, not where parsing noticed.
fn unclosed_error(file: FileId, text: &str, start: usize, at_end: bool, at: usize, bracket: char, open: &[(usize, char)]) -> Diagnostic {
    let close = recovery::closer(bracket);
    let closers: String = open.iter().rev().map(|&(_, c)| recovery::closer(c)).collect();
    let message = if at_end { format!("`{bracket}` is not closed by the end of the file") } else { format!("`{bracket}` is not closed") };
    let mut d = Diagnostic::error("xpol::syntax::unclosed", message).with_label(Span::new(file, at, at + 1), format!("this `{bracket}` has no `{close}`"));
    let (insert_at, replacement) = if at_end {
        (text.len(), if text.is_empty() || text.ends_with('\n') { format!("{closers}\n") } else { format!("\n{closers}\n") })
    } else {
        let word = text[start..].find(char::is_whitespace).map_or(text.len(), |i| start + i);
        d = d.with_label(Span::new(file, start, word), format!("the next item starts here, `{close}` expected before it"));
        (start, format!("{closers}\n"))
    };
    if open.len() > 1 {
        d = d.with_help(format!("{} brackets are open here; the innermost is shown", open.len()));
    }
    // Where the block was meant to end is a guess: for a person to choose.
    let place = if at_end { "at the end" } else { "before the next item" };
    d.with_fix(Span::new(file, insert_at, insert_at), replacement, format!("close it {place}: insert `{closers}`"), false)
}

struct AstBuilder {
    file: FileId,
    errors: Vec<Diagnostic>,
}

impl AstBuilder {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span::new(self.file, s.start(), s.end())
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident { name: p.as_str().to_string(), span: self.span(&p) }
    }

    fn string(&self, p: Pair<Rule>) -> StrLit {
        let span = self.span(&p);
        let body = p.into_inner().next().map(|b| b.as_str()).unwrap_or("");
        StrLit { value: body.replace("\\\"", "\"").replace("\\\\", "\\"), span }
    }

    /// `max N` of a set or map declaration, with the span of both words.
    fn max_n(&mut self, p: Pair<Rule>) -> Option<(u64, Span)> {
        let span = self.span(&p);
        let n = p.into_inner().find(|q| q.as_rule() == Rule::dec_int)?;
        match n.as_str().parse::<u64>() {
            Ok(v) => Some((v, span)),
            Err(_) => {
                let nspan = self.span(&n);
                self.literal_error::<()>(nspan, format!("the number {} does not fit in 64 bits", n.as_str()));
                None
            }
        }
    }

    /// A `duration` (`30s`, `10m`, `1h`) in seconds.
    fn seconds(&mut self, d: Pair<Rule>) -> Option<u64> {
        let text = d.as_str();
        let unit = text.chars().last()?;
        let scale = match unit {
            'h' => 3600,
            'm' => 60,
            _ => 1,
        };
        match text[..text.len() - 1].parse::<u64>().ok().and_then(|v| v.checked_mul(scale)) {
            Some(v) => Some(v),
            None => {
                let dspan = self.span(&d);
                self.literal_error::<()>(dspan, format!("the time {text} does not fit in 64 bits"));
                None
            }
        }
    }

    fn item(&mut self, p: Pair<Rule>) -> Option<Item> {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::include => {
                let path = self.string(p.into_inner().next()?);
                Some(Item::Include(ast::Include { path, span }))
            }
            Rule::set_decl => {
                let mut it = p.into_inner();
                let name = self.ident(it.next()?);
                let ty = self.ident(it.next()?);
                let mut init = it.next()?;
                if init.as_rule() == Rule::set_dynamic {
                    let dspan = self.span(&init);
                    let (mut max, mut timeout, mut given) = (None, None, None);
                    for o in init.into_inner() {
                        let again = (o.as_rule() == Rule::max_n && max.is_some()) || (o.as_rule() == Rule::set_timeout && timeout.is_some());
                        if again {
                            let ospan = self.span(&o);
                            self.errors.push(
                                Diagnostic::error("xpol::set::option", format!("`{}` is given twice", o.as_str().split_whitespace().next().unwrap_or("")))
                                    .with_label(ospan, "again here")
                                    .with_help("give each of `max N` and `timeout D` once"),
                            );
                            continue;
                        }
                        match o.as_rule() {
                            Rule::max_n => max = Some(self.max_n(o)?),
                            Rule::set_timeout => {
                                let tspan = self.span(&o);
                                let d = o.into_inner().find(|q| q.as_rule() == Rule::duration)?;
                                timeout = Some((self.seconds(d)?, tspan));
                            }
                            Rule::set_dyn_init => given = Some(self.span(&o)),
                            _ => {}
                        }
                    }
                    let init = ast::SetInit::Elements { elements: Vec::new(), span: dspan };
                    let dynamic = Some(ast::DynamicSet { timeout, init: given, span: dspan });
                    return Some(Item::Set(ast::SetDecl { name, ty, max, init, span, dynamic }));
                }
                let max = if init.as_rule() == Rule::max_n {
                    let max = self.max_n(init);
                    init = it.next()?;
                    Some(max?)
                } else {
                    None
                };
                let init = match init.as_rule() {
                    Rule::set_file => ast::SetInit::File(self.string(init.into_inner().next()?)),
                    _ => {
                        let ispan = self.span(&init);
                        let elements = init.into_inner().filter_map(|e| self.expr(e)).collect();
                        ast::SetInit::Elements { elements, span: ispan }
                    }
                };
                Some(Item::Set(ast::SetDecl { name, ty, max, init, span, dynamic: None }))
            }
            Rule::map_decl => {
                let mut it = p.into_inner().filter(|q| q.as_rule() != Rule::map_word);
                let map = self.map_name(it.next()?);
                let max = self.max_n(it.next()?)?;
                Some(Item::Map(ast::MapDecl { map, max, span }))
            }
            Rule::conntrack_decl => {
                let mut options = Vec::new();
                for o in p.into_inner().filter(|q| q.as_rule() == Rule::ct_opt) {
                    let ospan = self.span(&o);
                    let mut oi = o.into_inner();
                    let word = self.ident(oi.next()?);
                    let n = oi.next()?;
                    match n.as_str().parse::<u64>() {
                        Ok(v) => options.push((word, v, ospan)),
                        Err(_) => {
                            let nspan = self.span(&n);
                            self.literal_error::<()>(nspan, format!("the number {} does not fit in 64 bits", n.as_str()));
                        }
                    }
                }
                Some(Item::Conntrack(ast::ConntrackDecl { options, span }))
            }
            Rule::pool_decl => {
                let mut it = p.into_inner().filter(|q| q.as_rule() != Rule::pool_word).peekable();
                let default = it.next_if(|q| q.as_rule() == Rule::default_word).map(|q| self.span(&q));
                let name = self.ident(it.next()?);
                let mut options = Vec::new();
                let mut body = it.next()?;
                while body.as_rule() == Rule::pool_opt {
                    let ospan = self.span(&body);
                    let mut o = body.into_inner();
                    let word = self.ident(o.next()?);
                    let n = o.next()?;
                    // A time is kept in seconds.
                    let (digits, unit, scale) = match n.as_rule() {
                        Rule::duration => {
                            let text = n.as_str();
                            let unit = text.chars().last()?;
                            (&text[..text.len() - 1], Some(unit), match unit { 'h' => 3600, 'm' => 60, _ => 1 })
                        }
                        _ => (n.as_str(), None, 1),
                    };
                    match digits.parse::<u64>().ok().and_then(|v| v.checked_mul(scale)) {
                        Some(value) => options.push(ast::PoolOption { word, value, unit, span: ospan }),
                        None => {
                            let nspan = self.span(&n);
                            self.literal_error::<()>(nspan, format!("the number {} does not fit in 64 bits", n.as_str()));
                        }
                    }
                    body = it.next()?;
                }
                let body_span = self.span(&body);
                let mut backends = Vec::new();
                for be in body.into_inner() {
                    let bspan = self.span(&be);
                    let mut bi = be.into_inner();
                    let Some(addr) = self.expr(bi.next()?) else { continue };
                    let weight = match bi.find(|q| q.as_rule() == Rule::dec_int) {
                        Some(n) => {
                            let nspan = self.span(&n);
                            match n.as_str().parse::<u64>() {
                                Ok(v) => Some((v, Span { start: addr.span.end, ..nspan })),
                                Err(_) => {
                                    self.literal_error::<()>(nspan, format!("the number {} does not fit in 64 bits", n.as_str()));
                                    continue;
                                }
                            }
                        }
                        None => None,
                    };
                    backends.push(ast::BackendDecl { addr, weight, span: bspan });
                }
                Some(Item::Pool(ast::PoolDecl { name, default, options, backends, body: body_span, span }))
            }
            Rule::const_decl => {
                let mut it = p.into_inner().peekable();
                let default = it.next_if(|q| q.as_rule() == Rule::default_word).map(|q| self.span(&q));
                let name = self.ident(it.next()?);
                let value = self.expr(it.next()?)?;
                Some(Item::Const(ast::ConstDecl { name, default, value, span }))
            }
            Rule::test_block => {
                let mut it = p.into_inner();
                let name = self.string(it.next()?);
                let mut it = it.peekable();
                let hook = match it.peek() {
                    Some(on) if on.as_rule() == Rule::test_on => {
                        let h = it.next()?.into_inner().next()?;
                        Some((hook_of(h.as_str()), self.span(&h)))
                    }
                    _ => None,
                };
                // `after D` adds up until the next case, which it belongs to.
                let mut cases = Vec::new();
                let mut after: Option<(u64, Span)> = None;
                for step in it {
                    if step.as_rule() == Rule::test_after {
                        let aspan = self.span(&step);
                        let Some(t) = step.into_inner().find(|q| q.as_rule() == Rule::time_span) else { continue };
                        let tspan = self.span(&t);
                        let Some(ns) = time_span_ns(t.as_str()) else {
                            self.literal_error::<()>(tspan, format!("`{}` is not a time xpol can count in nanoseconds (a whole number of them, up to 2^64)", t.as_str()));
                            continue;
                        };
                        after = Some(match after {
                            Some((sum, first)) => (sum.saturating_add(ns), first),
                            None => (ns, aspan),
                        });
                        continue;
                    }
                    if let Some(mut case) = self.test_case(step) {
                        case.after = after.take();
                        cases.push(case);
                    }
                }
                if let Some((_, aspan)) = after {
                    self.errors.push(
                        Diagnostic::error("xpol::syntax", "`after` must come before a test case")
                            .with_label(aspan, "nothing follows")
                            .with_help("`after D` moves the clock on before the next packet: write a case after it, or remove it"),
                    );
                }
                Some(Item::Test(ast::TestBlock { name, hook, cases, span }))
            }
            Rule::probe => {
                let mut it = p.into_inner().peekable();
                let label = match it.peek() {
                    Some(l) if l.as_rule() == Rule::rule_label => Some(self.string(it.next()?.into_inner().nth(1)?)),
                    _ => None,
                };
                let hook_pair = it.next()?;
                let hook_span = self.span(&hook_pair);
                let hook = hook_of(hook_pair.as_str());
                let mut next = it.next()?;
                let predicate = if next.as_rule() == Rule::predicate {
                    let pred = self.expr(next.into_inner().next()?);
                    next = it.next()?;
                    Some(pred?)
                } else {
                    None
                };
                let body = self.block(next);
                Some(Item::Probe(Probe { label, hook, hook_span, predicate, body, span }))
            }
            _ => None,
        }
    }

    fn test_case(&mut self, p: Pair<Rule>) -> Option<ast::TestCase> {
        // Without the blank space pest leaves at the end of the case.
        let span = self.span(&p);
        let span = Span { end: span.start + p.as_str().trim_end().len() as u32, ..span };
        let mut it = p.into_inner().peekable();
        let hook = match it.peek() {
            Some(on) if on.as_rule() == Rule::test_on => {
                let h = it.next()?.into_inner().next()?;
                Some((hook_of(h.as_str()), self.span(&h)))
            }
            _ => None,
        };
        let desc = it.next()?;
        let packet = match desc.as_rule() {
            Rule::hex_packet => ast::PacketDesc::Hex(self.string(desc.into_inner().next()?)),
            _ => {
                let mut d = desc.into_inner();
                let kind = self.ident(d.next()?);
                let mut args = Vec::new();
                for a in d {
                    let mut ai = a.into_inner();
                    let name = self.ident(ai.next()?);
                    let value = self.expr(ai.next()?)?;
                    args.push((name, value));
                }
                ast::PacketDesc::Fields { kind, args }
            }
        };
        let expect_pair = it.next()?;
        let (expect, lb) = if expect_pair.as_rule() == Rule::lb_expect {
            let espan = self.span(&expect_pair);
            let mut e = expect_pair.into_inner().filter(|q| q.as_rule() != Rule::lb_word);
            let pool = self.ident(e.next()?);
            let backend = match e.next() {
                Some(b) => Some(self.expr(b)?),
                None => None,
            };
            (Ident { name: "lb".into(), span: espan }, Some(ast::LbExpect { pool, backend }))
        } else {
            (self.ident(expect_pair), None)
        };
        let mut rest: Vec<Pair<Rule>> = it.collect();
        let mut maps = Vec::new();
        let mut logs = Vec::new();
        while rest.last().is_some_and(|p| matches!(p.as_rule(), Rule::map_expect | Rule::log_expect)) {
            let m = rest.pop()?;
            let mspan = self.span(&m);
            if m.as_rule() == Rule::log_expect {
                // A bare `log` ends where the word does, not after the
                // blank space its optional `(...)` was looked for in.
                let mspan = Span { end: mspan.start + m.as_str().trim_end().len() as u32, ..mspan };
                let mut logged = true;
                let mut prefix = None;
                for q in m.into_inner() {
                    match q.as_rule() {
                        Rule::log_not => logged = false,
                        Rule::string => prefix = Some(self.string(q)),
                        _ => {}
                    }
                }
                logs.insert(0, ast::LogExpect { logged, prefix, span: mspan });
                continue;
            }
            let (map, keys, value) = self.map_keys_value(m.into_inner())?;
            maps.insert(0, ast::MapExpect { map, keys, value, span: mspan });
        }
        let decided_by = match rest.pop() {
            Some(by) => {
                let line = by.into_inner().next()?;
                let lspan = self.span(&line);
                match line.as_str().parse::<u32>() {
                    Ok(n) => Some((n, lspan)),
                    Err(_) => {
                        self.literal_error::<()>(lspan, format!("line {} is not a line of a file", line.as_str()));
                        return None;
                    }
                }
            }
            None => None,
        };
        Some(ast::TestCase { hook, packet, expect, lb, decided_by, maps, logs, after: None, span })
    }

    /// `@NAME[KEYS] ... VALUE`, as in an assignment or a test's map
    /// expectation: the name, the keys (none when absent) and the value.
    fn map_keys_value(&mut self, mut it: Pairs<Rule>) -> Option<(Ident, Vec<Expr>, Expr)> {
        let map = self.map_name(it.next()?);
        let mut next = it.next()?;
        let keys = if next.as_rule() == Rule::map_keys {
            let keys = next.into_inner().filter_map(|k| self.expr(k)).collect();
            next = it.next()?;
            keys
        } else {
            Vec::new()
        };
        Some((map, keys, self.expr(next)?))
    }

    fn block(&mut self, p: Pair<Rule>) -> Block {
        let span = self.span(&p);
        let stmts = p.into_inner().filter_map(|s| self.stmt(s)).collect();
        Block { stmts, span }
    }

    fn stmt(&mut self, p: Pair<Rule>) -> Option<Stmt> {
        let span = self.span(&p);
        // A bare `log` ends where the word does (see `test_case`).
        let span = if p.as_rule() == Rule::log_stmt { Span { end: span.start + p.as_str().trim_end().len() as u32, ..span } } else { span };
        let kind = match p.as_rule() {
            Rule::verdict => StmtKind::Verdict(match p.as_str() {
                "pass" => Verdict::Pass,
                "drop" => Verdict::Drop,
                "tx" => Verdict::Tx,
                _ => Verdict::Abort,
            }),
            Rule::redirect => {
                let target = p.into_inner().next()?;
                match target.as_rule() {
                    Rule::string => StmtKind::Redirect(self.string(target)),
                    _ => StmtKind::Redirect(StrLit { value: target.as_str().to_string(), span: self.span(&target) }),
                }
            }
            Rule::lb_stmt => {
                let mut it = p.into_inner().filter(|q| q.as_rule() != Rule::lb_word);
                let pool = self.ident(it.next()?);
                let mut args = Vec::new();
                for a in it {
                    let aspan = self.span(&a);
                    let mut ai = a.into_inner();
                    let name = self.ident(ai.next()?);
                    let value = match ai.next() {
                        Some(v) => Some(self.expr(v)?),
                        None => None,
                    };
                    args.push(ast::LbArg { name, value, span: aspan });
                }
                StmtKind::Lb { pool, args }
            }
            Rule::log_stmt => self.log_stmt(p)?,
            Rule::set_stmt => {
                let mut it = p.into_inner();
                let op = match it.next()?.as_str() {
                    "add" => ast::SetOp::Add,
                    _ => ast::SetOp::Delete,
                };
                let set = self.ident(it.next()?);
                let key = self.expr(it.next()?)?;
                let option = match it.next() {
                    Some(o) => {
                        let ospan = self.span(&o);
                        let mut oi = o.into_inner();
                        let word = self.ident(oi.next()?);
                        Some((word, self.seconds(oi.next()?)?, ospan))
                    }
                    None => None,
                };
                StmtKind::SetWrite { op, set, key, option }
            }
            Rule::synproxy_stmt => {
                let mut args = Vec::new();
                for a in p.into_inner().filter(|q| q.as_rule() == Rule::lb_arg) {
                    let aspan = self.span(&a);
                    let mut ai = a.into_inner();
                    let name = self.ident(ai.next()?);
                    let value = match ai.next() {
                        Some(v) => Some(self.expr(v)?),
                        None => None,
                    };
                    args.push(ast::LbArg { name, value, span: aspan });
                }
                StmtKind::Synproxy(args)
            }
            Rule::if_stmt => return self.if_stmt(p),
            Rule::let_stmt => {
                let mut it = p.into_inner();
                let name = self.ident(it.next()?);
                let value = self.expr(it.next()?)?;
                StmtKind::Let { name, value }
            }
            Rule::map_assign => {
                let (map, keys, value) = self.map_keys_value(p.into_inner())?;
                StmtKind::MapAssign { map, keys, value }
            }
            _ => return None,
        };
        Some(Stmt { kind, span })
    }

    fn if_stmt(&mut self, p: Pair<Rule>) -> Option<Stmt> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let cond = self.expr(it.next()?);
        let then_block = self.block(it.next()?);
        let else_block = match it.next() {
            Some(e) => {
                let inner = e.into_inner().next()?;
                Some(match inner.as_rule() {
                    Rule::if_stmt => {
                        let ispan = self.span(&inner);
                        let stmt = self.if_stmt(inner);
                        Block { stmts: stmt.into_iter().collect(), span: ispan }
                    }
                    _ => self.block(inner),
                })
            }
            None => None,
        };
        Some(Stmt { kind: StmtKind::If { cond: cond?, then_block, else_block }, span })
    }

    fn map_name(&self, p: Pair<Rule>) -> Ident {
        let s = self.span(&p);
        Ident { name: p.as_str().trim_start_matches('@').to_string(), span: Span { start: s.start + 1, ..s } }
    }

    /// An `expr` or `pred_expr` pair, or a primary.
    fn expr(&mut self, p: Pair<Rule>) -> Option<Expr> {
        self.expr_depth(p).map(|(e, _)| e)
    }

    /// An expression and its depth: the most nodes from it down to a leaf.
    fn expr_depth(&mut self, p: Pair<Rule>) -> Option<(Expr, usize)> {
        match p.as_rule() {
            Rule::expr | Rule::pred_expr => self.pratt(p.into_inner()),
            _ => self.primary(p),
        }
    }

    /// `depth` if it is within [`MAX_EXPR_DEPTH`]; else reports the
    /// expression as too deep, at `span` (the operator that crosses the
    /// limit).
    fn within_depth(&mut self, depth: usize, span: Span) -> Option<usize> {
        if depth <= MAX_EXPR_DEPTH {
            return Some(depth);
        }
        self.errors.push(
            Diagnostic::error("xpol::syntax::too_deep", format!("expression nested deeper than {MAX_EXPR_DEPTH} levels"))
                .with_label(span, format!("level {depth} here"))
                .with_help(
                    "a long chain of `||` over one field is a set test (`tcp.dport in { 22, 80, 443 }`, or a `set` for many elements); \
                     otherwise split the expression with `let`, or over several rules",
                ),
        );
        None
    }

    fn pratt(&mut self, pairs: Pairs<Rule>) -> Option<(Expr, usize)> {
        // pest's Pratt parser recurses once per prefix operator: a run of
        // them longer than the depth allows is refused before it does.
        let mut run = 0;
        for p in pairs.clone() {
            if !matches!(p.as_rule(), Rule::not | Rule::neg | Rule::bnot) {
                run = 0;
                continue;
            }
            run += 1;
            if run > MAX_EXPR_DEPTH {
                let span = self.span(&p);
                return self.within_depth(run, span).map(|_| unreachable!());
            }
        }
        // The Pratt parser's closures cannot borrow `self` mutably at once;
        // collect errors in a cell.
        let this = std::cell::RefCell::new(self);
        let parsed = pratt()
            .map_primary(|p| this.borrow_mut().primary(p))
            .map_prefix(|op, rhs| {
                let (rhs, depth) = rhs?;
                let s = this.borrow().span(&op);
                let depth = this.borrow_mut().within_depth(depth + 1, s)?;
                let op = match op.as_rule() {
                    Rule::not => UnOp::Not,
                    Rule::neg => UnOp::Neg,
                    _ => UnOp::BitNot,
                };
                Some((Expr { span: s.to(rhs.span), kind: ExprKind::Unary { op, operand: Box::new(rhs) } }, depth))
            })
            .map_infix(|lhs, op, rhs| {
                let ((lhs, ld), (rhs, rd)) = (lhs?, rhs?);
                let ospan = this.borrow().span(&op);
                let depth = this.borrow_mut().within_depth(ld.max(rd) + 1, ospan)?;
                let span = lhs.span.to(rhs.span);
                let kind = if op.as_rule() == Rule::range {
                    ExprKind::Range(Box::new(lhs), Box::new(rhs))
                } else {
                    let op = match op.as_rule() {
                        Rule::or => BinOp::Or,
                        Rule::and => BinOp::And,
                        Rule::eq => BinOp::Eq,
                        Rule::ne => BinOp::Ne,
                        Rule::lt => BinOp::Lt,
                        Rule::le => BinOp::Le,
                        Rule::gt => BinOp::Gt,
                        Rule::ge => BinOp::Ge,
                        Rule::in_op => BinOp::In,
                        Rule::not_in => BinOp::NotIn,
                        Rule::bor => BinOp::BitOr,
                        Rule::bxor => BinOp::BitXor,
                        Rule::band => BinOp::BitAnd,
                        Rule::shl => BinOp::Shl,
                        Rule::shr => BinOp::Shr,
                        Rule::add => BinOp::Add,
                        Rule::sub => BinOp::Sub,
                        Rule::mul => BinOp::Mul,
                        Rule::div => BinOp::Div,
                        _ => BinOp::Mod,
                    };
                    ExprKind::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) }
                };
                Some((Expr { kind, span }, depth))
            })
            .parse(pairs);
        parsed
    }

    /// Expressions inside a primary (set elements, map keys, arguments),
    /// and the depth of the deepest; one that fails is left out.
    fn exprs_depth(&mut self, pairs: Pairs<Rule>) -> (Vec<Expr>, usize) {
        let mut depth = 0;
        let exprs = pairs
            .filter_map(|e| self.expr_depth(e))
            .map(|(e, d)| {
                depth = depth.max(d);
                e
            })
            .collect();
        (exprs, depth)
    }

    fn literal_error<T>(&mut self, span: Span, message: String) -> Option<T> {
        self.errors.push(Diagnostic::error("xpol::syntax::literal", message).with_label(span, "here"));
        None
    }

    /// A primary expression and its depth.
    fn primary(&mut self, p: Pair<Rule>) -> Option<(Expr, usize)> {
        let span = self.span(&p);
        // Nodes with expressions inside: one level more than the deepest.
        let (kind, inner) = match p.as_rule() {
            Rule::paren => {
                let (inner, depth) = self.expr_depth(p.into_inner().next()?)?;
                return Some((Expr { kind: inner.kind, span }, depth));
            }
            Rule::set_lit => {
                let (elements, depth) = self.exprs_depth(p.into_inner());
                (ExprKind::SetLit(elements), depth)
            }
            Rule::map_read => {
                let mut it = p.into_inner();
                let map = self.map_name(it.next()?);
                let (keys, depth) = it.next().map(|k| self.exprs_depth(k.into_inner())).unwrap_or_default();
                (ExprKind::MapRead { map, keys }, depth)
            }
            Rule::call => {
                let mut it = p.into_inner();
                let func = self.ident(it.next()?);
                let (args, depth) = self.exprs_depth(it);
                (ExprKind::Call { func, args }, depth)
            }
            Rule::limit_call => {
                let (limit, depth) = self.limit(p)?;
                (ExprKind::Limit(Box::new(limit)), depth)
            }
            Rule::expr | Rule::pred_expr => return self.pratt(p.into_inner()),
            _ => (self.literal_or_path(p)?, 0),
        };
        let depth = self.within_depth(inner + 1, span)?;
        Some((Expr { kind, span }, depth))
    }

    /// `limit(RATE, name: value, ...)` and the depth of its deepest
    /// expression.
    fn limit(&mut self, p: Pair<Rule>) -> Option<(ast::Limit, usize)> {
        let mut it = p.into_inner().filter(|q| q.as_rule() != Rule::limit_word);
        let rate = self.rate(it.next()?)?;
        let mut args = Vec::new();
        let mut depth = 0;
        for a in it {
            let aspan = self.span(&a);
            let mut ai = a.into_inner();
            let name = self.ident(ai.next()?);
            let v = ai.next()?;
            let value = match v.as_rule() {
                Rule::limit_tuple => {
                    let vspan = self.span(&v);
                    let (exprs, d) = self.exprs_depth(v.into_inner());
                    depth = depth.max(d);
                    ast::LimitValue::Tuple(exprs, vspan)
                }
                Rule::amount => {
                    let vspan = self.span(&v);
                    let mut vi = v.into_inner();
                    let count = self.count(vi.next()?)?;
                    let unit = self.ident(vi.next()?);
                    ast::LimitValue::Amount { count, unit, span: vspan }
                }
                _ => {
                    let (e, d) = self.expr_depth(v)?;
                    depth = depth.max(d);
                    ast::LimitValue::Expr(e)
                }
            };
            args.push(ast::LimitArg { name, value, span: aspan });
        }
        Some((ast::Limit { rate, args }, depth))
    }

    /// A `rate`: `100/s`, `10 mbytes/s`.
    fn rate(&mut self, p: Pair<Rule>) -> Option<ast::Rate> {
        let rspan = self.span(&p);
        let mut r = p.into_inner();
        let count = self.count(r.next()?)?;
        let mut units: Vec<ast::Ident> = r.map(|u| self.ident(u)).collect();
        let per = units.pop()?;
        Some(ast::Rate { count, unit: units.pop(), per, span: rspan })
    }

    /// `log` and its arguments: `log("telnet: ", rate: 10/s, burst: 5)`.
    fn log_stmt(&mut self, p: Pair<Rule>) -> Option<StmtKind> {
        let mut args = Vec::new();
        for a in p.into_inner().filter(|q| q.as_rule() == Rule::log_arg) {
            let arg = a.into_inner().next()?;
            if arg.as_rule() == Rule::string {
                args.push(ast::LogArg::Prefix(self.string(arg)));
                continue;
            }
            let span = self.span(&arg);
            let mut ai = arg.into_inner();
            let name = self.ident(ai.next()?);
            let v = ai.next()?;
            let value = match v.as_rule() {
                Rule::rate => ast::LogValue::Rate(self.rate(v)?),
                Rule::amount => {
                    let vspan = self.span(&v);
                    let mut vi = v.into_inner();
                    let count = self.count(vi.next()?)?;
                    let unit = self.ident(vi.next()?);
                    ast::LogValue::Amount { count, unit, span: vspan }
                }
                _ => ast::LogValue::Expr(self.expr(v)?),
            };
            args.push(ast::LogArg::Option { name, value, span });
        }
        Some(StmtKind::Log(args))
    }

    /// A `rate_num`: digits that must fit in 64 bits.
    fn count(&mut self, p: Pair<Rule>) -> Option<u64> {
        let span = self.span(&p);
        match p.as_str().parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => self.literal_error(span, format!("the number {} does not fit in 64 bits", p.as_str())),
        }
    }

    /// A literal or a name.
    fn literal_or_path(&mut self, p: Pair<Rule>) -> Option<ExprKind> {
        let span = self.span(&p);
        let text = p.as_str();
        let kind = match p.as_rule() {
            Rule::path => ExprKind::Path(p.into_inner().map(|s| self.ident(s)).collect()),
            Rule::boolean => ExprKind::Bool(text == "true"),
            Rule::dec_int => match text.parse::<u64>() {
                Ok(v) => ExprKind::Int(v),
                Err(_) => return self.literal_error(span, format!("the number {text} does not fit in 64 bits")),
            },
            Rule::hex_int => match u64::from_str_radix(&text[2..], 16) {
                Ok(v) => ExprKind::Int(v),
                Err(_) => return self.literal_error(span, format!("the number {text} does not fit in 64 bits")),
            },
            Rule::mac => {
                let mut mac = [0u8; 6];
                for (b, part) in mac.iter_mut().zip(text.split(':')) {
                    *b = u8::from_str_radix(part, 16).unwrap_or(0);
                }
                ExprKind::Mac(mac)
            }
            Rule::ip4 => match text.parse::<Ipv4Addr>() {
                Ok(a) => ExprKind::Ip(IpAddr::V4(a)),
                Err(_) => return self.literal_error(span, format!("`{text}` is not an IPv4 address (each part must be 0 to 255)")),
            },
            Rule::ip6 => match text.parse::<Ipv6Addr>() {
                Ok(a) => ExprKind::Ip(IpAddr::V6(a)),
                Err(_) => return self.literal_error(span, format!("`{text}` is not an IPv6 address")),
            },
            Rule::cidr4 | Rule::cidr6 => {
                let (addr, len) = text.split_once('/').unwrap_or((text, ""));
                let addr: Option<IpAddr> = addr.parse().ok();
                let Some(addr) = addr else {
                    return self.literal_error(span, format!("`{text}` is not an address prefix"));
                };
                let max = if addr.is_ipv4() { 32 } else { 128 };
                match len.parse::<u8>() {
                    Ok(l) if l <= max => ExprKind::Cidr(addr, l),
                    _ => return self.literal_error(span, format!("prefix length /{len} is longer than {max}")),
                }
            }
            _ => return None,
        };
        Some(kind)
    }
}

/// Nanoseconds in a `time_span` (`100ms`, `1.5s`, `2m`), when it is a
/// whole number of them that fits in 64 bits.
pub fn time_span_ns(text: &str) -> Option<u64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let scale: u128 = match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{whole}{fraction}");
    let value: u128 = digits.parse().ok().filter(|_| digits.len() <= 30)?;
    let divisor = 10u128.checked_pow(fraction.len() as u32)?;
    let ns = value.checked_mul(scale)?;
    (ns % divisor == 0).then(|| ns / divisor).and_then(|ns| u64::try_from(ns).ok())
}

/// A hook as the grammar's `hook` rule matched it.
fn hook_of(text: &str) -> Hook {
    match text {
        "xdp" => Hook::Xdp,
        "tc:ingress" => Hook::TcIngress,
        _ => Hook::TcEgress,
    }
}
