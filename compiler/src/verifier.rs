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
    let idx = lines.iter().rposition(|l| {
        let (n, rest) = l.split_once(": (").unwrap_or(("", ""));
        !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) && !rest.is_empty()
    })?;
    let insn: usize = lines[idx].split(':').next()?.parse().ok()?;
    let message: Vec<&str> = lines[idx + 1..]
        .iter()
        .copied()
        .take_while(|l| !l.starts_with("verification time") && !l.starts_with("processed "))
        .filter(|l| !l.trim().is_empty())
        .collect();
    Some((insn, message.join("\n")))
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
        patterns: &["program of this type cannot use helper", "unknown func"],
        cause: "the program calls a kernel helper that this hook or this kernel does not offer",
        help: "use this statement from a hook that supports it, or a newer kernel",
    },
    Class {
        code: "xpol::verifier::gpl_only",
        patterns: &["cannot call GPL-restricted function"],
        cause: "the program calls a helper reserved for GPL programs",
        help: "xpol objects declare the GPL license; an object whose license section was changed cannot call this helper",
    },
    Class {
        code: "xpol::verifier::map_too_large",
        patterns: &["E2BIG", "Argument list too long"],
        cause: "a map is larger than the kernel allows",
        help: "reduce the size of the set or `@map`",
    },
];

/// The span codegen emitted at a line-info position, preferring the
/// innermost (shortest) expression there.
fn span_at(located: &[Located], sources: &SourceMap, info: &LineInfo) -> Option<Span> {
    let file = sources.files().find(|(_, f)| f.path.as_ref().is_some_and(|p| p.display().to_string() == info.file))?.0;
    located
        .iter()
        .filter(|l| l.file == file && l.line == info.line && l.col == info.col)
        .map(|l| l.span)
        .min_by_key(|s| s.len())
        .or_else(|| {
            // No expression starts there: the whole line.
            let f = sources.get(file);
            let start = offset_of_line(&f.text, info.line);
            Some(Span::new(file, start, start + f.line_text(info.line).len()))
        })
}

fn offset_of_line(text: &str, line: u32) -> usize {
    text.split_inclusive('\n').take(line.saturating_sub(1) as usize).map(str::len).sum()
}

/// The policy span of instruction `insn` of program section `section`.
pub fn span_of_insn(object: &[u8], section: &str, insn: usize, located: &[Located], sources: &SourceMap) -> Option<Span> {
    let info = line_info(object).into_iter().filter(|l| l.section == section && l.insn <= insn).max_by_key(|l| l.insn)?;
    span_at(located, sources, &info)
}

/// Turns a verifier rejection of `program` (its ELF section, e.g. `xdp`)
/// into a diagnostic at the policy expression the failing instruction came
/// from. `verbose` adds the last lines of the log.
pub fn explain(program: &str, section: &str, log: &str, object: &[u8], located: &[Located], sources: &SourceMap, verbose: bool) -> Diagnostic {
    let (insn, message) = failing_insn(log).unwrap_or((0, log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string()));
    let class = CATALOG.iter().find(|c| c.patterns.iter().any(|p| log.contains(p)));
    let mut d = match class {
        Some(c) => Diagnostic::error(c.code, format!("the kernel verifier rejected `{program}`: {}", c.cause)).with_help(c.help),
        None => Diagnostic::error("xpol::verifier", format!("the kernel verifier rejected `{program}`"))
            .with_help("this rejection is not in xpol's catalog; the verifier's words are above"),
    };
    if let Some(span) = span_of_insn(object, section, insn, located, sources) {
        d = d.with_label(span, format!("instruction {insn}: {}", message.lines().next().unwrap_or("rejected here")));
    }
    if verbose {
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(12)..].join("\n");
        d.help = Some(format!("{}\n\nverifier log (last lines):\n{tail}", d.help.unwrap_or_default()));
    } else if class.is_none() {
        d.help = Some(format!("the verifier said: {message}"));
    }
    d
}
