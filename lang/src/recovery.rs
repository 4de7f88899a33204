//! What the parser needs to go on after a syntax error and to explain it:
//! where top-level items start, which brackets are still open, what a
//! malformed literal was meant to be, and which word a misspelt one was.
//! All of it is lexical: the text around a syntax error does not parse.

use crate::suggest::closest;
use std::ops::Range;

/// Words that start a top-level item. After a syntax error the parser goes
/// on at the next line that starts with one of them.
const ITEM_WORDS: &[&str] = &["xdp", "tc:", "set", "const", "pool", "map", "conntrack", "test", "include", "rule", "default"];

/// The words a top-level item starts with, as suggestions.
const ITEM_SUGGESTIONS: &[&str] = &["xdp", "tc:ingress", "tc:egress", "set", "const", "pool", "map", "conntrack", "test", "include", "rule", "default"];
const HOOKS: &[&str] = &["xdp", "tc:ingress", "tc:egress"];
const STATEMENT_WORDS: &[&str] = &["pass", "drop", "tx", "abort", "redirect", "lb", "log", "add", "delete", "if", "let"];
const EXPECT_WORDS: &[&str] = &["pass", "drop", "tx", "abort", "redirect", "lb"];

/// The characters of `text[from..to]` outside comments and string
/// literals (a string yields its opening quote only), with their offsets.
pub(crate) struct Code<'a> {
    text: &'a str,
    pos: usize,
    end: usize,
}

pub(crate) fn code(text: &str, from: usize, to: usize) -> Code<'_> {
    Code { text, pos: from.min(text.len()), end: to.min(text.len()) }
}

impl Iterator for Code<'_> {
    type Item = (usize, char);

    fn next(&mut self) -> Option<(usize, char)> {
        loop {
            let rest = self.text.get(self.pos..self.end)?;
            let c = rest.chars().next()?;
            let at = self.pos;
            if rest.starts_with("//") {
                // Up to the newline, which is code (it ends a line).
                self.pos += rest.find('\n').unwrap_or(rest.len());
            } else if let Some(comment) = rest.strip_prefix("/*") {
                self.pos += comment.find("*/").map_or(rest.len(), |i| i + 4);
            } else if c == '"' {
                // To the closing quote; a string does not span lines.
                let body = &rest[1..];
                let mut end = body.len();
                let mut escaped = false;
                for (i, b) in body.char_indices() {
                    match b {
                        '\n' => {
                            end = i;
                            break;
                        }
                        '"' if !escaped => {
                            end = i + 1;
                            break;
                        }
                        '\\' => escaped = !escaped,
                        _ => escaped = false,
                    }
                }
                self.pos += 1 + end;
                return Some((at, '"'));
            } else {
                self.pos += c.len_utf8();
                return Some((at, c));
            }
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The offsets where a line's first token is a word that starts a
/// top-level item, or a misspelling of one (`xpd`, `cosnt`), outside
/// comments and strings: where parsing may go on after a syntax error.
/// Sorted.
pub(crate) fn recovery_points(text: &str) -> Vec<usize> {
    let mut points = Vec::new();
    let mut line_start = true;
    for (at, c) in code(text, 0, text.len()) {
        if c == '\n' {
            line_start = true;
        } else if c.is_whitespace() || (at == 0 && c == '\u{feff}') {
        } else {
            if line_start && starts_item(text, at) {
                points.push(at);
            }
            line_start = false;
        }
    }
    points
}

fn starts_item(text: &str, at: usize) -> bool {
    let rest = &text[at..];
    if ITEM_WORDS.iter().any(|w| rest.starts_with(w) && (w.ends_with(':') || !rest[w.len()..].starts_with(is_name_char))) {
        return true;
    }
    // A statement's first word may be close to an item's (`let`, `set`).
    let word = word_at(text, at, true);
    word == "tc" || (!STATEMENT_WORDS.contains(&word) && closest(word, ITEM_SUGGESTIONS.iter().copied()).is_some())
}

/// The brackets opened in `text[from..to]` and not closed there, outermost
/// first: `(offset, bracket)`.
pub(crate) fn unclosed(text: &str, from: usize, to: usize) -> Vec<(usize, char)> {
    let mut open: Vec<(usize, char)> = Vec::new();
    for (at, c) in code(text, from, to) {
        let opener = match c {
            '(' | '[' | '{' => {
                open.push((at, c));
                continue;
            }
            ')' => '(',
            ']' => '[',
            '}' => '{',
            _ => continue,
        };
        // A closer closes the innermost bracket of its kind (a stray one
        // closes nothing).
        if let Some(i) = open.iter().rposition(|&(_, o)| o == opener) {
            open.truncate(i);
        }
    }
    open
}

pub(crate) fn closer(open: char) -> char {
    match open {
        '(' => ')',
        '[' => ']',
        _ => '}',
    }
}

/// True when `text[..to]` holds only blank space, comments and a byte
/// order mark.
pub(crate) fn only_trivia_before(text: &str, to: usize) -> bool {
    code(text, 0, to).all(|(at, c)| c.is_whitespace() || (at == 0 && c == '\u{feff}'))
}

/// True when `text[from..]` holds only blank space and comments.
pub(crate) fn only_trivia_after(text: &str, from: usize) -> bool {
    code(text, from, text.len()).all(|(_, c)| c.is_whitespace())
}

/// A malformed address literal around `at` (where the parser stopped: often
/// inside it, as `02` of `02:00:00:00:00:0g` parses as a number).
pub(crate) struct BadLiteral {
    pub span: Range<usize>,
    pub message: String,
    pub label: &'static str,
    pub help: String,
}

fn is_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == ':' || c == '.'
}

pub(crate) fn bad_literal(text: &str, at: usize) -> Option<BadLiteral> {
    if at > text.len() || !text.is_char_boundary(at) {
        return None;
    }
    // The literal-like run of characters around `at` (ASCII, so byte
    // arithmetic stays on character boundaries).
    let start = text[..at].char_indices().rev().take_while(|&(_, c)| is_literal_char(c)).last().map_or(at, |(i, _)| i);
    let end = at + text[at..].find(|c: char| !is_literal_char(c)).unwrap_or(text.len() - at);
    let run = &text[start..end];
    let first = run.chars().next()?;
    if !(first.is_ascii_hexdigit() || first == ':') {
        return None;
    }
    let (message, label, help) = if run.contains(':') {
        if run.parse::<std::net::Ipv6Addr>().is_ok() {
            return None;
        }
        let groups: Vec<&str> = run.split(':').collect();
        if groups.len() == 6 && groups.iter().all(|g| (1..=2).contains(&g.len())) {
            if groups.iter().all(|g| g.len() == 2 && g.chars().all(|c| c.is_ascii_hexdigit())) {
                return None;
            }
            let bad = groups.iter().find(|g| g.len() != 2 || !g.chars().all(|c| c.is_ascii_hexdigit())).copied().unwrap_or(run);
            (
                format!("`{run}` is not a MAC address"),
                "not a MAC address",
                format!("`{bad}` is not a pair of hex digits: a MAC address is six pairs separated by `:`, such as `02:00:00:00:00:01`"),
            )
        } else {
            let why = if run.contains(":::") || run.matches("::").count() > 1 {
                "`::` stands for one run of zero groups and may appear once".to_string()
            } else if let Some(g) = groups.iter().find(|g| g.len() > 4 && !g.contains('.')) {
                format!("`{g}` has more than four hex digits")
            } else if let Some(g) = groups.iter().find(|g| !g.contains('.') && !g.chars().all(|c| c.is_ascii_hexdigit())) {
                format!("`{g}` is not hexadecimal")
            } else if groups.len() > 8 {
                format!("it has {} groups, more than eight", groups.len())
            } else if !run.contains("::") && groups.len() < 8 {
                format!("it has {} groups: write all eight, or `::` for a run of zero groups", groups.len())
            } else {
                "it is not of the form IPv6 addresses take".to_string()
            };
            (
                format!("`{run}` is not an IPv6 address"),
                "not an IPv6 address",
                format!("{why}; an IPv6 address is eight groups of up to four hex digits separated by `:`, such as `2001:db8:0:0:0:0:0:1`, or `2001:db8::1`"),
            )
        }
    } else if run.contains('.') && first.is_ascii_digit() && !run.contains("..") {
        let parts: Vec<&str> = run.split('.').collect();
        let why = if parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())) {
            return Some(BadLiteral {
                span: start..end,
                message: format!("`{run}` is not a number xpol knows"),
                label: "not an integer or an address",
                help: "numbers are integers (`1500`, `0x86dd`); an IPv4 address has four parts (`198.51.100.7`)".to_string(),
            });
        } else if let Some(p) = parts.iter().find(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit())) {
            if p.is_empty() {
                "it has an empty part".to_string()
            } else {
                format!("`{p}` is not a decimal number")
            }
        } else if parts.len() != 4 {
            format!("it has {} parts", parts.len())
        } else if let Some(p) = parts.iter().find(|p| p.parse::<u16>().map_or(true, |v| v > 255)) {
            format!("`{p}` is over 255")
        } else {
            return None;
        };
        (format!("`{run}` is not an IPv4 address"), "not an IPv4 address", format!("{why}; an IPv4 address is four numbers from 0 to 255 separated by `.`, such as `198.51.100.7`"))
    } else {
        return None;
    };
    Some(BadLiteral { span: start..end, message, label, help })
}

/// What the parser expected where it stopped, for suggestions.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Expected {
    /// A top-level item (declaration or probe).
    pub item: bool,
    pub hook: bool,
    pub statement: bool,
    /// The outcome of a test case.
    pub outcome: bool,
    /// An infix operator.
    pub operator: bool,
}

/// A suggested replacement of `span` by `replacement`.
pub(crate) struct Suggestion {
    pub span: Range<usize>,
    pub replacement: String,
    pub message: String,
    pub machine_applicable: bool,
}

fn suggestion(span: Range<usize>, replacement: &str, message: String, machine_applicable: bool) -> Suggestion {
    Suggestion { span, replacement: replacement.to_string(), message, machine_applicable }
}

/// The word at `at`: name characters, and for `hooky` also `:` and `-`
/// (`tc:ingres`, `tc-ingress`).
fn word_at(text: &str, at: usize, hooky: bool) -> &str {
    let rest = &text[at..];
    let end = rest.find(|c: char| !(is_name_char(c) || (hooky && (c == ':' || c == '-')))).unwrap_or(rest.len());
    &rest[..end]
}

/// Suggestions for a syntax error at `at`, where the parser expected
/// `expected`: misspelt keywords, and operators written as in other
/// languages.
pub(crate) fn suggest(text: &str, at: usize, expected: Expected) -> Vec<Suggestion> {
    if at >= text.len() || !text.is_char_boundary(at) {
        return Vec::new();
    }
    let rest = &text[at..];
    let mut out = Vec::new();
    if expected.operator {
        let word = word_at(text, at, false);
        let span = at..at + word.len();
        match word.to_ascii_lowercase().as_str() {
            "and" => out.push(suggestion(span, "&&", "xpol writes `and` as `&&`".into(), true)),
            "or" => out.push(suggestion(span, "||", "xpol writes `or` as `||`".into(), true)),
            "not" => {
                // `not in`
                let after = &text[span.end..];
                let gap = after.len() - after.trim_start().len();
                if word_at(text, span.end + gap, false) == "in" {
                    out.push(suggestion(at..span.end + gap + 2, "!in", "xpol writes `not in` as `!in`".into(), true));
                }
            }
            _ => {}
        }
        if rest.starts_with('=') && !rest.starts_with("==") && !rest.starts_with("=>") {
            out.push(suggestion(at..at + 1, "==", "did you mean `==`? `=` gives a value; `==` compares".into(), true));
        } else if rest.starts_with("<>") {
            out.push(suggestion(at..at + 2, "!=", "xpol writes `<>` as `!=`".into(), true));
        } else if rest.starts_with("=<") {
            out.push(suggestion(at..at + 2, "<=", "did you mean `<=`?".into(), true));
        }
        // `not x`: `not` read as a name, then `x` where an operator belongs.
        let before = text[..at].trim_end();
        if let Some(head) = before.strip_suffix("not").filter(|h| !h.ends_with(|c: char| is_name_char(c) || c == '.' || c == '@')) {
            out.push(suggestion(head.len()..at, "!", "xpol writes `not` as `!`".into(), true));
        }
    }
    let (candidates, hooky): (&[&str], bool) = if expected.statement {
        (STATEMENT_WORDS, false)
    } else if expected.outcome {
        (EXPECT_WORDS, false)
    } else if expected.item {
        (ITEM_SUGGESTIONS, true)
    } else if expected.hook {
        (HOOKS, true)
    } else {
        return out;
    };
    let word = word_at(text, at, hooky);
    let span = at..at + word.len();
    if word.is_empty() {
        return out;
    }
    if (expected.item || expected.hook) && matches!(word, "tc" | "tc:" | "TC") {
        out.push(suggestion(span.clone(), "tc:ingress", "a TC hook names its direction: `tc:ingress`".into(), false));
        out.push(suggestion(span, "tc:egress", "or `tc:egress`".into(), false));
        return out;
    }
    if let Some(best) = closest(word, candidates.iter().copied()) {
        out.push(suggestion(span, best, format!("did you mean `{best}`?"), true));
    } else if expected.statement || expected.outcome {
        // Verdicts by other names, from other firewalls: close in meaning,
        // not always in effect (`reject` answers the sender elsewhere).
        let meant = match word.to_ascii_lowercase().as_str() {
            "accept" | "allow" | "permit" => Some("pass"),
            "deny" | "reject" | "block" | "discard" => Some("drop"),
            _ => None,
        };
        if let Some(m) = meant {
            out.push(suggestion(span, m, format!("xpol's verdicts are `pass`, `drop`, `tx`, `abort`: `{m}`?"), false));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_points_are_item_words_that_start_lines() {
        let text = "xdp { pass }\n  set s: int = {1}\n// xdp in a comment\n\"xdp\"\nlet map = 1\nmap @m max 3\ntc:ingress { drop }\n/* rule */ rule \"a\" xdp {}\nxpd { }\n  let x = 1";
        let points: Vec<&str> = recovery_points(text).iter().map(|&p| &text[p..p + 3]).collect();
        // A comment before the word does not hide it.
        assert_eq!(points, ["xdp", "set", "map", "tc:", "rul", "xpd"]);
    }

    #[test]
    fn unclosed_brackets_skip_comments_and_strings() {
        let text = "xdp /(a)/ { if x { drop } // }\n redirect(\"}\")";
        let open = unclosed(text, 0, text.len());
        assert_eq!(open, vec![(10, '{')]);
        assert!(unclosed("{ ( }", 0, 5).is_empty(), "a closer closes the innermost bracket of its kind");
    }

    #[test]
    fn malformed_literals_say_what_they_are_not() {
        let cases = [
            ("eth.src == 02:00:00:00:00:0g/", 13, "`02:00:00:00:00:0g` is not a MAC address", "`0g`"),
            ("ip6.src == 2001:db8:::1/", 15, "`2001:db8:::1` is not an IPv6 address", "`::`"),
            ("ip.src == 2001:db8:12345::1", 14, "not an IPv6 address", "`12345`"),
            ("ip.src == 10.0.0 ", 12, "`10.0.0` is not an IPv4 address", "3 parts"),
            ("pkt.len > 1.5", 11, "`1.5` is not a number xpol knows", "integers"),
        ];
        for (text, at, message, help) in cases {
            let bad = bad_literal(text, at).unwrap_or_else(|| panic!("{text}: nothing found"));
            assert!(bad.message.contains(message), "{text}: {}", bad.message);
            assert!(bad.help.contains(help), "{text}: {}", bad.help);
        }
        assert!(bad_literal("eth.src == 02:00:00:00:00:01 x", 29).is_none());
        assert!(bad_literal("ip.src == 2001:db8::1 x", 22).is_none());
        assert!(bad_literal("tcp.dport == 1..5", 15).is_none());
    }

    #[test]
    fn suggestions_fix_words_from_elsewhere() {
        let op = Expected { operator: true, ..Expected::default() };
        let fix = |text: &str, at: usize, e: Expected| {
            suggest(text, at, e).into_iter().map(|s| format!("{}->{}", &text[s.span], s.replacement)).collect::<Vec<_>>()
        };
        assert_eq!(fix("a and b", 2, op), ["and->&&"]);
        assert_eq!(fix("a OR b", 2, op), ["OR->||"]);
        assert_eq!(fix("a not in S", 2, op), ["not in->!in"]);
        assert_eq!(fix("a = 1", 2, op), ["=->=="]);
        assert_eq!(fix("/not tcp.syn/", 5, op), ["not ->!"]);
        assert!(fix("/knot tcp.syn/", 6, op).is_empty());
        let stmt = Expected { statement: true, ..Expected::default() };
        assert_eq!(fix("{ dorp }", 2, stmt), ["dorp->drop"]);
        assert_eq!(fix("{ reject }", 2, stmt), ["reject->drop"]);
        let item = Expected { item: true, ..Expected::default() };
        assert_eq!(fix("xpd { }", 0, item), ["xpd->xdp"]);
        assert_eq!(fix("tc:ingres { }", 0, item), ["tc:ingres->tc:ingress"]);
        assert_eq!(fix("tc { }", 0, item), ["tc->tc:ingress", "tc->tc:egress"]);
        assert_eq!(fix("cosnt a = 1", 0, item), ["cosnt->const"]);
    }
}
