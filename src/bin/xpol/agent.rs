//! `xpol agent --config FILE`: keeps a host's applied policies as a config
//! file says, for fleets (one config, e.g. a Kubernetes ConfigMap, on every
//! host; docs/deploy.md).
//!
//! The config is TOML: a human-written file, like Cargo.toml, with
//! comments, no indentation rules and no implicit typing (YAML's `no` and
//! `0755`), read with serde (`deny_unknown_fields`: a misspelt key is an
//! error, not a silently ignored setting):
//!
//! ```toml
//! metrics = "0.0.0.0:9464"        # optional: PORT (127.0.0.1) or ADDRESS:PORT
//! interval = 5                    # optional: seconds between metrics samples
//!
//! [[policy]]
//! name = "edge"                   # the name it is applied under (`xpol list`)
//! source = "firewall.xpol"        # a source or an object; relative to the config
//! interfaces = ["eth0"]
//! hooks = ["xdp"]                 # optional: as `apply --hook` (default: all)
//! mode = "auto"                   # optional: as `apply --mode`
//! ```
//!
//! Reconciling goes through the same `apply` as `xpol apply` (an applied
//! name is replaced atomically, keeping its state: no gap). The agent owns
//! the policies it applied, and only those: their record's source says so
//! (`agent CONFIG: PATH`, see [`owner_prefix`]), which `xpol list` shows
//! and which survives restarts of the agent. A name the config no longer
//! lists is deleted only when the agent owns it; a name the config lists
//! but that was applied by hand is left alone (reported) until `xpol
//! delete` frees it. A policy applied by hand over an agent's name becomes
//! the hand's. Names the config no longer lists are deleted before the
//! rest is applied, so that a renamed policy finds its interfaces free.
//!
//! It watches the config and every file the policies read (the `apply
//! --watch` watcher), serves Prometheus metrics for every applied policy
//! (the `--metrics` endpoint of `xpol run`), and on SIGTERM or Ctrl-C stops
//! with the policies applied, as `xpol@.service` does (docs/deploy.md):
//! stopping or upgrading the agent never opens a gap.

use super::follow::{compile, Follower};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xpol_runtime::apply::{self, ApplyRequest};
use xpol_runtime::store::Store;

/// The config file, as written.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    metrics: Option<MetricsAddr>,
    interval: Option<f64>,
    #[serde(default)]
    policy: Vec<PolicyEntry>,
}

/// `metrics = 9464` or `metrics = "ADDRESS:PORT"`, as `--metrics` takes.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum MetricsAddr {
    Port(u16),
    Text(String),
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PolicyEntry {
    name: String,
    source: PathBuf,
    interfaces: Vec<String>,
    #[serde(default)]
    hooks: Vec<String>,
    mode: Option<String>,
}

/// One policy as the agent applies it: the source resolved against the
/// config's directory, the hooks and mode in the runtime's words.
#[derive(Clone, Debug, PartialEq)]
struct Desired {
    name: String,
    source: PathBuf,
    interfaces: Vec<String>,
    hooks: Vec<String>,
    mode: xpol_runtime::loader::XdpAttachMode,
}

#[derive(Debug)]
struct Config {
    metrics: Option<std::net::SocketAddr>,
    interval: Duration,
    policies: Vec<Desired>,
}

/// A problem in the config, at its place in the text: a miette report
/// with the file as its source.
fn config_error(path: &Path, text: &str, span: Option<std::ops::Range<usize>>, message: String) -> anyhow::Error {
    let labels = span.map(|s| vec![miette::LabeledSpan::at(s, "here")]).unwrap_or_default();
    let report = miette::miette!(labels = labels, "{message}").with_source_code(miette::NamedSource::new(path.display().to_string(), text.to_string()));
    anyhow::anyhow!("{report:?}")
}

/// The span of a key's value in the text (the first `key = ...` after
/// `from`), for errors found after parsing.
fn span_of(text: &str, key: &str, from: usize) -> Option<std::ops::Range<usize>> {
    let at = text[from..].find(&format!("{key} ")).or_else(|| text[from..].find(&format!("{key}=")))? + from;
    let end = text[at..].find('\n').map_or(text.len(), |e| at + e);
    Some(at..end)
}

fn hook_name(word: &str) -> Option<&'static str> {
    match word {
        "xdp" => Some("xdp"),
        "tc:ingress" | "tc-ingress" => Some("tc:ingress"),
        "tc:egress" | "tc-egress" => Some("tc:egress"),
        _ => None,
    }
}

fn read_config(path: &Path) -> Result<Config> {
    let text = xpol_lang::input::read_text(path, xpol_lang::input::SOURCE_LIMIT).map_err(|e| anyhow::anyhow!("cannot read the config {}: {e}", path.display()))?;
    let file: ConfigFile = toml::from_str(&text).map_err(|e| config_error(path, &text, e.span(), e.message().to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let metrics = match &file.metrics {
        Some(MetricsAddr::Port(port)) => Some(std::net::SocketAddr::from(([127, 0, 0, 1], *port))),
        Some(MetricsAddr::Text(m)) => Some(super::metrics::listen_addr(m).map_err(|why| config_error(path, &text, span_of(&text, "metrics", 0), format!("metrics: {why}")))?),
        None => None,
    };
    let interval = file.interval.unwrap_or(5.0);
    if !(interval.is_finite() && (0.1..=86_400.0).contains(&interval)) {
        return Err(config_error(path, &text, span_of(&text, "interval", 0), format!("interval: {interval} is out of range: give seconds, 0.1 to 86400")));
    }
    let mut policies: Vec<Desired> = Vec::new();
    let mut from = 0;
    for entry in file.policy {
        // Each `[[policy]]` table's keys are found after its name.
        let at = text[from..].find(&entry.name).map_or(from, |a| a + from);
        let here = |key: &str| span_of(&text, key, at);
        if let Err(e) = xpol_runtime::store::check_name(&entry.name) {
            return Err(config_error(path, &text, here("name"), format!("policy name: {e}")));
        }
        if policies.iter().any(|p| p.name == entry.name) {
            return Err(config_error(path, &text, here("name"), format!("two policies are named `{}`: a name is applied once", entry.name)));
        }
        if entry.interfaces.is_empty() {
            return Err(config_error(path, &text, here("interfaces"), format!("policy `{}` names no interface", entry.name)));
        }
        let mut hooks = Vec::new();
        for h in &entry.hooks {
            let Some(h) = hook_name(h) else {
                return Err(config_error(path, &text, here("hooks"), format!("`{h}` is not a hook: xdp, tc:ingress or tc:egress")));
            };
            hooks.push(h.to_string());
        }
        let mode = match entry.mode.as_deref() {
            None => xpol_runtime::loader::XdpAttachMode::Auto,
            Some(m) => apply::parse_mode(if m == "drv" { "native" } else { m })
                .ok_or_else(|| config_error(path, &text, here("mode"), format!("`{m}` is not an XDP mode: auto, native or skb")))?,
        };
        from = at + entry.name.len();
        policies.push(Desired { name: entry.name, source: dir.join(&entry.source), interfaces: entry.interfaces, hooks, mode });
    }
    Ok(Config { metrics, interval: Duration::from_secs_f64(interval), policies })
}

/// What the record's source of a policy this agent applied starts with:
/// the config's path, so that two agents with different configs do not
/// remove each other's.
fn owner_prefix(config: &Path) -> String {
    format!("agent {}: ", config.display())
}

/// What the agent keeps from one reconcile to the next.
#[derive(Default)]
struct State {
    /// What it applied last, by name: what it would apply now is compared
    /// with it, so that an unchanged policy is not applied again.
    applied: BTreeMap<String, (Desired, Vec<u8>)>,
    /// Each source's latest compile: reused when the agent tries again
    /// with no file changed, so that a policy's warnings show once a change.
    compiled: BTreeMap<PathBuf, super::follow::Compiled>,
    /// What was last said of each policy that is not as the config says:
    /// said again only when it changes, not at every retry.
    said: BTreeMap<String, String>,
}

/// Says `what` of policy `name` unless it was the last thing said of it
/// ([`State::said`]); true when it was said now.
fn say(said: &mut BTreeMap<String, String>, name: &str, what: String) -> bool {
    if said.get(name) == Some(&what) {
        return false;
    }
    eprintln!("agent: {what}");
    said.insert(name.to_string(), what);
    true
}

/// Brings the host to `config`: applies what is missing or changed,
/// deletes what this agent applied and the config no longer names;
/// `fresh`: a file changed, so every policy is compiled again. The files
/// the policies read, for the watcher; and whether everything is as the
/// config says (else the next tick tries again: an interface may appear,
/// a hand-applied name may be deleted).
fn reconcile(config_path: &Path, config: &Config, state: &mut State, fresh: bool) -> Result<(Vec<PathBuf>, bool)> {
    if fresh {
        state.compiled.clear();
    }
    let store = Store::write()?;
    let prefix = owner_prefix(config_path);
    let mut files = Vec::new();
    let mut all_ok = true;
    // First what the config no longer names, only the agent's own: a
    // policy renamed in the config on the same interfaces then finds them
    // free (a short gap, as for `xpol delete` then `xpol apply`; keep a
    // name to replace without one).
    for name in store.names()? {
        if config.policies.iter().any(|p| p.name == name) {
            continue;
        }
        let ours = store.applied(&name).ok().and_then(|a| a.current).is_some_and(|g| g.record.source.starts_with(&prefix));
        if ours {
            store.delete(&name)?;
            state.applied.remove(&name);
            state.said.remove(&name);
            eprintln!("agent: deleted `{name}`: the config no longer names it");
        }
    }
    for want in &config.policies {
        if !state.compiled.contains_key(&want.source) {
            let compiled = compile(&want.source)?;
            state.compiled.insert(want.source.clone(), compiled);
        }
        let compiled = &state.compiled[&want.source];
        files.extend(compiled.files.iter().cloned());
        let Some((object, build)) = compiled.object.as_ref() else {
            let what = format!("`{}`: {} did not compile (above); what runs stays", want.name, want.source.display());
            say(&mut state.said, &want.name, what);
            all_ok = false;
            continue;
        };
        let (object, build) = (object.clone(), build.as_ref());
        let current = match store.applied(&want.name) {
            Ok(a) => Some(a),
            Err(xpol_runtime::loader::RuntimeError::NotApplied(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(a) = &current {
            let source = a.current.as_ref().map(|g| g.record.source.as_str()).unwrap_or("");
            if !source.starts_with(&prefix) && a.current.is_some() {
                let what = format!("`{}` was applied by hand (from {source}): left alone; `xpol delete {}` lets the agent apply it", want.name, want.name);
                say(&mut state.said, &want.name, what);
                all_ok = false;
                continue;
            }
            let unchanged = state.applied.get(&want.name).is_some_and(|(d, o)| d == want && *o == object);
            if unchanged && a.problems.is_empty() {
                continue;
            }
        }
        let req = ApplyRequest {
            name: &want.name,
            object: &object,
            source: format!("{prefix}{}", want.source.display()),
            interfaces: want.interfaces.clone(),
            hooks: (!want.hooks.is_empty()).then(|| want.hooks.clone()),
            mode: want.mode,
            set_contents: Default::default(),
        };
        match apply::apply(&store, &req) {
            Ok(outcome) => {
                for w in &outcome.warnings {
                    eprintln!("agent: warning: `{}` was replaced, but {w}", want.name);
                }
                eprintln!(
                    "agent: {} `{}` (generation {}) from {} on {}",
                    if outcome.replaced { "replaced" } else { "applied" },
                    want.name,
                    outcome.generation,
                    want.source.display(),
                    want.interfaces.join(", ")
                );
                state.applied.insert(want.name.clone(), (want.clone(), object));
                state.said.remove(&want.name);
            }
            Err(e) => {
                // The kernel's rejection at its source, once per error.
                if say(&mut state.said, &want.name, format!("`{}` not applied: {e}", want.name)) {
                    if let (Some(build), xpol_runtime::loader::RuntimeError::Verifier { .. } | xpol_runtime::loader::RuntimeError::Map { .. }) = (build, &e) {
                        super::explain_load_error(build, e, &Default::default())?;
                    }
                }
                all_ok = false;
            }
        }
    }
    Ok((files, all_ok))
}

/// The Prometheus text of every applied policy (the agent's and any
/// other), one family each: `prometheus` writes one policy's, with its
/// `# HELP`/`# TYPE` lines, which may appear once per family.
fn metrics_text(previous: &mut BTreeMap<String, super::Totals>, dt: f64) -> Result<String> {
    let Some(store) = Store::read()? else { return Ok(String::new()) };
    let mut families: Vec<(String, Vec<String>)> = Vec::new();
    let mut seen = BTreeMap::new();
    for name in store.names()? {
        let Ok(applied) = store.applied(&name) else { continue };
        let Some(current) = applied.current.as_ref() else { continue };
        let interfaces: Vec<&str> = applied.links.iter().map(|l| l.interface.as_str()).collect();
        let before = previous.remove(&name).unwrap_or_default();
        let mut report = super::snapshot(&current.maps()?, &interfaces.join(","), 0.0, &before, dt)?;
        report["policy"] = name.clone().into();
        seen.insert(name, super::rule_totals(&report));
        let mut family = None;
        for line in super::prometheus(&report).lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let metric = rest.split(' ').next().unwrap_or("").to_string();
                let index = match families.iter().position(|(m, _)| *m == metric) {
                    Some(i) => i,
                    None => {
                        families.push((metric, vec![line.to_string()]));
                        families.len() - 1
                    }
                };
                family = Some(index);
            } else if line.starts_with("# TYPE ") {
                if let Some(i) = family.filter(|&i| families[i].1.len() == 1) {
                    families[i].1.push(line.to_string());
                }
            } else if let Some(i) = family {
                families[i].1.push(line.to_string());
            }
        }
    }
    *previous = seen;
    let mut out = String::new();
    for (_, lines) in families {
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    Ok(out)
}

pub fn agent(config_path: &Path) -> Result<ExitCode> {
    // Absolute, so that the owner prefix is the same from any directory.
    let config_path = std::path::absolute(config_path).with_context(|| format!("the config {}", config_path.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the SIGTERM and Ctrl-C handler")?;
    // Watching starts before the first read: a change made meanwhile counts.
    let mut follower = Follower::new(&config_path)?;
    let mut config = read_config(&config_path)?;
    let metrics = match config.metrics {
        Some(addr) => Some((addr, super::metrics::serve(addr)?)),
        None => None,
    };
    let mut state = State::default();
    let (files, mut settled) = reconcile(&config_path, &config, &mut state, true)?;
    // The policies' files, to follow again with the config when only the
    // config was read again.
    let mut policy_files = files;
    follower.follow(&[vec![config_path.clone()], policy_files.clone()].concat())?;
    eprintln!(
        "agent: {} polic{} from {}; watching {} file(s){}",
        config.policies.len(),
        if config.policies.len() == 1 { "y" } else { "ies" },
        config_path.display(),
        follower.len(),
        metrics.as_ref().map(|(a, _)| format!("; metrics on http://{a}/metrics")).unwrap_or_default()
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let mut previous = BTreeMap::new();
    let mut last = Instant::now();
    let mut next_sample = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if let Some((_, m)) = &metrics {
            if Instant::now() >= next_sample {
                let dt = last.elapsed().as_secs_f64();
                last = Instant::now();
                match metrics_text(&mut previous, dt) {
                    Ok(text) => m.publish(text),
                    Err(e) => eprintln!("agent: metrics: {e:#}"),
                }
                next_sample = Instant::now() + config.interval;
            }
        }
        let changed = follower.changed(Duration::from_millis(100))?;
        let retry = !settled && Instant::now() >= next_sample;
        if !changed && !retry {
            continue;
        }
        if changed {
            match read_config(&config_path) {
                Ok(c) => {
                    if c.metrics != config.metrics {
                        eprintln!("agent: the metrics address changed in the config: it takes effect when the agent restarts");
                    }
                    config = c;
                }
                Err(e) => {
                    eprintln!("error: {e:#}\nagent: the config did not read; the policies stay as they are");
                    // The config's path may lead somewhere new (a ConfigMap's
                    // files are links switched to a new directory).
                    follower.follow(&[vec![config_path.clone()], policy_files.clone()].concat())?;
                    continue;
                }
            }
        }
        match reconcile(&config_path, &config, &mut state, changed) {
            Ok((files, ok)) => {
                policy_files = files;
                follower.follow(&[vec![config_path.clone()], policy_files.clone()].concat())?;
                settled = ok;
            }
            Err(e) => {
                eprintln!("agent: error: {e:#}");
                settled = false;
            }
        }
        if metrics.is_none() {
            next_sample = Instant::now() + config.interval;
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    eprintln!("agent: stopped; the policies stay applied (`xpol list`)");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::read_config;

    fn config(text: &str) -> Result<super::Config, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).expect("write");
        read_config(&path).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn a_config_reads_and_its_sources_are_relative_to_it() {
        let c = config("metrics = 9464\n[[policy]]\nname = \"edge\"\nsource = \"fw.xpol\"\ninterfaces = [\"eth0\"]\nhooks = [\"tc-ingress\"]\nmode = \"skb\"\n").expect("reads");
        assert_eq!(c.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.policies[0].hooks, ["tc:ingress"]);
        assert!(c.policies[0].source.is_absolute() && c.policies[0].source.ends_with("fw.xpol"));
    }

    #[test]
    fn the_example_config_reads() {
        let c = read_config(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent.toml")).expect("examples/agent.toml");
        assert_eq!(c.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!((c.policies[0].name.as_str(), c.policies[0].hooks.as_slice()), ("web-firewall", &["xdp".to_string()][..]));
        assert!(c.policies[0].source.ends_with("examples/firewall.xpol") && c.policies[0].source.exists());
    }

    #[test]
    fn mistakes_are_errors_at_their_place() {
        for (text, says) in [
            ("[[policy]]\nname = \"a\"\nsource = \"x\"\ninterfaces = [\"e\"]\nhook = [\"xdp\"]\n", "unknown field `hook`"),
            ("[[policy]]\nname = \"a\"\nsource = \"x\"\ninterfaces = []\n", "names no interface"),
            ("[[policy]]\nname = \"a\"\nsource = \"x\"\ninterfaces = [\"e\"]\nmode = \"fast\"\n", "not an XDP mode"),
            ("[[policy]]\nname = \"a\"\nsource = \"x\"\ninterfaces = [\"e\"]\n[[policy]]\nname = \"a\"\nsource = \"y\"\ninterfaces = [\"e\"]\n", "two policies"),
            ("metrics = \"nowhere\"\n", "metrics"),
        ] {
            let e = config(text).expect_err(says);
            assert!(e.contains(says), "{says}: {e}");
            assert!(e.contains("agent.toml"), "the error names the file: {e}");
        }
    }
}
