//! No input makes the compiler panic, and every failure is reported with a
//! span: random token sequences and byte-level mutations of real policies
//! go through the whole pipeline (objects built when they check).

mod common;

use common::Rng;
use std::path::Path;


const TOKENS: &[&str] = &[
    "xdp", "tc:ingress", "tc:egress", "/", "{", "}", "(", ")", "[", "]", ",", ";", "\n", "pass", "drop", "tx", "abort", "redirect", "if", "else",
    "let", "set", "const", "include", "in", "!in", "&&", "||", "!", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "%", "&", "|", "^", "~", "<<",
    ">>", "..", "=", "@m", "@n", "count()", "sum(", "ip.src", "ip.dst", "tcp.dport", "udp.sport", "ip.frag", "vlan.id", "eth.src", "pkt.len",
    "x", "y", "s", "22", "0", "65535", "18446744073709551615", "99999999999999999999", "10.0.0.0/8", "1.2.3.4", "300.1.1.1", "2001:db8::/32",
    "::1", "fe80::", "02:00:00:00:00:01", "0x86dd", "true", "false", ":", "cidr", "int", "mac", "\"std/bogons.xpol\"", "\"nope\"", "file(",
    "map", "max", "4",
];

fn check_one(dir: &Path, i: usize, text: &str) {
    let path = dir.join(format!("r{i}.xpol"));
    std::fs::write(&path, text).expect("write");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    if b.output.is_none() {
        assert!(b.diagnostics.iter().any(|d| d.is_error()), "failed without an error for {text:?}");
        for d in &b.diagnostics {
            assert!(!d.labels.is_empty(), "diagnostic without a span for {text:?}: {d:?}");
        }
        // Rendering must not panic either.
        let _ = xpol_lang::render::render_human(&b.diagnostics, &b.sources, false);
        let _ = xpol_lang::render::render_json(&b.diagnostics, &b.sources);
    }
}

#[test]
fn random_token_sequences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for i in 0..600 {
        let n = 1 + rng.next() % 40;
        let text: Vec<&str> = (0..n).map(|_| rng.pick(TOKENS)).collect();
        check_one(dir.path(), i, &text.join(" "));
    }
}

#[test]
fn mutated_policies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(0xfeed_beef_0bad_f00d);
    let sources: Vec<String> = ["examples/firewall.xpol", "examples/edge.xpol", "tests/golden/ok/logic.xpol", "tests/golden/ok/maps.xpol"]
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect();
    for i in 0..300 {
        let mut bytes = sources[i % sources.len()].clone().into_bytes();
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() % bytes.len() as u64) as usize;
            match rng.next() % 3 {
                0 => bytes[at] = b"{}()[]/;,.:@!&|=<>0123456789 \n\"xy"[(rng.next() % 33) as usize],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, rng.pick(TOKENS).as_bytes()[0]),
            }
        }
        check_one(dir.path(), i, &String::from_utf8_lossy(&bytes));
    }
}

/// Found by the generated differential test: a `sum` LLVM proves zero, on a
/// map the policy reads (so updated atomically), became an atomic load that
/// the BPF backend of LLVM 14 cannot select, and LLVM aborted the process.
#[test]
fn a_sum_of_zero_on_a_shared_map_compiles() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, text) in [
        "xdp { @m[ip.src] = sum(0) }\nxdp /@m[ip.dst] >= 3/ { drop }",
        "xdp { @m[ip4.src] = sum(ip4.ihl / 64) }\nxdp /@m[ip6.dst] >= 3/ { drop }",
        "xdp { @m = sum(ip4.ihl & 0x30); if (@m > 1) { drop } }",
    ]
    .iter()
    .enumerate()
    {
        let path = dir.path().join(format!("z{i}.xpol"));
        std::fs::write(&path, text).expect("write");
        let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
        assert!(b.output.is_some(), "{text}: {:?}", b.diagnostics);
    }
}

/// Found by the `parse` fuzz target: the syntax error quoted the first 20
/// bytes of the unexpected token and could cut a character in two. It now
/// quotes at most 20 characters, escaped.
#[test]
fn a_syntax_error_inside_multibyte_text_is_quoted_whole() {
    let fuzzed = "z\0\0\0/tcp*/.dport/\u{784}\u{7db}rip4.\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0dfo";
    for text in ["xdp { aéééééééééééé }", fuzzed] {
        let d = xpol_lang::parser::parse(text, xpol_lang::FileId(0)).expect_err("a syntax error");
        let span = d[0].labels[0].span;
        assert!(text.is_char_boundary(span.start as usize) && text.is_char_boundary(span.end as usize), "{:?}", d[0]);
    }
    let d = xpol_lang::parser::parse("xdp { aéééééééééééé }", xpol_lang::FileId(0)).expect_err("a syntax error");
    assert!(d[0].message.contains("found `aéééééééééééé`"), "{}", d[0].message);
    let d = xpol_lang::parser::parse("xdp { aééééééééééééééééééééé }", xpol_lang::FileId(0)).expect_err("a syntax error");
    assert!(d[0].message.contains("found `aééééééééééééééééééé…`"), "{}", d[0].message);
}

/// Found by the policy generator: a read of `@m` before its first update
/// fixed the map's kind as "assigned", so a later `count()` was refused as
/// a second kind of update. Reads fix only the keys; the first update fixes
/// the kind, and a conflict points at that update.
#[test]
fn a_map_read_before_its_first_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.xpol");
    std::fs::write(&path, "xdp /@m[ip.src] > 1/ { drop }\nxdp { @m[ip.src] = count() }\nxdp /@n > 0/ { pass }\n").expect("write");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    let out = b.output.unwrap_or_else(|| panic!("{:?}", b.diagnostics));
    assert_eq!(out.ir.maps[0].value, xpol_lang::meta::MapValueKind::Count);
    assert!(out.ir.maps[0].read);
    let text = "xdp /@m[ip.src] > 1/ { drop }\nxdp { @m[ip.src] = count() }\nxdp { @m[ip.src] = 5 }\n";
    std::fs::write(&path, text).expect("write");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    let d = b.diagnostics.iter().find(|d| d.code == "xpol::map::value").expect("a conflict");
    let first = d.labels[1].span;
    assert_eq!(first.start as usize, text.find("m[ip.src] = count").expect("the count"), "{d:?}");
}

/// Map expectations in test cases: resolved against the maps of the rules
/// above, keys typed as the map's keys; mistakes point at the expectation.
#[test]
fn map_expectations_in_test_cases_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.xpol");
    let head = "xdp /tcp.dport == 22/ { @seen[ip.src] = count() }\ntest \"t\" {\n";
    let ok = format!("{head}    tcp(src: 198.18.0.1, dport: 22) => pass, @seen[198.18.0.1] == 1\n}}\n");
    std::fs::write(&path, &ok).expect("write");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    let out = b.output.unwrap_or_else(|| panic!("{:?}", b.diagnostics));
    assert_eq!(out.ir.tests[0].maps.len(), 1);
    assert_eq!(out.ir.tests[0].maps[0].value, 1);
    for (case, culprit) in [("@nope[1] == 1", "nope"), ("@seen[22] == 1", "22"), ("@seen == 1", "seen"), ("@seen[198.18.0.1] == 1.2.3.4", "1.2.3.4")] {
        let text = format!("{head}    tcp(dport: 22) => pass, {case}\n}}\n");
        std::fs::write(&path, &text).expect("write");
        let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
        assert!(b.output.is_none(), "{case} compiled");
        let d = b.diagnostics.iter().find(|d| d.is_error()).expect("an error");
        let s = d.labels[0].span;
        assert_eq!(&text[s.start as usize..s.end as usize], culprit, "{case}: {d:?}");
    }
}

/// `map @NAME max N`: the capacity reaches the IR and the object's
/// metadata (with the map's lost-update counter slot after the rules'),
/// wherever the declaration stands; an undeclared map keeps the default
/// and a map without keys has one entry. Each mistake is reported at its
/// declaration, all of them at once, and a map whose only use failed to
/// check is not also called unused.
#[test]
fn map_capacity_declarations_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.xpol");
    let text = "xdp { @a[ip.src] = count(); @b[tcp.dport] = 1; @c = count() }\nmap @a max 4\nxdp { pass }\n";
    std::fs::write(&path, text).expect("write");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    let out = b.output.unwrap_or_else(|| panic!("{:?}", b.diagnostics));
    let entries: Vec<(Option<u32>, u32)> = out.ir.maps.iter().map(|m| (m.capacity, m.entries())).collect();
    assert_eq!(entries, [(Some(4), 4), (None, xpol_compiler::ir::DEFAULT_MAP_ENTRIES), (None, 1)]);
    let meta: Vec<(u32, Option<u32>)> = out.meta.maps.iter().map(|m| (m.max_entries, m.lost_slot)).collect();
    assert_eq!(meta, [(4, Some(2)), (10_240, Some(3)), (1, Some(4))], "two rules, then one lost-update slot per map");
    assert_eq!(out.meta.counter_slots(), 5);

    let text = "map @a max 0\nmap @b max 1048577\nmap @c max 3\nmap @a max 2\nmap @zz max 5\nmap @d max 5\nxdp { @a[ip.src] = count(); @b[ip.src] = count(); @c = count(); @d[nope] = 1 }\n";
    std::fs::write(&path, text).expect("write");
    let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
    assert!(b.output.is_none());
    let found: Vec<(&str, &str)> = b
        .diagnostics
        .iter()
        .filter(|d| d.code.starts_with("xpol::map"))
        .map(|d| (d.code.as_str(), &text[d.labels[0].span.start as usize..d.labels[0].span.end as usize]))
        .collect();
    assert_eq!(
        found,
        [
            ("xpol::map::max", "max 0"),
            ("xpol::map::max", "max 1048577"),
            ("xpol::map::keyless", "map @c max 3"),
            ("xpol::map::duplicate", "a"),
            ("xpol::map::unused", "zz"),
        ],
        "{:?}",
        b.diagnostics
    );
    assert!(b.diagnostics.iter().any(|d| d.code == "xpol::name::unknown"), "the failed use of @d is reported, and @d is not unused");
}
