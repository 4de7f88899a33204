//! `xpolc diff` and `xpolc query`: the policy analysis of
//! `xpol_compiler::analysis` for people (text) and programs (`--json`).

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use xpol_compiler::analysis::{self, rules::Decision, Budget, DiffOptions, Path as Decisions, Region};
use xpol_compiler::{ir, Checked};
use xpol_lang::ast::Hook;

/// Exit status of `diff`: 0 no difference, 1 differences (as diff(1)).
const DIFFERENT: u8 = 1;
/// A policy that does not check, or an analysis that gave up.
const TROUBLE: u8 = 2;

fn checked(path: &Path) -> Result<(Checked, Option<ir::Policy>)> {
    let mut c = xpol_compiler::check_file(path);
    let ir = c.ir.take();
    Ok((c, ir))
}

/// Prints a check's errors on stderr; the IR when it checked.
fn ir_or_report(c: &Checked, ir: Option<ir::Policy>) -> Option<ir::Policy> {
    if ir.is_none() {
        let errors: Vec<_> = c.diagnostics.iter().filter(|d| d.is_error()).cloned().collect();
        let text = xpol_lang::render::render_human(&errors, &c.sources, std::io::stderr().is_terminal());
        eprint!("{text}");
        if !text.ends_with('\n') {
            eprintln!();
        }
    }
    ir
}

fn decision_json(d: &Decision) -> Value {
    json!({
        "action": d.action.text(),
        "rule": d.rule.as_ref().map(|r| json!({ "identity": r.identity, "line": r.line })),
    })
}

/// A path as JSON: the decision, and the rules before it that may decide
/// depending on state.
fn path_json(p: &Decisions) -> Value {
    let (last, before) = p.split_last().expect("a path ends in a decision");
    let mut v = decision_json(last);
    if !before.is_empty() {
        v["unless"] = Value::Array(before.iter().map(decision_json).collect());
    }
    v
}

fn rule_text(d: &Decision) -> String {
    match &d.rule {
        Some(r) => format!("line {} `{}`", r.line.unwrap_or(0), r.identity),
        None => "no rule (the default, pass)".to_string(),
    }
}

/// `drop`, or `depends on ... (if it holds: drop), else pass`.
fn path_action(p: &Decisions) -> String {
    p.iter().map(|d| d.action.text()).collect::<Vec<_>>().join(", else ")
}

fn path_rules(p: &Decisions) -> String {
    p.iter().map(rule_text).collect::<Vec<_>>().join(", else ")
}

fn region_json(r: &Region) -> Value {
    json!({
        "hook": r.hook.as_str(),
        "region": r.fields,
        "example": {
            "summary": r.example.summary,
            "hex": r.example.bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        },
    })
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).context("writing to stdout")
}

/// `xpolc check --exact`: the exact lints again with the analysis' own
/// budget (every check runs them within a small one and says nothing past
/// it), adding what they find and where they stop, if they do.
pub fn exact_lints(build: &mut xpol_compiler::Build) {
    if let Some(out) = &build.output {
        let more = xpol_compiler::check::lints::exact_reachability(&out.ir, &build.diagnostics, Budget::default(), true);
        build.diagnostics.extend(more);
    }
}

/// `--sets`: how `xpolc diff` takes sets the runtime may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SetsArg {
    /// By their declared contents.
    Declared,
    /// As unknown contents.
    Symbolic,
}

pub fn diff(old: &Path, new: &Path, json_out: bool, rules: bool, sets: SetsArg) -> Result<ExitCode> {
    let (co, io) = checked(old)?;
    let (cn, inew) = checked(new)?;
    let (Some(io), Some(inew)) = (ir_or_report(&co, io), ir_or_report(&cn, inew)) else { return Ok(ExitCode::from(TROUBLE)) };
    let d = match analysis::diff(&io, &co.sources, &inew, &cn.sources, DiffOptions { rules, symbolic_sets: sets == SetsArg::Symbolic }, Budget::default()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(TROUBLE));
        }
    };
    if json_out {
        let regions: Vec<Value> = d
            .regions
            .iter()
            .map(|r| {
                let mut v = region_json(&r.region);
                v["old"] = path_json(&r.old);
                v["new"] = path_json(&r.new);
                if !r.when.is_empty() {
                    v["when"] = json!(r.when);
                }
                v
            })
            .collect();
        print(&(serde_json::to_string_pretty(&json!({ "differences": regions, "changed_rules": d.changed_rules }))? + "\n"))?;
    } else if d.regions.is_empty() {
        print("no difference\n")?;
    } else {
        let mut text = String::new();
        for r in &d.regions {
            let when = if r.when.is_empty() { String::new() } else { format!("when {}: ", r.when.join(", ")) };
            text.push_str(&format!("{}: {when}{}: {} -> {}\n", r.region.hook.as_str(), r.region.fields.join(", "), path_action(&r.old), path_action(&r.new)));
            text.push_str(&format!("  old: {}; new: {}\n", path_rules(&r.old), path_rules(&r.new)));
            text.push_str(&format!("  e.g. {}\n", r.region.example.summary));
        }
        print(&text)?;
    }
    Ok(if d.regions.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(DIFFERENT) })
}

pub fn query(policy: &Path, predicate: &str, hook: Option<&str>, json_out: bool) -> Result<ExitCode> {
    // The predicate is checked as one more probe after the policy's own,
    // so that it sees the policy's sets and constants.
    let text = xpol_lang::input::read_text(policy, xpol_lang::input::SOURCE_LIMIT).with_context(|| format!("cannot read {}", policy.display()))?;
    let (first, base) = checked(policy)?;
    let Some(base) = ir_or_report(&first, base) else { return Ok(ExitCode::from(TROUBLE)) };
    let hook = match hook {
        Some(h) => Hook::ALL.iter().copied().find(|x| x.as_str() == h).with_context(|| format!("unknown hook `{h}`: xdp, tc:ingress or tc:egress"))?,
        None => base.programs.first().map(|p| p.hook).unwrap_or(Hook::Xdp),
    };
    let with_query = format!("{text}\n{} /{predicate}/ {{ pass }}\n", hook.as_str());
    let mut c = xpol_compiler::check_text(policy, with_query);
    let ir = c.ir.take();
    let Some(mut ir) = ir_or_report(&c, ir) else { return Ok(ExitCode::from(TROUBLE)) };
    let prog = ir.programs.iter_mut().find(|p| p.hook == hook).context("the query's hook has no program")?;
    let probe = prog.probes.pop().context("the query's probe")?;
    let predicate = probe.predicate.context("the query has no predicate")?;
    let answer = match analysis::query(&ir, &c.sources, hook, &predicate, Budget::default()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(TROUBLE));
        }
    };
    if json_out {
        let v: Vec<Value> = answer
            .iter()
            .map(|(d, r)| {
                let mut v = region_json(r);
                v["decision"] = path_json(d);
                v
            })
            .collect();
        print(&(serde_json::to_string_pretty(&json!({ "hook": hook.as_str(), "answers": v }))? + "\n"))?;
    } else if answer.is_empty() {
        print("no packet satisfies the predicate\n")?;
    } else {
        let mut text = String::new();
        for (d, r) in &answer {
            text.push_str(&format!("{}: {}: {}\n", hook.as_str(), path_action(d), r.fields.join(", ")));
            text.push_str(&format!("  by: {}\n", path_rules(d)));
            text.push_str(&format!("  e.g. {}\n", r.example.summary));
        }
        print(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}
