//! Kernel limits checked on the compiled object, before anything is
//! loaded: each program's size, the maps it uses, and the branches the
//! verifier must keep pending on its first walk. Beyond a limit the error points at the rule
//! where the program crosses it (line info, `verifier::span_of_insn`).
//!
//! A long program whose size is certainly over the limit is refused
//! earlier, while its rules are lowered and before LLVM runs
//! ([`SizeFloor`]): compiling tens of thousands of rules only to measure
//! that they do not fit took a minute.

use super::{program_name, Located};
use crate::check::fields::Field;
use crate::ir::{self, CmpOp, ExprKind, Value};
use std::collections::HashMap;
use xpol_lang::meta;
use xpol_lang::{Diagnostic, FileId, SourceMap, Span};

/// BPF jump offsets are 16 bits; LLVM 14 has no longer jump and would wrap
/// them silently, so a program past this size could jump anywhere.
pub const MAX_PROGRAM_INSNS: usize = 32_767;

/// The verifier's `BPF_COMPLEXITY_LIMIT_JMP_SEQ`: the branch states it
/// keeps pending at once ("The sequence of N jumps is too complex").
pub const MAX_JUMP_SEQUENCE: usize = 8_192;

/// The verifier's `MAX_USED_MAPS`: maps one program may use.
pub const MAX_MAPS_PER_PROGRAM: usize = 64;

/// Every budget, for every program of the object.
pub fn check_object(object: &[u8], policy: &ir::Policy, located: &[Located], sources: &SourceMap) -> Result<(), Vec<Diagnostic>> {
    let mut diags = Vec::new();
    for prog in &policy.programs {
        let name = program_name(prog.hook);
        let Some((section, start, insns)) = crate::verifier::program_range(object, name) else { continue };
        let hook = prog.hook.as_str();
        let at = |insn: usize, label: &str, d: Diagnostic| match crate::verifier::span_of_insn(object, name, insn, located, sources) {
            Some(span) => d.with_label(span, label),
            None => d,
        };
        let maps = crate::verifier::first_map_uses(object, name);
        let size_over = insns > MAX_PROGRAM_INSNS;
        // Which rule each instruction comes from, for the limits whose
        // crossing is a matter of the rules' order in the source (size,
        // maps) rather than of the instructions' order in the object,
        // which LLVM lays out as it likes.
        let rules = (size_over || maps.len() > MAX_MAPS_PER_PROGRAM).then(|| RuleOfInsn::new(prog, &crate::verifier::insn_spans(object, name, located, sources)));
        if let Some(rules) = rules.as_ref().filter(|_| size_over) {
            let d = Diagnostic::error("xpol::budget::program_size", format!("the `{hook}` program needs {insns} instructions, more than the {MAX_PROGRAM_INSNS} a BPF jump can span"))
                .with_help("put long literal sets in a `set` (one map lookup instead of a comparison each), or merge rules with the same verdict into one rule with `in { ... }`");
            diags.push(match size_crossing(prog, rules, MAX_PROGRAM_INSNS) {
                Some((probe, total)) => {
                    let span = policy.rules.iter().find(|r| r.id == prog.probes[probe].rule).map_or(prog.probes[probe].span, |r| r.span);
                    d.with_label(span, format!("with this rule the program reaches {total} instructions"))
                }
                None => at(MAX_PROGRAM_INSNS, "the program passes the limit here", d),
            });
            continue;
        }
        let code = program_code(object, &section, start, insns);
        if let Some(rules) = rules.as_ref().filter(|_| maps.len() > MAX_MAPS_PER_PROGRAM) {
            let d = Diagnostic::error(
                "xpol::budget::maps",
                format!("the `{hook}` program uses {} maps, more than the {MAX_MAPS_PER_PROGRAM} the kernel allows one program", maps.len()),
            )
            .with_help("each `@map` is a map, and so is the IPv6 part of each named or large constant set and each set of ports, integers or MACs (all IPv4 parts share the tables), besides xpol's own (rule counters; parsed facts in long policies): merge sets of one element type, or use fewer `@maps` in this hook");
            let crossing = maps_in_source_order(&crate::verifier::map_references(object, name), rules).into_iter().nth(MAX_MAPS_PER_PROGRAM);
            diags.push(match crossing {
                Some((map, Some(span))) => d.with_label(span, format!("{}, the program's map {}", describe_map(&map, policy), MAX_MAPS_PER_PROGRAM + 1)),
                _ => at(maps[MAX_MAPS_PER_PROGRAM], &format!("map {} of the program", MAX_MAPS_PER_PROGRAM + 1), d),
            });
        }
        if let Some(insn) = first_walk_crossing(code, MAX_JUMP_SEQUENCE) {
            let d = Diagnostic::error(
                "xpol::budget::jump_sequence",
                format!("the `{hook}` program makes the verifier keep more than {MAX_JUMP_SEQUENCE} branches pending: the rules a packet can pass one after another hold too many conditions"),
            )
            .with_help("merge rules with the same verdict into one rule with `in { ... }`, or put the values in a named `set` (one lookup for all of them)");
            diags.push(at(insn, "the branches pending reach the limit here", d));
        }
    }
    if diags.is_empty() {
        Ok(())
    } else {
        Err(diags)
    }
}

/// A lower bound on the size of a long program (one whose rules read the
/// parsed facts from the facts map: `Lower::rules_on_facts_map`), summed
/// rule by rule as they are lowered, and what a rule adds to it:
///
/// - the volatile loads in the block where the rule starts, which every
///   packet that reaches the rule runs (a reload of the facts' address,
///   and the facts the predicate reads before its first branch: a field's
///   value and its presence flag). LLVM removes no volatile load and
///   merges none, so each is a BPF instruction, as long as its block stays
///   reachable;
/// - one instruction for the decision of a predicate whose first test is a
///   field compared with a constant ([`decides_first`]): its outcome
///   depends on loads LLVM knows nothing of, both ways, so some
///   instruction (a jump, or a select, which BPF has only as a jump) must
///   decide it, one per rule (each rule's loads are its own, so no two
///   rules' tests can become one).
///
/// A rule's first block stays reachable unless LLVM can prove that an
/// earlier rule decides every packet. That needs an earlier rule that
/// always ends in a verdict and whose predicate LLVM can prove true for
/// every packet: once such a rule may be there ([`may_hold_always`]),
/// nothing after it is counted. Everything else the program holds (the
/// parser, the counting, the rest of each predicate, the bodies) only adds
/// to the size. The kernel removes no reachable code either, so the
/// program is too large as the kernel sees it too.
#[derive(Default)]
pub struct SizeFloor {
    /// Instructions certainly in the program.
    pub insns: usize,
    /// A rule before may decide every packet as far as LLVM can tell:
    /// later rules may be removed, and count nothing.
    closed: bool,
}

impl SizeFloor {
    /// Rule `probe`, whose first block holds `certain` volatile loads, was
    /// lowered. Returns whether the floor is now past the limit: the
    /// program is too large, and this is the rule where it crosses.
    pub fn add(&mut self, probe: &ir::Probe, certain: usize) -> bool {
        if self.closed {
            return false;
        }
        self.insns += certain + usize::from(probe.predicate.as_ref().is_some_and(decides_first));
        if super::ends(&probe.body) && probe.predicate.as_ref().is_none_or(may_hold_always) {
            self.closed = true;
        }
        self.insns > MAX_PROGRAM_INSNS
    }
}

/// The error for a program whose [`SizeFloor`] crossed the limit at
/// `probe`: the code and help of the check on the compiled object.
pub fn too_large_early(hook: xpol_lang::ast::Hook, floor: &SizeFloor, rules: usize, probe: &ir::Probe) -> Diagnostic {
    Diagnostic::error(
        "xpol::budget::program_size",
        format!(
            "the `{}` program needs more than the {MAX_PROGRAM_INSNS} instructions a BPF jump can span: its first {rules} rules alone take at least {} (the fields each reads and tests first; refused before compiling the rest)",
            hook.as_str(),
            floor.insns
        ),
    )
    .with_help("put long literal sets in a `set` (one map lookup instead of a comparison each), or merge rules with the same verdict into one rule with `in { ... }`")
    .with_label(probe.span, "the program passes the limit here")
}

/// Whether predicate `e` starts (as `Lower::branch3` lowers it: the left
/// operand of `&&` and `||` first) with a field other than `pkt.len`
/// compared with a constant. Such a test holds for some packets and not
/// for others as far as LLVM can tell: the field's presence flag is a
/// volatile load (so it is not known to hold), and the checker refuses a
/// comparison no value of the field satisfies (`check::values`), while
/// every value of the field is one LLVM sees the loaded fact might give
/// (so it is not known to fail).
pub fn decides_first(e: &ir::Expr) -> bool {
    match &e.kind {
        ExprKind::Not(a) | ExprKind::And(a, _) | ExprKind::Or(a, _) => decides_first(a),
        ExprKind::Cmp(_, a, b) => matches!(
            (&a.kind, &b.kind),
            (ExprKind::Field(f), ExprKind::Const(_)) | (ExprKind::Const(_), ExprKind::Field(f)) if *f != Field::PktLen
        ),
        _ => false,
    }
}

/// Whether LLVM might prove that predicate `e` holds for every packet (as
/// `Lower::branch3` lowers it: the way to the next rule would then be
/// gone). A comparison, membership test or boolean field whose operands
/// read a field with a presence flag holds only when that flag, a
/// volatile load, is set: LLVM cannot prove that. Anything else
/// (constants, `pkt.len`, which is always present, locals and map reads,
/// whose presence LLVM might know) might be proven to hold.
pub fn may_hold_always(e: &ir::Expr) -> bool {
    constant_outcomes(e).0
}

/// Whether LLVM might prove `e` (as `Lower::branch3` lowers it) true for
/// every packet, and whether false for every packet.
fn constant_outcomes(e: &ir::Expr) -> (bool, bool) {
    match &e.kind {
        ExprKind::Const(Value::Bool(b)) => (*b, !*b),
        ExprKind::Not(a) => {
            let (t, f) = constant_outcomes(a);
            (f, t)
        }
        ExprKind::And(a, b) => {
            let ((ta, fa), (tb, fb)) = (constant_outcomes(a), constant_outcomes(b));
            (ta && tb, fa || fb)
        }
        ExprKind::Or(a, b) => {
            let ((ta, fa), (tb, fb)) = (constant_outcomes(a), constant_outcomes(b));
            (ta || tb, fa && fb)
        }
        _ if reads_presence_flag(e) => (false, false),
        // `pkt.len`, always present, as loaded (volatile, any 64-bit value
        // as far as LLVM knows), against a constant: provable only at the
        // ends of the range.
        ExprKind::Cmp(op, a, b) => match (&a.kind, &b.kind) {
            (ExprKind::Field(Field::PktLen), ExprKind::Const(Value::Int(c))) => pkt_len_outcomes(*op, *c),
            (ExprKind::Const(Value::Int(c)), ExprKind::Field(Field::PktLen)) => pkt_len_outcomes(op.flipped(), *c),
            _ => (true, true),
        },
        _ => (true, true),
    }
}

/// [`constant_outcomes`] of `pkt.len OP c`.
fn pkt_len_outcomes(op: CmpOp, c: u64) -> (bool, bool) {
    let (min, max) = (c == 0, c == u64::MAX);
    match op {
        CmpOp::Eq | CmpOp::Ne => (false, false),
        CmpOp::Ge => (min, false),
        CmpOp::Le => (max, false),
        CmpOp::Lt => (false, min),
        CmpOp::Gt => (false, max),
    }
}

/// Whether both outcomes of value `e` are and-ed with a field's presence
/// flag (`Lower::value`: a comparison's operands', a membership test's
/// value's, arithmetic's operands', a boolean field's own).
fn reads_presence_flag(e: &ir::Expr) -> bool {
    match &e.kind {
        ExprKind::Field(f) => *f != Field::PktLen,
        ExprKind::Neg(a) | ExprKind::BitNot(a) | ExprKind::Not(a) | ExprKind::In(a, _) => reads_presence_flag(a),
        ExprKind::Arith(_, a, b) | ExprKind::Cmp(_, a, b) => reads_presence_flag(a) || reads_presence_flag(b),
        _ => false,
    }
}

/// The probe (index in the program) each instruction was generated for,
/// from the span its line info points at; `None` for code no probe's span
/// holds (the packet parser before any rule, shared tails).
struct RuleOfInsn {
    probes: Vec<Option<usize>>,
    spans: Vec<Option<Span>>,
}

impl RuleOfInsn {
    fn new(prog: &ir::Program, spans: &[Option<Span>]) -> RuleOfInsn {
        // Per file, the probes' spans in source order (they do not overlap).
        let mut by_file: HashMap<FileId, Vec<(Span, usize)>> = HashMap::new();
        for (i, p) in prog.probes.iter().enumerate() {
            by_file.entry(p.span.file).or_default().push((p.span, i));
        }
        for v in by_file.values_mut() {
            v.sort_by_key(|(s, _)| s.start);
        }
        let probe_of = |s: Span| {
            let v = by_file.get(&s.file)?;
            let i = v.partition_point(|(p, _)| p.start <= s.start).checked_sub(1)?;
            let (p, probe) = v[i];
            (s.end <= p.end).then_some(probe)
        };
        RuleOfInsn { probes: spans.iter().map(|s| s.and_then(probe_of)).collect(), spans: spans.to_vec() }
    }
}

/// The probe with which the program's instructions, counted rule by rule
/// in the program's order (code of no rule first), pass `limit`, and the
/// count there.
fn size_crossing(prog: &ir::Program, rules: &RuleOfInsn, limit: usize) -> Option<(usize, usize)> {
    let mut per_probe = vec![0usize; prog.probes.len()];
    let mut total = 0;
    for p in &rules.probes {
        match p {
            Some(i) => per_probe[*i] += 1,
            None => total += 1,
        }
    }
    per_probe.iter().enumerate().find_map(|(i, n)| {
        total += n;
        (total > limit).then_some((i, total))
    })
}

/// The program's maps in the order the source first uses them: xpol's own
/// that no rule accounts for first (those used by code of no rule, and
/// the parsed facts, which the parser's code fills wherever its line info
/// points), then by the rule and the position in it of their first use;
/// each with the span of that use.
fn maps_in_source_order(references: &[(usize, String)], rules: &RuleOfInsn) -> Vec<(String, Option<Span>)> {
    let mut first: Vec<((usize, u32), String, Option<Span>)> = Vec::new();
    for (insn, map) in references {
        let span = rules.spans.get(*insn).copied().flatten();
        let probe = rules.probes.get(*insn).copied().flatten();
        let key = match probe {
            Some(p) if map != super::FACTS_MAP => (p + 1, span.map_or(0, |s| s.start)),
            _ => (0, 0),
        };
        match first.iter_mut().find(|(_, m, _)| m == map) {
            Some(f) if key < f.0 => *f = (key, map.clone(), span),
            Some(_) => {}
            None => first.push((key, map.clone(), span)),
        }
    }
    first.sort_by_key(|f| f.0);
    first.into_iter().map(|(_, m, s)| (m, s)).collect()
}

/// A map of the object in the policy's words.
fn describe_map(map: &str, policy: &ir::Policy) -> String {
    if let Some(name) = map.strip_prefix("xm_") {
        return format!("`@{name}`");
    }
    for (i, set) in policy.sets.iter().enumerate() {
        let part = if map == format!("xs_{}", set.name) {
            ""
        } else if map == format!("xs_{}_v6", set.name) {
            "the IPv6 part of "
        } else {
            continue;
        };
        // A constant set of more than 16 elements is a read-only map,
        // named after its `const`, or `anonN` when written in place.
        return match (set.mutable, set.name == format!("anon{i}")) {
            (true, _) => format!("{part}set `{}`", set.name),
            (false, false) => format!("{part}const set `{}`", set.name),
            (false, true) => format!("{part}this literal set (a map: more than 16 elements)"),
        };
    }
    if let Some(pool) = policy.pools.iter().find(|p| map.starts_with(&format!("xl_{}_", p.name))) {
        return format!("a map of pool `{}`", pool.name);
    }
    if [meta::IPV4_TABLES_MAP, meta::IPV4_ROOT_MAP, meta::IPV4_MID_MAP, meta::IPV4_LEAF_MAP].contains(&map) {
        return "the IPv4 set tables".to_string();
    }
    if [meta::IPV6_NODES_MAP, meta::IPV6_TAILS_MAP].contains(&map) {
        return "the IPv6 set tables".to_string();
    }
    format!("xpol's own map `{map}`")
}

/// The program's instructions (8 bytes each), empty when they cannot be read.
fn program_code<'a>(object: &'a [u8], section: &str, start: usize, insns: usize) -> &'a [u8] {
    use object::{Object, ObjectSection};
    let data = object::File::parse(object).ok().and_then(|f| f.section_by_name(section)?.data().ok());
    data.and_then(|d| d.get(start * 8..(start + insns) * 8)).unwrap_or_default()
}

/// The verifier's first walk of a program: from the first instruction,
/// it follows each conditional jump's fall-through and keeps the jump's
/// target pending, until an exit. Nothing is pruned on that walk (no
/// state has been explored before), so when it meets more than `limit`
/// conditional jumps whose outcome it cannot tell, the kernel refuses the
/// program. The walk here tells an outcome from registers set to
/// constants (as the verifier does); the verifier also tells some from
/// value ranges, which rule tests on packet fields seldom give it, so the
/// count may be a few too high, never too low. Returns the instruction
/// (from the program's start) where the count passes `limit`.
fn first_walk_crossing(code: &[u8], limit: usize) -> Option<usize> {
    const BPF_LD: u8 = 0x00;
    const BPF_LDX: u8 = 0x01;
    const BPF_STX: u8 = 0x03;
    const BPF_ALU: u8 = 0x04;
    const BPF_JMP: u8 = 0x05;
    const BPF_JMP32: u8 = 0x06;
    const BPF_ALU64: u8 = 0x07;
    const BPF_X: u8 = 0x08;
    const BPF_LD_IMM64: u8 = 0x18;
    const BPF_ATOMIC: u8 = 0xc0;
    const BPF_MOV: u8 = 0xb0;
    const BPF_JA: u8 = 0x00;
    const BPF_CALL: u8 = 0x80;
    const BPF_EXIT: u8 = 0x90;
    let n = code.len() / 8;
    let mut pc = 0usize;
    let mut pending = 0usize;
    // Registers known to hold a constant (r0 to r10).
    let mut known: [Option<u64>; 11] = [None; 11];
    // A walk longer than the program loops (a back edge): stop.
    for _ in 0..=n {
        let insn = code.get(pc * 8..pc * 8 + 8)?;
        let (opcode, class, op) = (insn[0], insn[0] & 0x07, insn[0] & 0xf0);
        let (dst, src) = (usize::from(insn[1] & 0x0f).min(10), usize::from(insn[1] >> 4).min(10));
        let off = i16::from_le_bytes([insn[2], insn[3]]) as isize;
        let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
        pc = match class {
            _ if opcode == BPF_LD_IMM64 => {
                known[dst] = None;
                pc + 2
            }
            BPF_JMP if op == BPF_EXIT => return None,
            BPF_JMP if op == BPF_CALL => {
                known[..6].fill(None);
                pc + 1
            }
            BPF_JMP if op == BPF_JA => pc.checked_add_signed(off + 1)?,
            BPF_JMP | BPF_JMP32 => {
                let taken = match (known[dst], opcode & BPF_X) {
                    (Some(v), 0) => {
                        let (v, k) = if class == BPF_JMP32 { (v as u32 as u64, imm as u32 as u64) } else { (v, imm as i64 as u64) };
                        jump_taken(op, v, k)
                    }
                    _ => None,
                };
                match taken {
                    Some(true) => pc.checked_add_signed(off + 1)?,
                    Some(false) => pc + 1,
                    None => {
                        pending += 1;
                        if pending > limit {
                            return Some(pc);
                        }
                        pc + 1
                    }
                }
            }
            BPF_ALU | BPF_ALU64 => {
                known[dst] = match (op, opcode & BPF_X) {
                    (BPF_MOV, 0) if class == BPF_ALU64 => Some(imm as i64 as u64),
                    (BPF_MOV, 0) => Some(u64::from(imm as u32)),
                    (BPF_MOV, _) if class == BPF_ALU64 => known[src],
                    _ => None,
                };
                pc + 1
            }
            BPF_LD | BPF_LDX => {
                known[dst] = None;
                pc + 1
            }
            // An atomic with fetch writes its source register (r0 for a
            // compare-and-exchange).
            BPF_STX if opcode & 0xe0 == BPF_ATOMIC => {
                known[src] = None;
                known[0] = None;
                pc + 1
            }
            _ => pc + 1,
        };
    }
    None
}

/// The outcome of conditional jump `op` on known operands, unsigned or
/// signed as the operation says; `None` for an operation not decided here.
fn jump_taken(op: u8, v: u64, k: u64) -> Option<bool> {
    Some(match op {
        0x10 => v == k,
        0x50 => v != k,
        0x20 => v > k,
        0x30 => v >= k,
        0xa0 => v < k,
        0xb0 => v <= k,
        0x40 => v & k != 0,
        0x60 => (v as i64) > (k as i64),
        0x70 => (v as i64) >= (k as i64),
        0xc0 => (v as i64) < (k as i64),
        0xd0 => (v as i64) <= (k as i64),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::{decides_first, first_walk_crossing, may_hold_always};
    use crate::check::fields::Field;
    use crate::ir::{CmpOp, Expr, ExprKind, Value};

    fn e(kind: ExprKind) -> Expr {
        Expr { kind, ty: crate::ir::Type::Bool, span: Default::default() }
    }

    fn cmp(op: CmpOp, f: Field, c: u64) -> Expr {
        e(ExprKind::Cmp(op, Box::new(e(ExprKind::Field(f))), Box::new(e(ExprKind::Const(Value::Int(c))))))
    }

    /// What LLVM might prove true for every packet ends the size floor's
    /// count; a field's presence flag (a volatile load) is what it cannot.
    #[test]
    fn a_presence_flag_keeps_a_predicate_from_holding_always() {
        let dport = cmp(CmpOp::Le, Field::TcpDport, u64::MAX);
        assert!(!may_hold_always(&dport), "tcp.dport <= MAX still needs a TCP header");
        assert!(!may_hold_always(&e(ExprKind::Not(Box::new(dport.clone())))));
        assert!(may_hold_always(&cmp(CmpOp::Ge, Field::PktLen, 0)), "pkt.len >= 0: always present, always true");
        assert!(may_hold_always(&cmp(CmpOp::Le, Field::PktLen, u64::MAX)));
        assert!(!may_hold_always(&cmp(CmpOp::Ge, Field::PktLen, 1)));
        assert!(!may_hold_always(&cmp(CmpOp::Eq, Field::PktLen, 64)));
        let always = e(ExprKind::Const(Value::Bool(true)));
        assert!(may_hold_always(&always));
        assert!(may_hold_always(&e(ExprKind::Or(Box::new(dport.clone()), Box::new(always.clone())))));
        assert!(!may_hold_always(&e(ExprKind::And(Box::new(dport.clone()), Box::new(always.clone())))));
        // `!(pkt.len < 0)`: false never holds, so the negation always does.
        assert!(may_hold_always(&e(ExprKind::Not(Box::new(cmp(CmpOp::Lt, Field::PktLen, 0))))));
    }

    /// The test a predicate makes first counts as an instruction of the
    /// size floor when it compares a field that has a presence flag.
    #[test]
    fn a_field_compared_first_decides() {
        let dport = cmp(CmpOp::Eq, Field::TcpDport, 80);
        let len = cmp(CmpOp::Eq, Field::PktLen, 64);
        assert!(decides_first(&dport));
        assert!(decides_first(&e(ExprKind::Not(Box::new(dport.clone())))));
        assert!(decides_first(&e(ExprKind::And(Box::new(dport.clone()), Box::new(len.clone())))));
        assert!(!decides_first(&e(ExprKind::Or(Box::new(len.clone()), Box::new(dport.clone())))), "`pkt.len` first: always present");
        assert!(!decides_first(&e(ExprKind::Const(Value::Bool(true)))));
    }

    /// An instruction: opcode, then zeroes but the offset.
    fn insn(opcode: u8, off: i16) -> [u8; 8] {
        let o = off.to_le_bytes();
        [opcode, 0, o[0], o[1], 0, 0, 0, 0]
    }

    #[test]
    fn jumps_on_constants_are_decided_not_pending() {
        // r1 = 5; if r1 == 5 goto +1 (taken, over an exit); if r2 == 0
        // (unknown: pending); exit.
        let mov = [0xb7, 0x01, 0, 0, 5, 0, 0, 0];
        let jeq_r1 = [0x15, 0x01, 1, 0, 5, 0, 0, 0];
        let jeq_r2 = [0x15, 0x02, 0, 0, 0, 0, 0, 0];
        let code: Vec<u8> = [mov, jeq_r1, insn(0x95, 0), jeq_r2, insn(0x95, 0)].concat();
        assert_eq!(first_walk_crossing(&code, 0), Some(3));
        assert_eq!(first_walk_crossing(&code, 1), None);
    }

    #[test]
    fn counts_conditional_jumps_on_the_fall_through_walk() {
        // jeq, ja +1 (over a jne), jgt, exit: two pending.
        let code: Vec<u8> = [insn(0x15, 5), insn(0x05, 1), insn(0x55, 9), insn(0x25, 7), insn(0x95, 0)].concat();
        assert_eq!(first_walk_crossing(&code, 2), None);
        assert_eq!(first_walk_crossing(&code, 1), Some(3));
        // A 16-byte load counts once, and its second half is no jump.
        let code: Vec<u8> = [insn(0x18, 0), insn(0x15, 0), insn(0x15, 1), insn(0x95, 0)].concat();
        assert_eq!(first_walk_crossing(&code, 0), Some(2));
    }
}
