//! Parser tests: every construct, precedence, the lexical overlaps, spans,
//! and errors.

use xpol_lang::ast::{BinOp, Expr, ExprKind, Hook, Item, StmtKind, UnOp, Verdict};
use xpol_lang::parser::parse;
use xpol_lang::FileId;

fn parse_ok(src: &str) -> Vec<Item> {
    match parse(src, FileId(0)) {
        Ok(p) => p.items,
        Err(d) => panic!("{src:?} should parse: {d:?}"),
    }
}

/// The predicate of the only probe.
fn pred(src: &str) -> Expr {
    match parse_ok(src).into_iter().next() {
        Some(Item::Probe(p)) => p.predicate.expect("a predicate"),
        other => panic!("not a probe: {other:?}"),
    }
}

/// An S-expression view of an expression, to check structure.
fn sx(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(i) => i.to_string(),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Ip(a) => a.to_string(),
        ExprKind::Cidr(a, l) => format!("{a}/{l}"),
        ExprKind::Mac(m) => format!("mac{m:?}"),
        ExprKind::Range(a, b) => format!("({}..{})", sx(a), sx(b)),
        ExprKind::SetLit(v) => format!("{{{}}}", v.iter().map(sx).collect::<Vec<_>>().join(",")),
        ExprKind::Path(p) => p.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join("."),
        ExprKind::MapRead { map, keys } => format!("@{}[{}]", map.name, keys.iter().map(sx).collect::<Vec<_>>().join(",")),
        ExprKind::Unary { op, operand } => format!("({op:?} {})", sx(operand)),
        ExprKind::Binary { op, lhs, rhs } => format!("({} {} {})", sx(lhs), op.as_str(), sx(rhs)),
        ExprKind::Call { func, args } => format!("{}({})", func.name, args.iter().map(sx).collect::<Vec<_>>().join(",")),
        ExprKind::Limit(l) => {
            let unit = l.rate.unit.as_ref().map_or(String::new(), |u| u.name.clone());
            let args: Vec<String> = l
                .args
                .iter()
                .map(|a| {
                    let v = match &a.value {
                        xpol_lang::ast::LimitValue::Expr(e) => sx(e),
                        xpol_lang::ast::LimitValue::Tuple(v, _) => format!("({})", v.iter().map(sx).collect::<Vec<_>>().join(",")),
                        xpol_lang::ast::LimitValue::Amount { count, unit, .. } => format!("{count}{}", unit.name),
                    };
                    format!(", {}: {v}", a.name.name)
                })
                .collect();
            format!("limit({}{unit}/{}{})", l.rate.count, l.rate.per.name, args.concat())
        }
    }
}

/// `limit(...)` reads its rate (with `/` inside a predicate), its options
/// and keys of several fields; `after D` times add up to the next case.
#[test]
fn limits_and_test_times() {
    assert_eq!(sx(&pred("xdp /ip.proto == 1 && !limit(100/s, burst: 20)/ { drop }")), "((ip.proto == 1) && (Not limit(100/s, burst: 20)))");
    assert_eq!(sx(&pred("xdp /!limit(10 mbytes / second, burst: 64kbytes, by: (ip.src, tcp.dport), size: 0x10,)/ {}")), "(Not limit(10mbytes/second, burst: 64kbytes, by: (ip.src,tcp.dport), size: 16))");
    // A name `limit` stays usable; `limit(` is always the rate limit.
    assert_eq!(sx(&pred("xdp /limit == 3/ {}")), "(limit == 3)");
    assert!(parse("xdp /limit(x)/ {}", FileId(0)).is_err());
    let items = parse_ok("xdp { drop }\ntest \"t\" { udp() => drop\n after 100ms after 1.5s\n udp() => drop }");
    let Item::Test(t) = &items[1] else { panic!("{:?}", items[1]) };
    assert_eq!((t.cases[0].after.map(|a| a.0), t.cases[1].after.map(|a| a.0)), (None, Some(1_600_000_000)));
    assert!(parse("xdp { drop }\ntest \"t\" { udp() => drop\n after 1s }", FileId(0)).is_err());
    assert_eq!(xpol_lang::parser::time_span_ns("1.5ns"), None);
    assert_eq!(xpol_lang::parser::time_span_ns("250us"), Some(250_000));
}

/// `log` alone, with a prefix, with options (a rate as `limit`'s, an
/// amount, an expression), and in a test's expectations; `log` stays a
/// name elsewhere.
#[test]
fn log_statements_and_expectations() {
    use xpol_lang::ast::{LogArg, LogValue};
    let body = |src: &str| match parse_ok(src).into_iter().next() {
        Some(Item::Probe(p)) => p.body.stmts,
        other => panic!("not a probe: {other:?}"),
    };
    let stmts = body("xdp { log\n log(\"telnet: \", rate: 10 / s, burst: 5 packets,); log(burst: 2) drop }");
    let StmtKind::Log(a) = &stmts[0].kind else { panic!("{:?}", stmts[0]) };
    assert!(a.is_empty());
    let StmtKind::Log(a) = &stmts[1].kind else { panic!("{:?}", stmts[1]) };
    assert!(matches!(&a[0], LogArg::Prefix(p) if p.value == "telnet: "));
    assert!(matches!(&a[1], LogArg::Option { name, value: LogValue::Rate(r), .. } if name.name == "rate" && r.count == 10 && r.per.name == "s"));
    assert!(matches!(&a[2], LogArg::Option { value: LogValue::Amount { count: 5, unit, .. }, .. } if unit.name == "packets"));
    let StmtKind::Log(a) = &stmts[2].kind else { panic!("{:?}", stmts[2]) };
    assert!(matches!(&a[0], LogArg::Option { value: LogValue::Expr(_), .. }));
    assert!(matches!(stmts[3].kind, StmtKind::Verdict(Verdict::Drop)));
    assert_eq!(sx(&pred("xdp /log == 3/ {}")), "(log == 3)");
    let items = parse_ok("xdp { log drop }\ntest \"t\" { udp() => drop, log, !log(\"x\"), @m == 1, log(\"y\") }");
    let Item::Test(t) = &items[1] else { panic!("{:?}", items[1]) };
    let logs: Vec<(bool, Option<&str>)> = t.cases[0].logs.iter().map(|l| (l.logged, l.prefix.as_ref().map(|p| p.value.as_str()))).collect();
    assert_eq!(logs, [(true, None), (false, Some("x")), (true, Some("y"))]);
    assert_eq!(t.cases[0].maps.len(), 1);
    assert!(parse("xdp { log(\"a\" \"b\") }", FileId(0)).is_err());
}

#[test]
fn precedence() {
    assert_eq!(sx(&pred("xdp /a || b && c/ {}")), "(a || (b && c))");
    assert_eq!(sx(&pred("xdp /a == 1 && b != 2/ {}")), "((a == 1) && (b != 2))");
    assert_eq!(sx(&pred("xdp /x & 0x12 == 0/ {}")), "((x & 18) == 0)");
    assert_eq!(sx(&pred("xdp /a + b * c - d == e/ {}")), "(((a + (b * c)) - d) == e)");
    assert_eq!(sx(&pred("xdp /x in 1..5/ {}")), "(x in (1..5))");
    assert_eq!(sx(&pred("xdp /!a && -b < ~c/ {}")), "((Not a) && ((Neg b) < (BitNot c)))");
    assert_eq!(sx(&pred("xdp /ip.src !in s || x << 2 >> 1 == 3/ {}")), "((ip.src !in s) || (((x << 2) >> 1) == 3))");
}

#[test]
fn division_needs_parentheses_in_predicates() {
    assert_eq!(sx(&pred("xdp /(pkt.len / 2) > 10/ { drop }")), "((pkt.len / 2) > 10)");
    assert!(parse("xdp /pkt.len / 2 > 10/ { drop }", FileId(0)).is_err());
    // Outside predicates division is plain.
    match &parse_ok("xdp { let x = pkt.len / 2 % 3 }")[0] {
        Item::Probe(p) => match &p.body.stmts[0].kind {
            StmtKind::Let { value, .. } => assert_eq!(sx(value), "((pkt.len / 2) % 3)"),
            k => panic!("{k:?}"),
        },
        i => panic!("{i:?}"),
    }
}

#[test]
fn literals_and_their_overlaps() {
    assert_eq!(sx(&pred("xdp /eth.src == 02:00:00:00:00:01/ {}")), "(eth.src == mac[2, 0, 0, 0, 0, 1])");
    assert_eq!(sx(&pred("xdp /ip.src == fe80::1/ {}")), "(ip.src == fe80::1)");
    assert_eq!(sx(&pred("xdp /ip.src == dead:beef::1/ {}")), "(ip.src == dead:beef::1)");
    assert_eq!(sx(&pred("xdp /ip.src == ::ffff:1.2.3.4/ {}")), "(ip.src == ::ffff:1.2.3.4)");
    assert_eq!(sx(&pred("xdp /ip.src in ::/0/ {}")), "(ip.src in ::/0)");
    assert_eq!(sx(&pred("xdp /ip.src == 0:0:0:0:0:0:0:1/ {}")), "(ip.src == ::1)");
    // A closing slash right after an address is not a prefix length...
    assert_eq!(sx(&pred("xdp /ip.dst == 10.0.0.1/ { drop }")), "(ip.dst == 10.0.0.1)");
    // ...but digits right after the slash are.
    assert_eq!(sx(&pred("xdp /ip.dst in 10.0.0.0/8/ { drop }")), "(ip.dst in 10.0.0.0/8)");
    assert_eq!(sx(&pred("xdp /x in 1..5/ {}")), "(x in (1..5))");
    assert_eq!(sx(&pred("xdp /x == 0x86dd/ {}")), "(x == 34525)");
    assert_eq!(sx(&pred("xdp /x in {80, 443, 8000..8099,}/ {}")), "(x in {80,443,(8000..8099)})");
    assert_eq!(sx(&pred("xdp /true/ {}")), "true");
}

#[test]
fn items_statements_and_hooks() {
    let items = parse_ok(
        r#"
        include "std/bogons.xpol"
        set b: cidr = { 203.0.113.0/24, 2001:db8:bad::/48 }
        set f: cidr = file("list.txt")
        const admins = { 198.51.100.0/24 }
        tc:ingress /tcp.dport == 22/ { @m[ip.src, tcp.dport] = count(); drop }
        tc:egress { redirect("eth0.100") }
        xdp {
            let len = pkt.len
            if (len > 512) { @big = sum(len); drop } else if len < 20 { abort } else { pass }
            redirect(veth-b)
            tx
        }
        "#,
    );
    assert_eq!(items.len(), 7);
    let Item::Probe(p) = &items[4] else { panic!() };
    assert_eq!(p.hook, Hook::TcIngress);
    let StmtKind::MapAssign { map, keys, value } = &p.body.stmts[0].kind else { panic!() };
    assert_eq!((map.name.as_str(), keys.len(), sx(value).as_str()), ("m", 2, "count()"));
    assert_eq!(p.body.stmts[1].kind, StmtKind::Verdict(Verdict::Drop));
    let Item::Probe(p) = &items[5] else { panic!() };
    assert!(matches!(&p.body.stmts[0].kind, StmtKind::Redirect(s) if s.value == "eth0.100"));
    let Item::Probe(p) = &items[6] else { panic!() };
    assert_eq!(p.body.stmts.len(), 4);
    let StmtKind::If { else_block: Some(e), .. } = &p.body.stmts[1].kind else { panic!() };
    assert!(matches!(e.stmts[0].kind, StmtKind::If { .. }), "else if nests an if");
    assert!(matches!(&p.body.stmts[2].kind, StmtKind::Redirect(s) if s.value == "veth-b"));
}

/// `max N` declares a set's capacity; `max` stays an ordinary name
/// everywhere else.
#[test]
fn set_capacity_and_max_as_a_name() {
    let src = "set max: cidr max 100000 = file(\"l.txt\")\nset p: port max 3 = { 22 }\nset q: int = { 1 }\nconst m = max\nxdp /tcp.dport in p/ { let max = 1; drop }";
    let items = parse_ok(src);
    let Item::Set(s) = &items[0] else { panic!() };
    let (n, span) = s.max.expect("a max");
    assert_eq!((s.name.name.as_str(), n), ("max", 100_000));
    assert_eq!(&src[span.start as usize..span.end as usize], "max 100000");
    let Item::Set(s) = &items[1] else { panic!() };
    assert_eq!(s.max.map(|m| m.0), Some(3));
    let Item::Set(s) = &items[2] else { panic!() };
    assert_eq!(s.max, None);
    for bad in ["set s: cidr max = { 1.2.3.4 }", "set s: cidr max 99999999999999999999 = { 1.2.3.4 }", "set s: cidr maxi 3 = {}"] {
        assert!(parse(bad, FileId(0)).is_err(), "{bad:?} should fail");
    }
}

/// `rule "NAME"` labels a probe; `rule` stays an ordinary name everywhere
/// else, and the label's text is kept as written (the checker judges it).
#[test]
fn rule_labels_and_rule_as_a_name() {
    let src = "const rule = 22\nrule \"ssh-in\" xdp /tcp.dport == rule/ { let rule = 1; pass }\nrule\n  \"\" tc:ingress { drop }\nxdp { pass }";
    let items = parse_ok(src);
    let Item::Const(c) = &items[0] else { panic!() };
    assert_eq!(c.name.name, "rule");
    let Item::Probe(p) = &items[1] else { panic!() };
    let label = p.label.as_ref().expect("a label");
    assert_eq!(label.value, "ssh-in");
    assert_eq!(&src[label.span.start as usize..label.span.end as usize], "\"ssh-in\"");
    assert_eq!(&src[p.span.start as usize..p.hook_span.end as usize], "rule \"ssh-in\" xdp");
    let Item::Probe(p) = &items[2] else { panic!() };
    assert_eq!((p.label.as_ref().map(|l| l.value.as_str()), p.hook), (Some(""), Hook::TcIngress));
    let Item::Probe(p) = &items[3] else { panic!() };
    assert_eq!(p.label, None);
    for bad in ["rule xdp { pass }", "rule ssh xdp { pass }", "rule \"a\" { pass }", "rules \"a\" xdp { pass }", "xdp rule \"a\" { pass }"] {
        assert!(parse(bad, FileId(0)).is_err(), "{bad:?} should fail");
    }
}

/// `map @NAME max N` declares a map's capacity; `map` stays an ordinary
/// name everywhere else.
#[test]
fn map_capacity_and_map_as_a_name() {
    let src = "map @seen max 4\nconst map = 3\nset max: int = { 1 }\nmap @m max 0;\nxdp /tcp.dport == map/ { let map = 1; @seen[ip.src] = count() }";
    let items = parse_ok(src);
    let Item::Map(m) = &items[0] else { panic!("{:?}", items[0]) };
    assert_eq!((m.map.name.as_str(), m.max.0), ("seen", 4));
    assert_eq!(&src[m.map.span.start as usize..m.map.span.end as usize], "seen");
    assert_eq!(&src[m.max.1.start as usize..m.max.1.end as usize], "max 4");
    assert_eq!(&src[m.span.start as usize..m.span.end as usize], "map @seen max 4");
    assert!(matches!(&items[1], Item::Const(c) if c.name.name == "map"));
    // `max 0` parses: the checker refuses it, with a span.
    assert!(matches!(&items[3], Item::Map(m) if m.max.0 == 0));
    for bad in ["map @m", "map m max 4", "map @m max", "map @m max -1", "map @m max 99999999999999999999", "map @m maxi 3", "mapx @m max 3"] {
        assert!(parse(bad, FileId(0)).is_err(), "{bad:?} should fail");
    }
}

#[test]
fn spans_are_exact() {
    let src = "xdp /tcp.dport == 22/ { drop }";
    let items = parse_ok(src);
    let Item::Probe(p) = &items[0] else { panic!() };
    let pred = p.predicate.as_ref().expect("predicate");
    assert_eq!(&src[pred.span.start as usize..pred.span.end as usize], "tcp.dport == 22");
    let ExprKind::Binary { op: BinOp::Eq, lhs, rhs } = &pred.kind else { panic!() };
    assert_eq!(&src[lhs.span.start as usize..lhs.span.end as usize], "tcp.dport");
    assert_eq!(&src[rhs.span.start as usize..rhs.span.end as usize], "22");
    let ExprKind::Path(segs) = &lhs.kind else { panic!() };
    assert_eq!(&src[segs[1].span.start as usize..segs[1].span.end as usize], "dport");
    assert_eq!(&src[p.body.stmts[0].span.start as usize..p.body.stmts[0].span.end as usize], "drop");
    assert_eq!(&src[p.hook_span.start as usize..p.hook_span.end as usize], "xdp");
    let _ = UnOp::Not;
}

#[test]
fn errors_are_diagnostics_with_spans() {
    let cases = [
        ("xdp /tcp.dport == 22 { drop }", "expected"),
        ("xdp /tcp.dport == 22/ { dorp }", "a statement"),
        ("xdp /x == 99999999999999999999/ {}", "does not fit in 64 bits"),
        ("xdp /ip.src == 300.1.1.1/ {}", "not an IPv4 address"),
        ("xdp /ip.src in 10.0.0.0/33/ {}", "longer than 32"),
        ("xdp /ip.src in 2001:db8::/129/ {}", "longer than 128"),
        ("set s: cidr = {", "is not closed"),
        ("", ""),
    ];
    for (src, want) in cases {
        match parse(src, FileId(3)) {
            Ok(p) if src.is_empty() => assert!(p.items.is_empty()),
            Ok(_) => panic!("{src:?} should fail"),
            Err(d) => {
                assert!(d[0].message.contains(want), "{src:?}: {}", d[0].message);
                let span = d[0].primary_span().expect("a span");
                assert_eq!(span.file, FileId(3));
                assert!(span.end as usize <= src.len());
            }
        }
    }
}

#[test]
fn hostile_input_does_not_panic() {
    let deep = format!("xdp /{}1{}/ {{}}", "(".repeat(5000), ")".repeat(5000));
    assert!(parse(&deep, FileId(0)).is_err());
    for src in ["\u{0}", "xdp /", "@@@", "xdp { if }", "set : = {", "xdp /ip.src == ::::/ {}", "ä ö ü", "xdp /\"/ {}"] {
        let _ = parse(src, FileId(0));
    }
}

/// A declaration without its `@` asks for a map name.
#[test]
fn map_declaration_without_at_asks_for_a_map_name() {
    let Err(d) = parse("map seen max 4", FileId(0)) else { panic!("parses") };
    assert!(d[0].message.contains("a map name such as `@seen`"), "{:?}", d[0]);
    assert_eq!((d[0].labels[0].span.start, d[0].labels[0].span.end), (4, 8), "{:?}", d[0]);
}

/// The text a diagnostic's primary label covers.
fn labelled<'a>(src: &'a str, d: &xpol_lang::Diagnostic) -> &'a str {
    let s = d.primary_span().expect("a span");
    &src[s.start as usize..s.end as usize]
}

/// After a syntax error, parsing goes on at the next item: every error of
/// the file, in order.
#[test]
fn every_syntax_error_is_reported() {
    let src = "xdp /tcp.dport == 22/ { dorp }\nconst a = 1\nxdp /tcp.dport = 22/ { drop }\nset s: int = { 1 }\nxdp /ip.src == 2001:db8:::1/ { drop }\n";
    let d = parse(src, FileId(0)).expect_err("three errors");
    let found: Vec<&str> = d.iter().map(|d| labelled(src, d)).collect();
    assert_eq!(found, ["dorp", "=", "2001:db8:::1"], "{d:?}");
    assert!(d[2].message.contains("is not an IPv6 address"), "{:?}", d[2]);
}

/// A `}` left out is reported at the `{`, before the next rule or at the
/// end of the file; the fix (insert `}`) is for a person to place.
#[test]
fn an_unclosed_brace_is_reported_at_the_brace() {
    for src in ["xdp /tcp.syn/ { if tcp.ack { drop }\nxdp { pass }\n", "xdp /tcp.syn/ { if tcp.ack { drop }\n"] {
        let d = parse(src, FileId(0)).expect_err("unclosed");
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].code, "xpol::syntax::unclosed");
        assert_eq!(d[0].primary_span().map(|s| s.start), Some(14), "the probe's `{{`: {d:?}");
        assert!(d[0].fixes.iter().all(|f| f.replacement.starts_with('}') && !f.machine_applicable), "{d:?}");
    }
}

/// Misspelt keywords and operators from other languages get a fix that a
/// tool may apply.
#[test]
fn misspellings_get_machine_applicable_fixes() {
    let cases = [
        ("xdp { dorp }", "dorp", "drop"),
        ("xpd { pass }", "xpd", "xdp"),
        ("tc:egres { pass }", "tc:egres", "tc:egress"),
        ("xdp /tcp.dport = 22/ { drop }", "=", "=="),
        ("xdp /tcp.syn and tcp.ack/ { drop }", "and", "&&"),
        ("xdp /tcp.syn or tcp.ack/ { drop }", "or", "||"),
        ("xdp /not tcp.syn/ { drop }", "not ", "!"),
        ("xdp /ip.src not in { 10.0.0.0/8 }/ { drop }", "not in", "!in"),
        ("test \"t\" { tcp(dport: 22) => dorp }\nxdp { pass }", "dorp", "drop"),
    ];
    for (src, was, now) in cases {
        let d = parse(src, FileId(0)).expect_err(src);
        let fix = d[0].fixes.iter().find(|f| f.machine_applicable).unwrap_or_else(|| panic!("{src}: {d:?}"));
        assert_eq!((&src[fix.span.start as usize..fix.span.end as usize], fix.replacement.as_str()), (was, now), "{src}");
    }
}

/// A byte order mark is skipped; spans stay byte offsets of the file, and
/// columns do not count it.
#[test]
fn a_byte_order_mark_is_skipped() {
    let src = "\u{feff}xdp /tcp.syn/ { drop }\n";
    let items = parse_ok(src);
    let Item::Probe(p) = &items[0] else { panic!("a probe") };
    assert_eq!(p.hook_span.start, 3);
    let file = xpol_lang::SourceFile::new("bom.xpol", None, src);
    assert_eq!(file.line_col(p.hook_span.start), (1, 1));
    assert_eq!(file.line_col(8), (1, 6), "`tcp.syn`");
}

/// Expressions deeper than the bound are refused where they cross it, on a
/// 2 MiB thread, whatever the operator.
#[test]
fn deep_expressions_are_refused_with_a_span() {
    let n = 5000;
    let chain = |op: &str| (0..n).map(|i| format!("x{i}")).collect::<Vec<_>>().join(op);
    let cases = [
        format!("xdp /{}/ {{}}", chain(" || ")),
        format!("xdp /{}/ {{}}", chain(" + ")),
        format!("xdp /{}x/ {{}}", "!".repeat(n)),
        format!("xdp /{}x/ {{}}", "- ".repeat(n)),
        format!("xdp {{ @m[{}] = count() }}", chain(" & ")),
    ];
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            for src in cases {
                let d = parse(&src, FileId(0)).expect_err("too deep");
                assert_eq!((d.len(), d[0].code.as_str()), (1, "xpol::syntax::too_deep"), "{d:?}");
                assert!(d[0].message.contains(&xpol_lang::parser::MAX_EXPR_DEPTH.to_string()));
                let at = d[0].primary_span().expect("span").start as usize;
                assert!(at > 5 && at < src.len() / 2, "where the bound is crossed, not at the end: {at}");
            }
        })
        .expect("spawn")
        .join()
        .expect("no overflow");
}

/// Recovery on damaged policies: no panic, no endless loop, every span on
/// character boundaries within the text.
#[test]
fn damaged_policies_recover_without_panicking() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for path in ["../examples/firewall.xpol", "../examples/edge.xpol", "../examples/lb.xpol", "../std-policies/tcp-sanity.xpol"] {
        let text = std::fs::read_to_string(path).expect("example");
        for _ in 0..150 {
            let mut t = text.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % t.len().max(1);
                if !t.is_char_boundary(at) {
                    continue;
                }
                match next() % 4 {
                    0 => {
                        let end = (at + 1 + next() as usize % 8).min(t.len());
                        if t.is_char_boundary(end) {
                            t.replace_range(at..end, "");
                        }
                    }
                    1 => t.insert(at, ['{', '}', '(', ':', '/', '"', '=', '\u{e9}'][next() as usize % 8]),
                    2 => t.insert_str(at, "\nxdp "),
                    _ => t.truncate(at),
                }
            }
            if let Err(ds) = parse(&t, FileId(0)) {
                assert!(!ds.is_empty() && ds.len() <= xpol_lang::parser::MAX_SYNTAX_ERRORS + 20);
                for d in &ds {
                    for s in d.labels.iter().map(|l| l.span).chain(d.fixes.iter().map(|f| f.span)) {
                        let (a, b) = (s.start as usize, s.end as usize);
                        assert!(a <= b && b <= t.len() && t.is_char_boundary(a) && t.is_char_boundary(b), "{t:?}: {d:?}");
                    }
                }
            }
        }
    }
}

/// A dynamic set's declaration and the statements that write it; `dynamic`,
/// `timeout`, `add` and `delete` stay names elsewhere.
#[test]
fn dynamic_sets_and_their_statements() {
    use xpol_lang::ast::SetOp;
    let items = parse_ok("set banned: ip dynamic max 100 timeout 10m\nset plain: ip dynamic\nxdp { add(banned, ip.src, timeout: 1h); delete(banned, ip.dst) add(plain, ip.src) }");
    let Item::Set(d) = &items[0] else { panic!("{:?}", items[0]) };
    let dynamic = d.dynamic.as_ref().expect("dynamic");
    assert_eq!((d.max.map(|m| m.0), dynamic.timeout.map(|t| t.0), dynamic.init), (Some(100), Some(600), None));
    let Item::Set(d) = &items[1] else { panic!("{:?}", items[1]) };
    assert!(d.dynamic.as_ref().is_some_and(|x| x.timeout.is_none()) && d.max.is_none());
    let Item::Probe(p) = &items[2] else { panic!("{:?}", items[2]) };
    let writes: Vec<(SetOp, &str, Option<u64>)> = p
        .body
        .stmts
        .iter()
        .map(|s| match &s.kind {
            StmtKind::SetWrite { op, set, option, .. } => (*op, set.name.as_str(), option.as_ref().map(|o| o.1)),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(writes, [(SetOp::Add, "banned", Some(3600)), (SetOp::Delete, "banned", None), (SetOp::Add, "plain", None)]);
    // Elements given to a dynamic set parse, for the checker to refuse.
    let items = parse_ok("set banned: ip dynamic = { 198.18.0.1 }\nxdp { drop }");
    let Item::Set(d) = &items[0] else { panic!("{:?}", items[0]) };
    assert!(d.dynamic.as_ref().is_some_and(|x| x.init.is_some()));
    // The words are names elsewhere.
    assert!(matches!(parse_ok("set dynamic: ip = {}\nconst timeout = 3\nset add: int = {}\nxdp /ip.src in dynamic && tcp.dport in add/ { drop }").len(), 4));
    assert!(parse("xdp { add(banned) }", FileId(0)).is_err());
    assert!(parse("set x: ip dynamic timeout 10", FileId(0)).is_err());
}
