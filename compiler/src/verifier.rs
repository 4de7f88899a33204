//! Verifier feedback as source diagnostics: when the kernel rejects a
//! program, find the failing instruction in the verifier's log, map it
//! through the object's `.BTF.ext` line info to a line and column of the
//! policy, then to the expression codegen emitted there, and say in policy
//! terms what went wrong.

use crate::codegen::Located;
use object::{Object, ObjectSection};
use xpol_lang::{Diagnostic, SourceMap, Span};

/// One `.BTF.ext` line-info record: instruction index (in its section) and
/// source position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineInfo {
    pub section: String,
    pub insn: usize,
    pub file: String,
    pub line: u32,
    pub col: u32,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn c_str(b: &[u8], o: usize) -> String {
    let s = b.get(o..).unwrap_or(&[]);
    let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
    String::from_utf8_lossy(&s[..end]).into_owned()
}

/// Reads the line info of every program section of a BPF object.
pub fn line_info(object: &[u8]) -> Vec<LineInfo> {
    parse_line_info(object).unwrap_or_default()
}

fn parse_line_info(object: &[u8]) -> Option<Vec<LineInfo>> {
    let file = object::File::parse(object).ok()?;
    let btf = file.section_by_name(".BTF")?.data().ok()?;
    let ext = file.section_by_name(".BTF.ext")?.data().ok()?;
    // struct btf_header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
    if u16_at(btf, 0)? != 0xeb9f || u16_at(ext, 0)? != 0xeb9f {
        return None;
    }
    let strings = &btf[(u32_at(btf, 4)? + u32_at(btf, 16)?) as usize..];
    // struct btf_ext_header: magic, version, flags, hdr_len, func_info_off,
    // func_info_len, line_info_off, line_info_len, ...
    let hdr_len = u32_at(ext, 4)? as usize;
    let start = hdr_len + u32_at(ext, 16)? as usize;
    let end = start + u32_at(ext, 20)? as usize;
    let rec_size = u32_at(ext, start)? as usize;
    let mut o = start + 4;
    let mut out = Vec::new();
    while o + 8 <= end {
        let section = c_str(strings, u32_at(ext, o)? as usize);
        let n = u32_at(ext, o + 4)? as usize;
        o += 8;
        for _ in 0..n {
            let line_col = u32_at(ext, o + 12)?;
            out.push(LineInfo {
                section: section.clone(),
                insn: u32_at(ext, o)? as usize / 8,
                file: c_str(strings, u32_at(ext, o + 4)? as usize),
                line: line_col >> 10,
                col: line_col & 0x3ff,
            });
            o += rec_size;
        }
    }
    Some(out)
}

/// The instruction the verifier stopped at, and its message: the last
/// `N: (op) ...` line of the log, and the lines after it.
pub fn failing_insn(log: &str) -> Option<(usize, String)> {
    let lines: Vec<&str> = log.lines().collect();
    let idx = failing_line(&lines)?;
    let insn: usize = lines[idx].split(':').next()?.parse().ok()?;
    let message: Vec<&str> = lines[idx + 1..]
        .iter()
        .copied()
        .take_while(|l| !l.starts_with("verification time") && !l.starts_with("processed "))
        .filter(|l| !l.trim().is_empty())
        .collect();
    Some((insn, message.join("\n")))
}

/// Index of the last `N: (op) ...` line of the log.
fn failing_line(lines: &[&str]) -> Option<usize> {
    lines.iter().rposition(|l| {
        let (n, rest) = l.split_once(": (").unwrap_or(("", ""));
        !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) && !rest.is_empty()
    })
}

/// The few lines of a verifier log that matter: the last instructions the
/// verifier walked before it stopped (with the `; source @ file:line` lines
/// among them), and its message. Register-state dumps are left out and
/// long lines cut.
pub fn relevant_lines(log: &str) -> Vec<String> {
    const BEFORE: usize = 6;
    let lines: Vec<&str> = log.lines().collect();
    let cut = |l: &str| if l.chars().count() > 160 { format!("{}...", l.chars().take(160).collect::<String>()) } else { l.to_string() };
    let Some(idx) = failing_line(&lines) else {
        let mut tail: Vec<String> = lines.iter().rev().filter(|l| !l.trim().is_empty()).take(BEFORE).map(|l| cut(l)).collect();
        tail.reverse();
        return tail;
    };
    // `R1=ctx() R10=fp0`, `12: R0_w=scalar()`, `from 3 to 7: ...`
    let is_state = |l: &&str| {
        let rest = l.split_once(": ").filter(|(n, _)| n.chars().all(|c| c.is_ascii_digit())).map_or(*l, |(_, r)| r);
        l.starts_with("from ") || (rest.starts_with('R') && rest[1..].starts_with(|c: char| c.is_ascii_digit()))
    };
    let mut out: Vec<String> = lines[..idx].iter().rev().filter(|l| !l.trim().is_empty() && !is_state(l)).take(BEFORE).map(|l| cut(l)).collect();
    out.reverse();
    out.push(cut(lines[idx]));
    out.extend(
        lines[idx + 1..]
            .iter()
            .take_while(|l| !l.starts_with("verification time") && !l.starts_with("processed "))
            .filter(|l| !l.trim().is_empty())
            .take(4)
            .map(|l| cut(l)),
    );
    out
}

/// A verifier rejection class: a code, the cause in policy terms, and what
/// to do about it.
struct Class {
    code: &'static str,
    patterns: &'static [&'static str],
    cause: &'static str,
    help: &'static str,
}

const CATALOG: &[Class] = &[
    Class {
        code: "xpol::verifier::packet_bounds",
        patterns: &["invalid access to packet", "outside of the packet"],
        cause: "the program reads packet bytes that it has not proven to lie inside the packet",
        help: "xpol checks every header against the packet's end before reading it, so this is a bug in xpol's code generation: please report it with this policy",
    },
    Class {
        code: "xpol::verifier::null_check",
        patterns: &["map_value_or_null", "invalid mem access 'scalar'"],
        cause: "a map lookup's result is used without checking that the key was found",
        help: "this is a bug in xpol's code generation (a missing null check): please report it with this policy",
    },
    Class {
        code: "xpol::verifier::too_complex",
        patterns: &["is too complex", "BPF program is too large", "too many states", "processed 1000001 insns", "jump out of range"],
        cause: "the program has more branches or paths than the kernel verifier will follow (1,000,000 processed instructions, 8,192 jumps in a row)",
        help: "move long literal sets into a named `set` (a map looked up once) or fewer rules; `xpolc check --kernel` shows the verifier's statistics",
    },
    Class {
        code: "xpol::verifier::stack",
        patterns: &["stack size", "stack limit", "invalid indirect read from stack", "invalid write to stack"],
        cause: "the program uses more than the 512 bytes of stack a BPF program has",
        help: "use fewer map keys with many components in one rule, or split the rule",
    },
    Class {
        code: "xpol::verifier::unbounded_loop",
        patterns: &["back-edge", "infinite loop", "loop is not bounded"],
        cause: "the program contains a loop the verifier cannot prove to end",
        help: "this is a bug in xpol's code generation: please report it with this policy",
    },
    Class {
        code: "xpol::verifier::helper_not_allowed",
        // "unknown func": kernels before 5.x said so for a helper the
        // program type does not offer.
        patterns: &["program of this type cannot use helper", "unknown func"],
        cause: "the program calls a kernel helper that this hook does not offer",
        help: "use this statement from a hook that supports it (`xdp`, `tc:ingress`, `tc:egress` offer different helpers)",
    },
    Class {
        code: "xpol::verifier::kernel_lacks",
        patterns: &["invalid func"],
        cause: "the program calls a kernel helper that this kernel does not have",
        help: "run on a newer kernel, or avoid the statement that needs this helper",
    },
    Class {
        code: "xpol::verifier::no_atomics",
        // Linux before 5.12 knows BPF_XADD (an atomic add) only, and says
        // so of any other atomic operation.
        patterns: &["BPF_XADD uses reserved fields", "invalid atomic operation"],
        cause: "the program takes tokens from a `limit(...)` bucket with an atomic compare-and-exchange (BPF_CMPXCHG), and this kernel has no BPF atomics but add: they need Linux 5.12 or newer",
        help: "run on Linux 5.12 or newer, or leave `limit(...)` out of the policy for this kernel",
    },
    Class {
        code: "xpol::verifier::gpl_only",
        patterns: &["cannot call GPL-restricted function"],
        cause: "the program calls a helper reserved for GPL programs",
        help: "xpol objects declare the GPL license; an object whose license section was changed cannot call this helper",
    },
    Class {
        code: "xpol::verifier::too_long_once_rewritten",
        patterns: &["cannot be patched due to 16-bit range"],
        cause: "the program is too long once the kernel has rewritten it: inlining map lookups (several instructions each) pushed a jump past the 32,767 instructions a BPF jump can span",
        help: "this limit only the kernel can check (it removes unreachable code first, then inlines): put long literal sets in a `set`, merge rules with the same verdict with `in { ... }`, or use fewer `@map` updates in this hook",
    },
    Class {
        code: "xpol::verifier::too_many_maps",
        patterns: &["number of maps per program has reached the limit"],
        cause: "the program uses more maps than the kernel allows one program (64): each `@map` is a map, and so is the IPv6 part of each named or large constant set and each set of ports, integers or MACs (all IPv4 parts share three), besides the few xpol uses itself (rule counters, and parsed facts in long policies)",
        help: "merge sets of one element type into one set, or use fewer `@maps` in this hook",
    },
    Class {
        code: "xpol::verifier::map_too_large",
        patterns: &["E2BIG", "Argument list too long"],
        cause: "a map is larger than the kernel allows",
        help: "reduce the size of the set or `@map`",
    },
];

/// Kernel helpers by id (`enum bpf_func_id`): name and the Linux version
/// that added them. Not every helper: the ones xpol uses, the ones its
/// tests call, and common network ones.
pub const HELPERS: &[(u32, &str, &str)] = &[
    (1, "bpf_map_lookup_elem", "3.19"),
    (2, "bpf_map_update_elem", "3.19"),
    (3, "bpf_map_delete_elem", "3.19"),
    (4, "bpf_probe_read", "4.1"),
    (5, "bpf_ktime_get_ns", "4.1"),
    (6, "bpf_trace_printk", "4.1"),
    (7, "bpf_get_prandom_u32", "4.1"),
    (9, "bpf_skb_store_bytes", "4.1"),
    (12, "bpf_tail_call", "4.2"),
    (18, "bpf_skb_vlan_push", "4.3"),
    (23, "bpf_redirect", "4.4"),
    (39, "bpf_skb_pull_data", "4.9"),
    (44, "bpf_xdp_adjust_head", "4.10"),
    (51, "bpf_redirect_map", "4.14"),
    (54, "bpf_xdp_adjust_meta", "4.15"),
    (65, "bpf_xdp_adjust_tail", "4.18"),
    (69, "bpf_fib_lookup", "4.18"),
    (26, "bpf_skb_load_bytes", "4.5"),
    (130, "bpf_ringbuf_output", "5.8"),
    (131, "bpf_ringbuf_reserve", "5.8"),
    (132, "bpf_ringbuf_submit", "5.8"),
    (133, "bpf_ringbuf_discard", "5.8"),
    (160, "bpf_ktime_get_coarse_ns", "5.11"),
    (188, "bpf_xdp_get_buff_len", "5.18"),
    (189, "bpf_xdp_load_bytes", "5.18"),
];

/// Helpers that only `log` statements call: a kernel without them says
/// so of the `log`.
const LOG_HELPERS: [u32; 4] = [131, 132, 26, 189];

/// Map types by id (`enum bpf_map_type`): name and the Linux version that
/// added them.
pub const MAP_TYPES: &[(u32, &str, &str)] = &[
    (1, "BPF_MAP_TYPE_HASH", "3.19"),
    (2, "BPF_MAP_TYPE_ARRAY", "3.19"),
    (5, "BPF_MAP_TYPE_PERCPU_HASH", "4.6"),
    (6, "BPF_MAP_TYPE_PERCPU_ARRAY", "4.6"),
    (9, "BPF_MAP_TYPE_LRU_HASH", "4.10"),
    (11, "BPF_MAP_TYPE_LPM_TRIE", "4.11"),
    (14, "BPF_MAP_TYPE_DEVMAP", "4.14"),
    (16, "BPF_MAP_TYPE_CPUMAP", "4.15"),
    (17, "BPF_MAP_TYPE_XSKMAP", "4.18"),
    (27, "BPF_MAP_TYPE_RINGBUF", "5.8"),
    (30, "BPF_MAP_TYPE_BLOOM_FILTER", "5.16"),
];

/// Name and first Linux version of helper `id`, when known.
pub fn helper_info(id: u32) -> Option<(&'static str, &'static str)> {
    HELPERS.iter().find(|h| h.0 == id).map(|h| (h.1, h.2))
}

/// Name and first Linux version of map type `id`, when known.
pub fn map_type_info(id: u32) -> Option<(&'static str, &'static str)> {
    MAP_TYPES.iter().find(|h| h.0 == id).map(|h| (h.1, h.2))
}

/// The helper a verifier message names, as in `cannot use helper
/// bpf_skb_store_bytes#9` or `invalid func unknown#999`: its id.
fn helper_named(message: &str) -> Option<u32> {
    message.split_whitespace().filter_map(|w| w.rsplit_once('#')).find_map(|(_, n)| n.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok())
}

/// A helper in words: `bpf_trace_printk` (helper 6, Linux 4.1).
fn describe_helper(id: u32) -> String {
    match helper_info(id) {
        Some((name, version)) => format!("`{name}` (helper {id}, added in Linux {version})"),
        None => format!("helper {id} (unknown to xpol: newer than every helper it knows, or no helper at all)"),
    }
}

/// The `license` section of an object, as text.
fn object_license(object: &[u8]) -> Option<String> {
    let file = object::File::parse(object).ok()?;
    let data = file.section_by_name("license")?.data().ok()?;
    Some(c_str(data, 0))
}

/// The class-specific words added to a catalog cause: which helper, which
/// hook, which license.
fn detail(code: &str, message: &str, section: &str, object: &[u8]) -> Option<String> {
    let id = helper_named(message);
    let hook = match section {
        "xdp" => "XDP programs",
        "classifier" => "TC classifiers",
        _ => "programs of this type",
    };
    match code {
        "xpol::verifier::helper_not_allowed" => Some(format!("{}, which {hook} cannot call", describe_helper(id?))),
        "xpol::verifier::kernel_lacks" => {
            let id = id?;
            let user = if LOG_HELPERS.contains(&id) { ", which `log` writes its records with," } else { "" };
            Some(match helper_info(id) {
                Some((name, version)) => format!("`{name}` (helper {id}){user} needs Linux {version} or newer"),
                None => format!("this kernel has no helper {id}, and xpol knows no kernel that has one"),
            })
        }
        "xpol::verifier::gpl_only" => {
            let license = object_license(object).unwrap_or_default();
            Some(match id {
                Some(id) => format!("{} is GPL-only and the object's license is `{license}`", describe_helper(id)),
                None => format!("the object's license is `{license}`"),
            })
        }
        _ => None,
    }
}

/// The spans codegen emitted, by the line-info position LLVM wrote for
/// them: what a line-info record of the object stands for in the policy.
struct SpanIndex<'s> {
    sources: &'s SourceMap,
    /// Each source file by the name its line info gives it
    /// ([`debug_file_name`]).
    files: std::collections::HashMap<String, xpol_lang::FileId>,
    /// The innermost (shortest) span located at each position.
    spans: std::collections::HashMap<(xpol_lang::FileId, u32, u32), Span>,
}

impl<'s> SpanIndex<'s> {
    fn new(located: &[Located], sources: &'s SourceMap) -> SpanIndex<'s> {
        let files = sources.files().map(|(id, f)| (debug_file_name(f), id)).collect();
        let mut spans = std::collections::HashMap::<_, Span>::new();
        for l in located {
            spans.entry((l.file, l.line, l.col)).and_modify(|s| if l.span.len() < s.len() { *s = l.span }).or_insert(l.span);
        }
        SpanIndex { sources, files, spans }
    }

    /// The span at a line-info position; the whole line when no
    /// expression starts there.
    fn at(&self, info: &LineInfo) -> Option<Span> {
        let file = *self.files.get(&info.file)?;
        self.spans.get(&(file, info.line, info.col)).copied().or_else(|| {
            let f = self.sources.get(file);
            let start = offset_of_line(&f.text, info.line);
            Some(Span::new(file, start, start + f.line_text(info.line).len()))
        })
    }
}

/// The file name a source file has in the object's line info: codegen
/// gives LLVM its path on disk (directory and name, which LLVM joins), or
/// its name alone when it has none (a policy read from stdin, the
/// standard library without a checkout).
fn debug_file_name(f: &xpol_lang::SourceFile) -> String {
    match &f.path {
        Some(p) => p.display().to_string(),
        None => f.name.clone(),
    }
}

fn offset_of_line(text: &str, line: u32) -> usize {
    text.split_inclusive('\n').take(line.saturating_sub(1) as usize).map(str::len).sum()
}

/// Where program `program` (its function's name) is in the object: its
/// section's name, and its first instruction and length in instructions.
/// Programs of one hook type share a section (both TC hooks are in
/// `classifier`), while the kernel and the verifier count a program's
/// instructions from its own start.
pub fn program_range(object: &[u8], program: &str) -> Option<(String, usize, usize)> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let file = object::File::parse(object).ok()?;
    let sym = file.symbols().find(|s| s.name() == Ok(program) && s.kind() == object::SymbolKind::Text)?;
    let section = file.section_by_index(sym.section_index()?).ok()?;
    Some((section.name().ok()?.to_string(), sym.address() as usize / 8, sym.size() as usize / 8))
}

/// The policy span of instruction `insn` of program `program` (counted
/// from the program's start, as the verifier does).
pub fn span_of_insn(object: &[u8], program: &str, insn: usize, located: &[Located], sources: &SourceMap) -> Option<Span> {
    let (section, start, len) = program_range(object, program)?;
    let at = start + insn.min(len.saturating_sub(1));
    let info = line_info(object).into_iter().filter(|l| l.section == section && l.insn >= start && l.insn <= at).max_by_key(|l| l.insn)?;
    SpanIndex::new(located, sources).at(&info)
}

/// The policy span of every instruction of program `program`, from its
/// start: where the line-info record in effect there (the program's last
/// one at or before it) points, as [`span_of_insn`] finds it; `None`
/// before the program's first record.
pub fn insn_spans(object: &[u8], program: &str, located: &[Located], sources: &SourceMap) -> Vec<Option<Span>> {
    let Some((section, start, len)) = program_range(object, program) else { return Vec::new() };
    let mut infos: Vec<LineInfo> = line_info(object).into_iter().filter(|l| l.section == section && (start..start + len).contains(&l.insn)).collect();
    infos.sort_by_key(|l| l.insn);
    let index = SpanIndex::new(located, sources);
    let mut spans = Vec::with_capacity(len);
    let (mut current, mut next) = (None, 0);
    for insn in start..start + len {
        while let Some(info) = infos.get(next).filter(|l| l.insn <= insn) {
            current = index.at(info);
            next += 1;
        }
        spans.push(current);
    }
    spans
}

/// Turns a verifier rejection of `program` (its ELF section, e.g. `xdp`)
/// into a diagnostic at the policy expression the failing instruction came
/// from. `verbose` adds the last lines of the log.
pub fn explain(program: &str, section: &str, log: &str, object: &[u8], located: &[Located], sources: &SourceMap, verbose: bool) -> Diagnostic {
    // Without instructions in the log (a check before the walk), the
    // message is its first line that is not a statistic.
    let stats = |l: &&str| ["verification time", "stack depth", "processed "].iter().any(|p| l.starts_with(p));
    let (mut insn, message) = failing_insn(log).unwrap_or_else(|| (0, log.lines().find(|l| !l.trim().is_empty() && !stats(l)).unwrap_or("").to_string()));
    let lines: Vec<&str> = log.lines().collect();
    // The failing instruction (a call names its helper) and the message
    // after it decide the class; the whole log only when they do not.
    let at = failing_line(&lines).map(|i| format!("{}\n{message}", lines[i])).unwrap_or_else(|| message.clone());
    let matches = |text: &str| CATALOG.iter().find(|c| c.patterns.iter().any(|p| text.contains(p)));
    let class = matches(&at).or_else(|| matches(log));
    if class.is_some_and(|c| c.code == "xpol::verifier::too_many_maps") {
        // The kernel names no instruction: it is the first use of the map
        // past the limit.
        let limit = message.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(64);
        insn = nth_map_use(object, program, limit).unwrap_or(insn);
    }
    if class.is_some_and(|c| c.code == "xpol::verifier::too_long_once_rewritten") {
        // "insn N cannot be patched due to 16-bit range": the rewriting
        // stops before any walk, and N is the instruction's index in the
        // program as loaded (the kernel's `orig_idx`).
        insn = patched_insn(log).unwrap_or(insn);
    }
    let mut d = match class {
        Some(c) => {
            let cause = match detail(c.code, &at, section, object) {
                Some(detail) => format!("{}: {detail}", c.cause),
                None => c.cause.to_string(),
            };
            Diagnostic::error(c.code, format!("the kernel verifier rejected `{program}`: {cause}")).with_help(c.help)
        }
        None => Diagnostic::error("xpol::verifier", format!("the kernel verifier rejected `{program}`"))
            .with_help("this rejection is not in xpol's catalog; the verifier's words are above"),
    };
    if let Some(span) = span_of_insn(object, program, insn, located, sources) {
        let first = message.lines().next().unwrap_or("rejected here");
        // "insn N cannot be patched ...": already names the instruction.
        let label = if first.starts_with(&format!("insn {insn} ")) { first.to_string() } else { format!("instruction {insn}: {first}") };
        d = d.with_label(span, label);
    }
    if class.is_none() {
        d.help = Some(format!("the verifier said: {message}"));
    }
    if verbose {
        d.help = Some(format!("{}\n\nverifier log (the lines that matter):\n{}", d.help.unwrap_or_default(), relevant_lines(log).join("\n")));
    }
    d
}

/// The instruction a "insn N cannot be patched due to 16-bit range" line
/// names.
fn patched_insn(log: &str) -> Option<usize> {
    log.lines().find_map(|l| l.trim().strip_prefix("insn ")?.strip_suffix(" cannot be patched due to 16-bit range")?.parse().ok())
}

/// The instruction of program `program` that first uses the `n`th map
/// (0-based) in instruction order: where the kernel, resolving map
/// references in that order, crosses its per-program map limit. Counted
/// from the program's start.
fn nth_map_use(object: &[u8], program: &str, n: usize) -> Option<usize> {
    first_map_uses(object, program).get(n).copied()
}

/// The maps program `program` uses, in the order the kernel resolves
/// them: for each, the instruction (from the program's start) that first
/// refers to it. Every symbol of `.maps` is a map, and each section of
/// global data (`.bss`, the IPv4 set tables; `.data`, the rule counters)
/// is one more.
pub fn first_map_uses(object: &[u8], program: &str) -> Vec<usize> {
    let mut seen: Vec<&str> = Vec::new();
    let refs = map_references(object, program);
    let mut firsts = Vec::new();
    for (insn, map) in &refs {
        if !seen.contains(&map.as_str()) {
            seen.push(map);
            firsts.push(*insn);
        }
    }
    firsts
}

/// Every instruction of program `program` (from its start, in order) that
/// refers to a map, with the map: the name of its symbol in `.maps`
/// (`xm_NAME` for `@NAME`, `xpol_...` for the sets' shared maps and xpol's
/// own), or of the section of global data it lies in (`.bss`, `.data`).
pub fn map_references(object: &[u8], program: &str) -> Vec<(usize, String)> {
    map_refs(object, program).unwrap_or_default()
}

fn map_refs(object: &[u8], program: &str) -> Option<Vec<(usize, String)>> {
    use object::ObjectSymbol;
    let (section, start, len) = program_range(object, program)?;
    let file = object::File::parse(object).ok()?;
    let maps = file.section_by_name(".maps")?.index();
    let globals: Vec<(object::SectionIndex, &str)> = [".bss", ".data"].iter().filter_map(|n| Some((file.section_by_name(n)?.index(), *n))).collect();
    let mut relocs: Vec<(u64, object::SymbolIndex)> = file
        .section_by_name(&section)?
        .relocations()
        .filter(|(off, _)| (start..start + len).contains(&(*off as usize / 8)))
        .filter_map(|(off, r)| match r.target() {
            object::RelocationTarget::Symbol(s) => Some((off, s)),
            _ => None,
        })
        .collect();
    relocs.sort_by_key(|r| r.0);
    let mut refs = Vec::new();
    for (off, sym) in relocs {
        let symbol = file.symbol_by_index(sym).ok()?;
        let map = match symbol.section_index() {
            Some(s) if s == maps => symbol.name().ok()?.to_string(),
            Some(s) => match globals.iter().find(|(g, _)| *g == s) {
                Some((_, name)) => name.to_string(),
                None => continue,
            },
            None => continue,
        };
        refs.push((off as usize / 8 - start, map));
    }
    Some(refs)
}

/// Turns the kernel's refusal of map `map` (creating it, or filling it with
/// a named set's elements) into a diagnostic at the `set` or `@map`
/// declaration the map was made for.
pub fn explain_map(map: &str, error: &std::io::Error, output: &crate::Output) -> Diagnostic {
    // A map the sets of a kind share: the set that takes most of it.
    let sets: Vec<&xpol_lang::meta::SetMeta> = output.meta.sets.iter().filter(|s| s.maps.iter().any(|m| m.map == map)).collect();
    let set = sets.iter().copied().max_by_key(|s| (s.capacity, std::cmp::Reverse(s.id)));
    let user = output.meta.maps.iter().find(|m| m.map == map);
    let (what, span) = if let Some(s) = set {
        let what = match sets.len() {
            1 => format!("set `{}`", s.name),
            n => format!("the {n} sets sharing a map, the largest set `{}`", s.name),
        };
        (what, output.ir.sets.iter().find(|n| n.name == s.name).map(|n| n.span))
    } else if let Some(u) = user {
        (format!("`@{}`", u.name), output.ir.maps.iter().find(|m| m.name == u.name).map(|m| m.span))
    } else if output.meta.log_ring.as_ref().is_some_and(|r| r.map == map) {
        ("the ring buffer of the `log` statements (BPF_MAP_TYPE_RINGBUF, Linux 5.8 or newer)".to_string(), output.ir.logs.first().map(|l| l.span))
    } else {
        (format!("map `{map}`"), None)
    };
    const E2BIG: i32 = 7;
    let mut d = if error.raw_os_error() == Some(E2BIG) {
        // E2BIG: more entries than `max_entries`, or a map larger than the
        // kernel allows.
        let elements = set.map(|s| format!(" ({} element{})", s.elements.len(), if s.elements.len() == 1 { "" } else { "s" })).unwrap_or_default();
        Diagnostic::error("xpol::verifier::map_too_large", format!("the kernel refused {what}{elements}: its map `{map}` is too large or full (E2BIG)"))
            .with_help("the kernel limits a map's entries and memory: make the set smaller or split it, or lower its `max`; a set without `max` has room for twice its initial elements (at least 1024)")
    } else {
        Diagnostic::error("xpol::kernel::map", format!("the kernel refused {what}, map `{map}`: {error}"))
            .with_help("the kernel's error is above; `xpolc check --kernel` tries the load without attaching")
    };
    if let Some(span) = span {
        d = d.with_label(span, format!("map `{map}` holds this"));
    }
    d
}
