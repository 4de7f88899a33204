//! Commands on applied policies: `apply`, `delete`, `list`, `stats`,
//! `watch` and `set`. The state they act on lives in bpffs
//! (`xpol_runtime::store`); these functions only parse, call and print.

use super::{load_policy_and_build, print_line, print_table, snapshot, xdp_mode, RejectionOptions, SetOp};
use anyhow::{bail, Context, Result};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use xpol_runtime::apply::{self, ApplyRequest, SetChange};
use xpol_runtime::store::{Applied, Store};

/// Compiles (or reads) the policy and checks it in the kernel, showing a
/// verifier rejection at its source; `None` when that was reported.
fn object_of(policy: &Path, rejection: &RejectionOptions) -> Result<Option<Vec<u8>>> {
    if policy.extension().is_some_and(|e| e == "o") {
        return Ok(Some(std::fs::read(policy).with_context(|| format!("cannot read {}", policy.display()))?));
    }
    // Loading once here shows a verifier rejection at the policy's source;
    // the apply then loads the checked object beside the running one.
    let options = xpol_runtime::loader::LoadOptions { missing_interfaces_ok: true, ..Default::default() };
    let Some((_, build)) = load_policy_and_build(policy, &options, rejection)? else { return Ok(None) };
    Ok(build.and_then(|b| b.output).map(|o| o.object))
}

pub fn apply(policy: &Path, interfaces: &[String], name: &str, hooks: &[String], mode: &str, json: bool, rejection: &RejectionOptions) -> Result<ExitCode> {
    let mode = xdp_mode(mode)?;
    xpol_runtime::store::check_name(name)?;
    let Some(object) = object_of(policy, rejection)? else { return Ok(ExitCode::FAILURE) };
    let store = Store::write()?;
    let req = ApplyRequest {
        name,
        object: &object,
        source: policy.display().to_string(),
        interfaces: interfaces.to_vec(),
        hooks: (!hooks.is_empty()).then(|| hooks.iter().map(|h| h.replace("tc-", "tc:")).collect()),
        mode,
        set_contents: Default::default(),
    };
    let outcome = apply::apply(&store, &req)?;
    if json {
        println!("{}", serde_json::json!({"schema": super::REPORT_SCHEMA, "applied": name, "outcome": outcome}));
    } else if outcome.replaced {
        eprintln!(
            "replaced `{name}` (generation {}): {} rules kept their counters; kept @maps: {}; sets kept live: {}; sets from the new source: {}",
            outcome.generation,
            outcome.rules_carried,
            list_or_none(&outcome.maps_kept),
            list_or_none(&outcome.sets_kept),
            list_or_none(&outcome.sets_reset)
        );
    } else {
        eprintln!("applied {} as `{name}` on {}: it stays attached until `xpol delete {name}`", policy.display(), interfaces.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

pub fn delete(name: &str) -> Result<ExitCode> {
    let store = Store::write()?;
    store.delete(name)?;
    eprintln!("deleted `{name}`: detached and removed");
    Ok(ExitCode::SUCCESS)
}

fn list_entry(a: &Applied) -> serde_json::Value {
    let record = a.current.as_ref().map(|g| &g.record);
    serde_json::json!({
        "name": a.name,
        "source": record.map(|r| r.source.clone()),
        "generation": record.map(|r| r.generation),
        "applied_unix": record.map(|r| r.applied_unix),
        "rules": record.map(|r| r.meta.rules.len()),
        "links": a.links,
        "ok": a.problems.is_empty(),
        "problems": a.problems,
    })
}

pub fn list(json: bool) -> Result<ExitCode> {
    let Some(store) = Store::read()? else {
        if !json {
            println!("no applied policies");
        }
        return Ok(ExitCode::SUCCESS);
    };
    let names = store.names()?;
    if names.is_empty() && !json {
        println!("no applied policies");
    }
    for name in names {
        // One policy's trouble must not hide the others.
        let entry = match store.applied(&name) {
            Ok(a) => list_entry(&a),
            Err(e) => serde_json::json!({"name": name, "ok": false, "problems": [e.to_string()], "links": []}),
        };
        if json {
            println!("{}", serde_json::json!({"schema": super::REPORT_SCHEMA, "policy": entry}));
            continue;
        }
        let links: Vec<String> = entry["links"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| format!("{}:{}{}", l["interface"].as_str().unwrap_or(""), l["hook"].as_str().unwrap_or(""), if l["attached"] == true { "" } else { " (DETACHED)" }))
            .collect();
        println!(
            "{:<16} {:<32} gen {:<4} {} ({} rules)",
            name,
            links.join(","),
            entry["generation"].as_u64().map_or("-".into(), |g| g.to_string()),
            entry["source"].as_str().unwrap_or("?"),
            entry["rules"].as_u64().unwrap_or(0)
        );
        for p in entry["problems"].as_array().into_iter().flatten() {
            println!("    problem: {}", p.as_str().unwrap_or(""));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A report of the current generation of `name`, read afresh.
fn report_of(name: &str, elapsed: f64, previous: &[(u64, u64)], dt: f64) -> Result<(serde_json::Value, Vec<String>)> {
    let store = Store::read()?.with_context(|| format!("no policy is applied as `{name}` (see `xpol list`)"))?;
    let applied = store.applied(name)?;
    let current = applied.current.as_ref().with_context(|| format!("`{name}`: {}", applied.problems.join("; ")))?;
    let interfaces: Vec<&str> = applied.links.iter().map(|l| l.interface.as_str()).collect();
    let mut report = snapshot(&current.maps()?, &interfaces.join(","), elapsed, previous, dt)?;
    report["policy"] = name.into();
    report["generation"] = current.record.generation.into();
    Ok((report, applied.problems))
}

pub fn stats(name: &str, json: bool) -> Result<ExitCode> {
    let (report, problems) = report_of(name, 0.0, &[], 0.0)?;
    if json {
        println!("{report}");
    } else {
        print_table(&report, false);
        for p in &problems {
            println!("  problem: {p}");
        }
    }
    Ok(if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn watch(name: &str, interval: f64, duration: Option<f64>, json: bool) -> Result<ExitCode> {
    if !(interval.is_finite() && interval > 0.0 && interval < 86_400.0) {
        bail!("--interval must be a number of seconds between 0 and 86400");
    }
    let start = Instant::now();
    let terminal = std::io::stdout().is_terminal();
    let mut previous = Vec::new();
    let mut last = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs_f64(interval.max(0.1)));
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        let (report, problems) = report_of(name, start.elapsed().as_secs_f64(), &previous, dt)?;
        if !problems.is_empty() {
            bail!("`{name}`: {}", problems.join("; "));
        }
        previous = report["rules"].as_array().into_iter().flatten().map(|r| (r["packets"].as_u64().unwrap_or(0), r["bytes"].as_u64().unwrap_or(0))).collect();
        if json {
            println!("{report}");
        } else if terminal {
            print_table(&report, true);
        } else {
            print_line(&report);
        }
        if duration.is_some_and(|d| start.elapsed().as_secs_f64() >= d) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Elements of a set file: one per line, `#` comments, blank lines skipped.
fn read_elements(path: &Path) -> Result<Vec<String>> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    Ok(text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).map(str::to_string).collect())
}

pub fn set(name: &str, set: &str, op: SetOp) -> Result<ExitCode> {
    let change = match op {
        SetOp::List { json } => {
            let store = Store::read()?.with_context(|| format!("no policy is applied as `{name}` (see `xpol list`)"))?;
            let applied = store.applied(name)?;
            let current = applied.current.as_ref().with_context(|| format!("`{name}`: {}", applied.problems.join("; ")))?;
            current.record.meta.sets.iter().find(|s| s.name == set).with_context(|| format!("`{name}` has no set `{set}`"))?;
            let elements = current.elements(set)?;
            if json {
                println!("{}", serde_json::json!({"schema": super::REPORT_SCHEMA, "policy": name, "set": set, "elements": elements}));
            } else {
                for e in &elements {
                    println!("{e}");
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        SetOp::Add { elements } => SetChange::Add(elements),
        SetOp::Del { elements } => SetChange::Delete(elements),
        SetOp::Flush => SetChange::Flush,
        SetOp::Replace { from_file } => SetChange::Replace(read_elements(&from_file)?),
    };
    let store = Store::write()?;
    apply::change_set(&store, name, set, change)?;
    eprintln!("set `{set}` of `{name}` changed");
    Ok(ExitCode::SUCCESS)
}
