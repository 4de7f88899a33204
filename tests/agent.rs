//! `xpol agent` end to end, in a network namespace of the test's own and a
//! private bpffs ([`Host`]): a config with two policies on two
//! interfaces, one applied by hand beside them; the agent applies its
//! two, serves metrics for all three over HTTP, follows a change of the
//! config (one policy removed, the other moved to both interfaces), never
//! touches the hand's, and stops on SIGTERM with its policies applied.

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

fn write_config(path: &Path, policies: &[(&str, &str, &[&str])]) {
    let mut text = format!("# written by tests/agent.rs\nmetrics = \"127.0.0.1:{METRICS_PORT}\"\ninterval = 0.2\n");
    for (name, source, ifaces) in policies {
        let ifaces: Vec<String> = ifaces.iter().map(|i| format!("\"{i}\"")).collect();
        text.push_str(&format!("\n[[policy]]\nname = \"{name}\"\nsource = \"{source}\"\ninterfaces = [{}]\n", ifaces.join(", ")));
    }
    // Renamed into place, as an editor or a ConfigMap update does.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

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
    std::fs::write(dir.path().join("one.xpol"), "xdp /udp.dport == 9/ { drop }\nxdp { pass }\n").expect("write");
    std::fs::write(dir.path().join("two.xpol"), "xdp /udp.dport == 7/ { drop }\nxdp { pass }\n").expect("write");
    let config = dir.path().join("agent.toml");
    write_config(&config, &[("one", "one.xpol", &[a0.as_str()]), ("two", "two.xpol", &[a1.as_str()])]);

    // A policy applied by hand, which the agent must leave alone.
    host.ok(&ns.name, &["apply", &dir.path().join("two.xpol").display().to_string(), "-i", &hand, "--name", "hand"]);

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
    write_config(&config, &[("one", "one.xpol", &[a0.as_str(), a1.as_str()])]);
    let now = wait_for(&host, &ns.name, "the agent follows the config", |l| find(l, "two").is_none() && find(l, "one").is_some_and(|p| p.2.len() == 2));
    assert!(find(&now, "hand").is_some(), "the hand's policy stays: {now:?}");

    // A config that does not read changes nothing.
    std::fs::write(&config, "[[policy]]\nname = \"one\"\n").expect("write");
    std::thread::sleep(Duration::from_millis(500));
    assert!(find(&listed(&host, &ns.name), "one").is_some());

    // SIGTERM (passed on by `timeout`): the agent stops, its policy stays.
    let term = Command::new("kill").args(["-TERM", &agent.id().to_string()]).status().expect("kill");
    assert!(term.success());
    let status = wait_bounded(&mut agent, Duration::from_secs(20));
    let mut err = String::new();
    agent.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
    assert!(status.success(), "the agent stops cleanly: {err}");
    assert!(err.contains("unknown") || err.contains("missing field"), "the bad config was reported: {err}");
    assert!(err.contains("deleted `two`"), "{err}");
    let now = listed(&host, &ns.name);
    assert!(find(&now, "one").is_some() && find(&now, "hand").is_some(), "{now:?}");
}
