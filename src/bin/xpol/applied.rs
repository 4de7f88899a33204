//! Commands on applied policies: `apply`, `delete`, `list`, `stats`,
//! `watch`, `set` and `pool`. The state they act on lives in bpffs
//! (`xpol_runtime::store`); these functions only parse, call and print.

use super::follow::{compile, Compiled, Follower};
use super::{explain_load_error, pool_json, pool_table, print_table, rule_totals, show_report, snapshot, PoolOp, RejectionOptions, SetOp};
use anyhow::{bail, Context, Result};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use xpol_runtime::apply::{self, ApplyRequest, SetChange};
use xpol_runtime::loader::RuntimeError;
use xpol_runtime::store::{Applied, Store};

/// Where and under which name to apply a policy.
pub struct Target {
    pub interfaces: Vec<String>,
    pub name: String,
    pub hooks: Vec<String>,
    pub mode: xpol_runtime::loader::XdpAttachMode,
}

/// Applies an object; `false` when the kernel refused it and that was
/// shown at the policy's source (the apply verifies it, once).
fn apply_object(policy: &Path, object: &[u8], build: Option<&xpol_compiler::Build>, target: &Target, json: bool, rejection: &RejectionOptions) -> Result<bool> {
    let name = &target.name;
    // Before the store is touched.
    if build.is_some_and(super::report_missing_interfaces) {
        return Ok(false);
    }
    // Its netfilter side would outlive this process with nothing to
    // remove it (and put the sysctl back) at `xpol delete`: not yet.
    if xpol_runtime::loader::read_meta(object).is_ok_and(|m| !m.synproxies.is_empty()) {
        anyhow::bail!("`synproxy` needs its netfilter side installed while the policy runs, which `xpol apply` does not do yet: run the policy with `xpol run` (docs/language.md, \"SYN proxy\")");
    }
    let store = Store::write()?;
    let req = ApplyRequest {
        name,
        object,
        source: policy.display().to_string(),
        interfaces: target.interfaces.clone(),
        hooks: (!target.hooks.is_empty()).then(|| target.hooks.clone()),
        mode: target.mode,
        set_contents: Default::default(),
    };
    let outcome = match (apply::apply(&store, &req), build) {
        (Ok(outcome), _) => outcome,
        (Err(e @ (RuntimeError::Verifier { .. } | RuntimeError::Map { .. } | RuntimeError::UnknownInterface(_))), Some(build)) => {
            explain_load_error(build, e, rejection)?;
            return Ok(false);
        }
        (Err(e), _) => return Err(e.into()),
    };
    for w in &outcome.warnings {
        eprintln!("warning: `{name}` was replaced, but {w}");
    }
    if let Some(meta) = build.and_then(|b| b.output.as_ref()).map(|o| &o.meta) {
        for w in super::lb_host::warnings(meta, &target.interfaces) {
            eprintln!("warning: {w}");
        }
    }
    if json {
        println!("{}", serde_json::json!({"schema": super::REPORT_SCHEMA, "applied": name, "outcome": outcome}));
    } else if outcome.replaced {
        eprintln!(
            "replaced `{name}` (generation {}): {} rules kept their counters; kept @maps: {}; sets kept live: {}; sets from the new source: {}{}{}",
            outcome.generation,
            outcome.rules_carried,
            list_or_none(&outcome.maps_kept),
            list_or_none(&outcome.sets_kept),
            list_or_none(&outcome.sets_reset),
            if outcome.pools_kept.is_empty() && outcome.pools_reset.is_empty() {
                String::new()
            } else {
                format!("; pools kept live: {}; pools from the new source: {}", list_or_none(&outcome.pools_kept), list_or_none(&outcome.pools_reset))
            },
            if outcome.conntrack_kept { "; connections kept" } else { "" }
        );
    } else {
        eprintln!("applied {} as `{name}` on {}: it stays attached until `xpol delete {name}`", policy.display(), target.interfaces.join(", "));
    }
    Ok(true)
}

pub fn apply(policy: &Path, target: &Target, json: bool, rejection: &RejectionOptions) -> Result<ExitCode> {
    xpol_runtime::store::check_name(&target.name)?;
    let Some((object, build)) = compile(policy)?.object else { return Ok(ExitCode::FAILURE) };
    Ok(if apply_object(policy, &object, build.as_ref(), target, json, rejection)? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `apply --watch`: applies, then again after each change to a file the
/// policy read, until Ctrl-C or SIGTERM. A failed version is reported and
/// the running one stays. When the first version fails and no earlier
/// version of the name is applied, nothing would protect the host: that
/// is an error (exit 1), so that a service manager knows and can retry
/// (a missing interface at boot) rather than watch nothing. Under systemd
/// (`Type=notify`, `xpol@.service`) the service is ready once the name is
/// applied, and its status line says which version runs.
pub fn apply_watch(policy: &Path, target: &Target, json: bool, rejection: &RejectionOptions) -> Result<ExitCode> {
    use std::sync::atomic::{AtomicBool, Ordering};
    xpol_runtime::store::check_name(&target.name)?;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let mut follower = Follower::new(policy)?;
    let name = &target.name;
    let mut first = true;
    loop {
        let Compiled { object, files } = compile(policy)?;
        follower.follow(&files)?;
        let applied = match object.map(|(o, build)| apply_object(policy, &o, build.as_ref(), target, json, rejection)) {
            Some(Ok(applied)) => applied,
            Some(Err(e)) => {
                eprintln!("error: {e:#}");
                false
            }
            None => false,
        };
        let status = if applied {
            format!("applied {} as `{name}`; watching {} file(s)", policy.display(), follower.len())
        } else if first && !is_applied(name)? {
            bail!("{} was not applied, and no earlier version of `{name}` is applied: nothing to keep running", policy.display());
        } else {
            eprintln!("{} not applied; the running version stays", policy.display());
            format!("the latest version of {} failed (see the log); an earlier version of `{name}` runs", policy.display())
        };
        // Outside systemd (no NOTIFY_SOCKET) this does nothing; a failed
        // notification changes nothing that runs, so it is not an error.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]);
        eprintln!("watching {} file(s) of {}; Ctrl-C stops watching (`{name}` stays applied)", follower.len(), policy.display());
        first = false;
        if !follower.wait(&stop)? {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Whether a policy is applied under `name` (in the store in bpffs).
fn is_applied(name: &str) -> Result<bool> {
    Ok(match Store::read()? {
        Some(store) => store.names()?.iter().any(|n| n == name),
        None => false,
    })
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
fn report_of(name: &str, elapsed: f64, previous: &super::Totals, dt: f64) -> Result<(serde_json::Value, Vec<String>)> {
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
    let (report, problems) = report_of(name, 0.0, &super::Totals::new(), 0.0)?;
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

/// `xpol ct NAME`: the connection table's live entries, one a line (or a
/// JSON record each, then a summary).
pub fn conntrack(name: &str, json: bool) -> Result<ExitCode> {
    let store = Store::read()?.with_context(|| format!("no policy is applied as `{name}` (see `xpol list`)"))?;
    let applied = store.applied(name)?;
    let current = applied.current.as_ref().with_context(|| format!("`{name}`: {}", applied.problems.join("; ")))?;
    let maps = current.maps()?;
    let Some(summary) = maps.ct_summary()? else { bail!("`{name}` has no connection table: no rule of it reads `ct.state`") };
    let entries = maps.ct_entries()?;
    if json {
        for e in &entries {
            println!(
                "{}",
                serde_json::json!({
                    "schema": super::REPORT_SCHEMA, "protocol": e.state.split(' ').next(), "state": e.state,
                    "from": e.from.0.to_string(), "from_port": e.from.1, "to": e.to.0.to_string(), "to_port": e.to.1,
                    "expires_in_s": e.expires_in_ns as f64 / 1e9,
                })
            );
        }
        println!("{}", serde_json::json!({"schema": super::REPORT_SCHEMA, "entries": summary.entries, "capacity": summary.capacity, "states": summary.states}));
    } else {
        for e in &entries {
            println!("{}", e.describe());
        }
        print!("{}", super::conntrack_line(&serde_json::json!({"entries": summary.entries, "capacity": summary.capacity, "states": summary.states})).trim_start());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn watch(name: &str, interval: f64, duration: Option<f64>, json: bool) -> Result<ExitCode> {
    let start = Instant::now();
    let terminal = std::io::stdout().is_terminal();
    // Rates from the counters as they are now, not since the first apply.
    let mut previous = rule_totals(&report_of(name, 0.0, &super::Totals::new(), 0.0)?.0);
    let mut last = Instant::now();
    loop {
        // Checked when parsed (`interval_seconds`): finite, 0.1 to 86400.
        std::thread::sleep(Duration::from_secs_f64(interval));
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        let (report, problems) = report_of(name, start.elapsed().as_secs_f64(), &previous, dt)?;
        if !problems.is_empty() {
            bail!("`{name}`: {}", problems.join("; "));
        }
        previous = rule_totals(&report);
        show_report(&report, json, terminal);
        if duration.is_some_and(|d| start.elapsed().as_secs_f64() >= d) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Elements of a set file: one per line, `#` comments, blank lines skipped.
fn read_elements(path: &Path) -> Result<Vec<String>> {
    let text = if path == Path::new("-") {
        let bytes = xpol_lang::input::read_capped(std::io::stdin(), xpol_lang::input::DATA_LIMIT).context("reading standard input")?;
        String::from_utf8(bytes).context("reading standard input: not UTF-8 text")?
    } else {
        xpol_lang::input::read_text(path, xpol_lang::input::DATA_LIMIT).with_context(|| format!("cannot read {}", path.display()))?
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

pub fn pool(name: &str, pool: &str, op: PoolOp) -> Result<ExitCode> {
    use xpol_runtime::lb_edit::{PoolChange, PoolEditor};
    let change = match op {
        PoolOp::List { json } => {
            // Reading takes the shared lock: the editor's maps, not its changes.
            let store = Store::read()?.with_context(|| format!("no policy is applied as `{name}` (see `xpol list`)"))?;
            let applied = store.applied(name)?;
            let current = applied.current.as_ref().with_context(|| format!("`{name}`: {}", applied.problems.join("; ")))?;
            let meta = current.record.meta.pools.iter().find(|p| p.name == pool).with_context(|| {
                let names: Vec<&str> = current.record.meta.pools.iter().map(|p| p.name.as_str()).collect();
                format!("`{name}` has no pool `{pool}` (its pools: {})", if names.is_empty() { "none".into() } else { names.join(", ") })
            })?;
            let stats = current.maps()?.pool_stats()?.into_iter().find(|p| p.name == pool).context("the pool's counters")?;
            let mut report = pool_json(&stats);
            if json {
                // `pool` beside `policy` here, where a report says `name`.
                if let Some(fields) = report.as_object_mut() {
                    fields.remove("name");
                }
                report["schema"] = super::REPORT_SCHEMA.into();
                report["policy"] = name.into();
                report["pool"] = pool.into();
                report["max"] = meta.max_backends.into();
                report["table_size"] = meta.table_size.into();
                println!("{report}");
            } else {
                println!("pool `{pool}` of `{name}`: {} of at most {} backends, table of {} slots", stats.backends.len(), meta.max_backends, meta.table_size);
                print!("{}", pool_table(&report, "  "));
            }
            return Ok(ExitCode::SUCCESS);
        }
        PoolOp::Add { addr, weight } => PoolChange::Add { addr, weight: add_weight(&weight)? },
        PoolOp::Del { addr } => PoolChange::Delete(addr),
        PoolOp::Drain { addr } => PoolChange::Drain(addr),
        PoolOp::Weight { addr, weight } => PoolChange::Weight { addr, weight },
    };
    let store = Store::write()?;
    PoolEditor::open(&store, name, pool)?.change(&store, change)?;
    let done = match change {
        PoolChange::Add { addr, weight } => format!("added {addr} (weight {weight})"),
        PoolChange::Delete(addr) => format!("deleted {addr}: its flows go to the other backends"),
        PoolChange::Drain(addr) => format!("drained {addr}: no new flows, its established flows stay"),
        PoolChange::Weight { addr, weight } => format!("{addr} has weight {weight}"),
    };
    eprintln!("pool `{pool}` of `{name}`: {done}");
    Ok(ExitCode::SUCCESS)
}

/// The weight of `pool add ADDR [weight W]`: 1 when not given.
fn add_weight(words: &[String]) -> Result<u32> {
    match words {
        [] => Ok(1),
        [word, w] if word == "weight" => super::backend_weight(w).map_err(anyhow::Error::msg),
        _ => bail!("after the address, `weight W` or nothing: `xpol pool NAME POOL add 198.18.1.13 weight 2`"),
    }
}
