//! `xpol agent` end to end, in a network namespace of the test's own and a
//! private bpffs ([`Host`]): a config with two policies on two
//! interfaces, one applied by hand beside them; the agent applies its
//! two, serves metrics for all three over HTTP, follows a change of the
//! config (one policy removed, the other moved to both interfaces), never
//! touches the hand's, and stops on SIGTERM with its policies applied. The
//! config and policies change as the kubelet changes a ConfigMap's files:
//! a directory switched in by renaming a link.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::host::Host;
use common::net::{unique, wait_bounded, Netns};

const METRICS_PORT: u16 = 9464;

/// The applied policies, by name: (source, interfaces).
fn listed(host: &Host, ns: &str) -> Vec<(String, String, Vec<String>)> {
    host.ok(ns, &["list", "-j"])
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON");
            let p = &v["policy"];
            let mut ifaces: Vec<String> = p["links"].as_array().expect("links").iter().map(|l| l["interface"].as_str().unwrap().to_string()).collect();
            ifaces.sort();
            (p["name"].as_str().unwrap().to_string(), p["source"].as_str().unwrap_or("").to_string(), ifaces)
        })
        .collect()
}

/// Waits (bounded) until `done` holds of the listed policies; the last list.
fn wait_for(host: &Host, ns: &str, what: &str, done: impl Fn(&[(String, String, Vec<String>)]) -> bool) -> Vec<(String, String, Vec<String>)> {
    let start = Instant::now();
    loop {
        let now = listed(host, ns);
        if done(&now) {
            return now;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what}: still {now:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET /metrics from inside the namespace; `None` until it answers 200.
fn scrape(ns: &Netns) -> Option<String> {
    ns.run(|| {
        let mut conn = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], METRICS_PORT).into(), Duration::from_secs(2)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").ok()?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply).ok()?;
        reply.starts_with("HTTP/1.1 200").then_some(reply)
    })
}

/// Publishes a config and its policies as the kubelet publishes a
/// ConfigMap's files: a new directory `..vN`, the `..data` link switched to
/// it by a rename, the old directory removed; the files the agent is
/// given are links through `..data`.
fn publish(dir: &Path, version: u32, one: &str, policies: &[(&str, &str, &[&str])]) {
    publish_text(dir, version, one, &config_text(policies));
}

fn config_text(policies: &[(&str, &str, &[&str])]) -> String {
    let mut text = format!("# written by tests/agent.rs\nmetrics = \"127.0.0.1:{METRICS_PORT}\"\ninterval = 0.2\n");
    for (name, source, ifaces) in policies {
        let ifaces: Vec<String> = ifaces.iter().map(|i| format!("\"{i}\"")).collect();
        text.push_str(&format!("\n[[policy]]\nname = \"{name}\"\nsource = \"{source}\"\ninterfaces = [{}]\n", ifaces.join(", ")));
    }
    text
}

fn publish_text(dir: &Path, version: u32, one: &str, text: &str) {
    let data = dir.join(format!("..v{version}"));
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("agent.toml"), text).expect("write config");
    std::fs::write(data.join("one.xpol"), one).expect("write");
    std::fs::write(data.join("two.xpol"), "xdp /udp.dport == 7/ { drop }\nxdp { pass }\n").expect("write");
    std::os::unix::fs::symlink(format!("..v{version}"), dir.join("..data_tmp")).expect("symlink");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("switch ..data");
    for f in ["agent.toml", "one.xpol", "two.xpol"] {
        let _ = std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f));
    }
    if version > 1 {
        std::fs::remove_dir_all(dir.join(format!("..v{}", version - 1))).expect("remove the old version");
    }
}

const ONE: &str = "xdp /udp.dport == 9/ { drop }\nxdp { pass }\n";
const ONE_CHANGED: &str = "xdp /udp.dport == 9/ { drop }\nxdp /udp.dport == 10/ { drop }\nxdp { pass }\n";

#[test]
fn agent_reconciles_serves_metrics_and_leaves_hand_policies_alone() {
    if !xpol_runtime::testing::kernel_or_skip("xpol agent") {
        return;
    }
    let host = Host::new();
    let id = unique();
    let ns = Netns::named(format!("xpol-t{id}-agent"));
    let (a0, a1, hand) = (format!("xg{id}a"), format!("xg{id}b"), format!("xg{id}h"));
    ns.ip(&["link", "add", &a0, "type", "veth", "peer", "name", &a1]);
    // A second pair for the hand's policy (this kernel has no dummy module).
    ns.ip(&["link", "add", &hand, "type", "veth", "peer", "name", &format!("xg{id}p")]);
    for dev in [&a0, &a1, &hand] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    publish(dir.path(), 1, ONE, &[("one", "one.xpol", &[a0.as_str()]), ("two", "two.xpol", &[a1.as_str()])]);

    // A policy applied by hand, which the agent must leave alone.
    let hand_policy = dir.path().join("hand.xpol");
    std::fs::write(&hand_policy, "xdp /udp.dport == 7/ { drop }\nxdp { pass }\n").expect("write");
    host.ok(&ns.name, &["apply", &hand_policy.display().to_string(), "-i", &hand, "--name", "hand"]);

    let mut agent = host.command(&ns.name, env!("CARGO_BIN_EXE_xpol")).args(["agent", "--config"]).arg(&config).stderr(Stdio::piped()).spawn().expect("start xpol agent");
    let now = wait_for(&host, &ns.name, "the agent applies its two policies", |l| l.iter().any(|p| p.0 == "one") && l.iter().any(|p| p.0 == "two"));
    let find = |l: &[(String, String, Vec<String>)], n: &str| l.iter().find(|p| p.0 == n).cloned();
    assert_eq!(find(&now, "one").unwrap().2, vec![a0.clone()]);
    assert_eq!(find(&now, "two").unwrap().2, vec![a1.clone()]);
    assert!(find(&now, "one").unwrap().1.starts_with("agent "), "the record says the agent applied it: {now:?}");
    assert!(!find(&now, "hand").unwrap().1.starts_with("agent "), "{now:?}");

    // Metrics for every applied policy, the hand's included, each family once.
    let start = Instant::now();
    let text = loop {
        if let Some(t) = scrape(&ns).filter(|t| t.contains("policy=\"two\"")) {
            break t;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no metrics");
        std::thread::sleep(Duration::from_millis(100));
    };
    for name in ["one", "two", "hand"] {
        assert!(text.contains(&format!("xpol_rule_packets_total{{policy=\"{name}\"")), "{name}: {text}");
    }
    assert_eq!(text.matches("# TYPE xpol_rule_packets_total counter").count(), 1, "{text}");

    // The config changes: `two` removed, `one` on both interfaces.
    publish(dir.path(), 2, ONE, &[("one", "one.xpol", &[a0.as_str(), a1.as_str()])]);
    let now = wait_for(&host, &ns.name, "the agent follows the config", |l| find(l, "two").is_none() && find(l, "one").is_some_and(|p| p.2.len() == 2));
    assert!(find(&now, "hand").is_some(), "the hand's policy stays: {now:?}");

    // A policy file changes: replaced in place (a new generation, the same
    // links), the rest untouched.
    let generation = |n: &str| {
        host.ok(&ns.name, &["list", "-j"]).lines().map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")).find(|v| v["policy"]["name"] == n).map(|v| v["policy"]["generation"].as_u64().unwrap())
    };
    let before = generation("one").expect("one");
    publish(dir.path(), 3, ONE_CHANGED, &[("one", "one.xpol", &[a0.as_str(), a1.as_str()])]);
    wait_for(&host, &ns.name, "the changed policy is applied", |_| generation("one").is_some_and(|g| g > before));
    assert_eq!(generation("hand"), Some(1), "the hand's policy was not applied again");

    // A config that does not read changes nothing (`one` would go).
    publish_text(dir.path(), 4, ONE_CHANGED, "[[policy]]\nname = \"one\"\n");
    std::thread::sleep(Duration::from_millis(500));
    assert!(find(&listed(&host, &ns.name), "one").is_some());
    assert_eq!(config.read_link().ok(), Some("..data/agent.toml".into()));

    // The config names `hand` (before `one`, which moves back to one
    // interface: once that is done, `hand` was considered): left alone
    // while applied by hand; once deleted, the agent applies it.
    publish(dir.path(), 5, ONE_CHANGED, &[("hand", "two.xpol", &[hand.as_str()]), ("one", "one.xpol", &[a0.as_str()])]);
    let now = wait_for(&host, &ns.name, "the fifth config is read", |l| find(l, "one").is_some_and(|p| p.2.len() == 1));
    assert!(!find(&now, "hand").unwrap().1.starts_with("agent "), "the hand's policy was taken over: {now:?}");
    assert_eq!(generation("hand"), Some(1), "the hand's policy was applied again");
    host.ok(&ns.name, &["delete", "hand"]);
    wait_for(&host, &ns.name, "the agent applies `hand` once it is free", |l| find(l, "hand").is_some_and(|p| p.1.starts_with("agent ")));

    // SIGTERM (passed on by `timeout`): the agent stops, its policy stays.
    let term = Command::new("kill").args(["-TERM", &agent.id().to_string()]).status().expect("kill");
    assert!(term.success());
    let status = wait_bounded(&mut agent, Duration::from_secs(20));
    let mut err = String::new();
    agent.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
    assert!(status.success(), "the agent stops cleanly: {err}");
    assert!(err.contains("unknown") || err.contains("missing field"), "the bad config was reported: {err}");
    assert!(err.contains("deleted `two`"), "{err}");
    // Said once, not at every retry while it lasted.
    assert_eq!(err.matches("`hand` was applied by hand").count(), 1, "{err}");
    let now = listed(&host, &ns.name);
    assert!(find(&now, "one").is_some() && find(&now, "hand").is_some(), "{now:?}");
}

/// The capabilities deploy/k8s/daemonset.yaml gives the agent suffice to
/// apply and to replace (docs/deploy.md says why each is there); without
/// CAP_SYS_ADMIN a replace is refused, saying so.
#[test]
fn the_daemonsets_capabilities_suffice_and_sys_admin_is_needed_to_replace() {
    if !xpol_runtime::testing::kernel_or_skip("xpol apply with the DaemonSet's capabilities") {
        return;
    }
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s/daemonset.yaml")).expect("daemonset.yaml");
    let line = manifest.lines().find(|l| l.trim_start().starts_with("add: [")).expect("the capabilities the DaemonSet adds");
    let caps: Vec<String> = line.split('"').skip(1).step_by(2).map(|c| format!("cap_{}", c.to_lowercase())).collect();
    assert!(caps.contains(&"cap_sys_admin".to_string()), "{caps:?}");
    let all = String::from_utf8(Command::new("capsh").arg("--print").output().expect("capsh (libcap2-bin)").stdout).expect("utf-8");
    let bounding = all.lines().find_map(|l| l.strip_prefix("Bounding set =")).expect("a bounding set").trim().to_string();
    let drop_all_but = |keep: &[String]| bounding.split(',').filter(|c| !keep.contains(&c.to_string())).collect::<Vec<_>>().join(",");

    let host = Host::new();
    let ns = Netns::named(format!("xpol-t{}-caps", unique()));
    ns.ip(&["link", "add", "xc0", "type", "veth", "peer", "name", "xc1"]);
    ns.ip(&["link", "set", "xc0", "up"]);
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/firewall.xpol");
    let apply = format!("{} apply {} -i xc0 --name caps", env!("CARGO_BIN_EXE_xpol"), policy.display());
    let under = |keep: &[String]| {
        let out = host.command(&ns.name, "capsh").arg(format!("--drop={}", drop_all_but(keep))).args(["--", "-c", &apply]).output().expect("capsh");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // First apply, then a replace, with exactly the DaemonSet's capabilities.
    for what in ["apply", "replace"] {
        let (ok, err) = under(&caps);
        assert!(ok, "{what} with {caps:?}: {err}");
    }
    // Without CAP_SYS_ADMIN, the replace is refused and says why.
    let fewer: Vec<String> = caps.iter().filter(|c| *c != "cap_sys_admin").cloned().collect();
    let (ok, err) = under(&fewer);
    assert!(!ok && err.contains("only with CAP_SYS_ADMIN") && err.contains("nothing was replaced"), "{err}");
}
