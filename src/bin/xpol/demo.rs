//! `xpol demo`: the main job on a bundled default, end to end, on a machine
//! of its own making. Two network namespaces joined by a veth pair (a
//! client and a server, addresses in 198.18.0.0/15 and 2001:db8::/32
//! only), `examples/firewall.xpol` (bundled: no checkout needed) attached
//! to the server's side, a mix of traffic sent from the client, and the
//! per-rule table `xpol run` shows. Everything is removed when it ends,
//! fails or is interrupted: the namespaces (and with them the veth pair
//! and the attached program) by [`Lab`]'s drop, the program's maps with
//! the loaded policy.
//!
//! The traffic is whole frames sent on the client's end of the veth pair
//! (`sys::FrameSender`), so that each is exactly one packet at the policy
//! and the counters shown are what was sent (a fragment too, which no
//! ordinary socket sends on demand); and one real TCP connection to a web
//! server in the server namespace, which the policy lets through.

use anyhow::{bail, Context, Result};
use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use xpol_runtime::loader::{LoadedPolicy, XdpAttachMode};
use xpol_runtime::packet::PacketSpec;

/// The policy the demo runs, as shipped in examples/.
pub const FIREWALL: &str = include_str!("../../../examples/firewall.xpol");
/// The name its rules are shown under (`file:line` in the table).
const FIREWALL_PATH: &str = "examples/firewall.xpol";

const CLIENT_MAC: [u8; 6] = [0x02, 0x78, 0x70, 0x00, 0x00, 0x01];
const SERVER_MAC: [u8; 6] = [0x02, 0x78, 0x70, 0x00, 0x00, 0x02];
const CLIENT_V4: &str = "198.18.0.1";
const SERVER_V4: &str = "198.18.0.2";
const CLIENT_V6: &str = "2001:db8:2::1";
const SERVER_V6: &str = "2001:db8:2::2";
/// The port of the real web server in the server namespace.
const WEB_PORT: u16 = 80;

/// One kind of traffic: what it is, how many frames, and the rule of
/// examples/firewall.xpol (by line) that decides it.
pub struct Step {
    pub what: &'static str,
    pub frames: u32,
    pub line: u32,
    pub verdict: &'static str,
    spec: fn(u16) -> PacketSpec,
}

fn v4(s: &str) -> std::net::Ipv4Addr {
    s.parse().expect("an IPv4 literal")
}

fn v6(s: &str) -> std::net::Ipv6Addr {
    s.parse().expect("an IPv6 literal")
}

/// The frames the demo sends. Sources outside 198.18.0.0/15 and
/// 2001:db8::/32 are never used: the blocklisted and admin sources are the
/// example's IPv6 ones (2001:db8:bad::/48, 2001:db8:1::/48).
pub fn steps() -> Vec<Step> {
    vec![
        Step { what: "web: tcp 198.18.0.1 -> :8080 syn", frames: 5, line: 19, verdict: "pass", spec: |p| PacketSpec::tcp4(v4(CLIENT_V4), v4(SERVER_V4), p, 8080).syn() },
        Step { what: "web: tcp [2001:db8:2::1] -> :443 syn", frames: 3, line: 19, verdict: "pass", spec: |p| PacketSpec::tcp6(v6(CLIENT_V6), v6(SERVER_V6), p, 443).syn() },
        Step { what: "blocklisted source: tcp [2001:db8:bad::1] -> :443 syn", frames: 4, line: 15, verdict: "drop", spec: |p| PacketSpec::tcp6(v6("2001:db8:bad::1"), v6(SERVER_V6), p, 443).syn() },
        Step { what: "blocklisted source: tcp [2001:db8:bad::7] -> :80 syn", frames: 2, line: 15, verdict: "drop", spec: |p| PacketSpec::tcp6(v6("2001:db8:bad::7"), v6(SERVER_V6), p, 80).syn() },
        Step { what: "ssh from outside the admin range: tcp 198.18.0.1 -> :22 syn", frames: 3, line: 17, verdict: "drop", spec: |p| PacketSpec::tcp4(v4(CLIENT_V4), v4(SERVER_V4), p, 22).syn() },
        Step { what: "ssh from the admin range: tcp [2001:db8:1::5] -> :22 syn", frames: 2, line: 20, verdict: "pass", spec: |p| PacketSpec::tcp6(v6("2001:db8:1::5"), v6(SERVER_V6), p, 22).syn() },
        Step { what: "telnet: tcp 198.18.0.1 -> :23 syn", frames: 2, line: 18, verdict: "drop", spec: |p| PacketSpec::tcp4(v4(CLIENT_V4), v4(SERVER_V4), p, 23).syn() },
        Step { what: "TCP fragment: tcp 198.18.0.1 -> :22, offset 64", frames: 1, line: 16, verdict: "drop", spec: |p| PacketSpec::tcp4(v4(CLIENT_V4), v4(SERVER_V4), p, 22).frag(64, false) },
        Step { what: "UDP fragment: udp 198.18.0.1 -> :53, offset 1480", frames: 1, line: 20, verdict: "pass", spec: |p| PacketSpec::udp4(v4(CLIENT_V4), v4(SERVER_V4), p, 53).frag(1480, false) },
    ]
}

/// The namespaces, removed on drop (with them the veth pair, the
/// addresses and the attached program): when the demo ends, fails, or
/// stops on Ctrl-C or SIGTERM.
struct Lab {
    client: String,
    server: String,
    client_dev: String,
    server_dev: String,
    created: Vec<String>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Lab {
    fn new() -> Result<Lab> {
        // Unique per process: two demos at once do not meet.
        let id = std::process::id();
        let mut lab = Lab {
            client: format!("xpol-demo-{id}-client"),
            server: format!("xpol-demo-{id}-server"),
            client_dev: format!("xdc{}", id % 1_000_000),
            server_dev: format!("xds{}", id % 1_000_000),
            created: Vec::new(),
        };
        for ns in [lab.client.clone(), lab.server.clone()] {
            ip(&["netns", "add", &ns])?;
            lab.created.push(ns);
        }
        let (c, s, cd, sd) = (lab.client.clone(), lab.server.clone(), lab.client_dev.clone(), lab.server_dev.clone());
        let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        ip(&["link", "add", &cd, "netns", &c, "address", &mac(CLIENT_MAC), "type", "veth", "peer", "name", &sd, "netns", &s, "address", &mac(SERVER_MAC)])?;
        for (ns, dev, a4, a6) in [(&c, &cd, CLIENT_V4, CLIENT_V6), (&s, &sd, SERVER_V4, SERVER_V6)] {
            ip(&["-n", ns, "addr", "add", &format!("{a4}/24"), "dev", dev])?;
            ip(&["-n", ns, "addr", "add", &format!("{a6}/64"), "dev", dev, "nodad"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(lab)
    }

    fn path(ns: &str) -> PathBuf {
        Path::new("/run/netns").join(ns)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.created {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("warning: could not remove the namespace {ns}: {e:#} (`ip netns del {ns}` removes it)");
            }
        }
        if !self.created.is_empty() {
            eprintln!("removed the namespaces {} (and with them the veth pair and the program)", self.created.join(", "));
        }
    }
}

/// `xpol demo`. With `json`, the last line is the final report with each
/// step (docs/json.md's run report, plus `"demo"`).
pub fn demo(json: bool, mode: XdpAttachMode) -> Result<ExitCode> {
    // Before anything is created: the demo compiles the bundled example.
    if !cfg!(feature = "compiler") {
        bail!("xpol demo compiles the bundled {FIREWALL_PATH}, and this xpol was built without the compiler (--no-default-features): run the demo with a full build (`./run-demo`, or `cargo run --release --bin xpol -- demo`)");
    }
    xpol_runtime::sys::can_load_bpf().map_err(|why| anyhow::anyhow!("xpol demo loads a program into the kernel: {why}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let interrupted = || -> Result<()> {
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    };

    let build = xpol_compiler::build_text(Path::new(FIREWALL_PATH), FIREWALL.to_string(), &xpol_compiler::BuildOptions::default());
    if !build.diagnostics.is_empty() {
        eprint!("{}", xpol_lang::render::render_human(&build.diagnostics, &build.sources, std::io::stderr().is_terminal()));
    }
    let Some(out) = &build.output else { bail!("the bundled {FIREWALL_PATH} did not compile (above)") };
    let mut policy = LoadedPolicy::load(&out.object).context("loading the policy into the kernel")?;
    eprintln!("compiled the bundled {FIREWALL_PATH} ({} rules)", policy.meta().rules.len());

    let lab = Lab::new()?;
    eprintln!("created the namespaces {} ({CLIENT_V4}, {CLIENT_V6}) and {} ({SERVER_V4}, {SERVER_V6}), joined by a veth pair", lab.client, lab.server);
    interrupted()?;
    let server_dev = lab.server_dev.clone();
    xpol_runtime::sys::in_netns(&Lab::path(&lab.server), None, || policy.attach("xdp", &server_dev, mode))??;
    eprintln!("attached it to {} (xdp) in {}", lab.server_dev, lab.server);

    // A web server in the server namespace; sockets keep the namespace
    // they were made in, so it is bound there and served from here.
    let web = xpol_runtime::sys::in_netns(&Lab::path(&lab.server), None, || std::net::TcpListener::bind((v4(SERVER_V4), WEB_PORT)))??;
    // Polled, so that the thread ends (within 10 s) even when no
    // connection comes.
    web.set_nonblocking(true)?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match web.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = [0u8; 256];
        let _ = conn.read(&mut request)?;
        conn.write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 14\r\n\r\nhello from xpol")
    });
    let client_dev = lab.client_dev.clone();
    let sender = xpol_runtime::sys::in_netns(&Lab::path(&lab.client), None, || xpol_runtime::sys::FrameSender::open(&client_dev))??;

    // The `log` statements' records (ssh denied, telnet), shown under the
    // table as `xpol run` shows them.
    let mut log_reader = xpol_runtime::log::LogReader::open(policy.maps())?;
    let mut log_sink = super::log_records::LogSink::new(false, None, &[], true, true)?;
    let terminal = std::io::stdout().is_terminal() && !json;
    let start = std::time::Instant::now();
    let mut done: Vec<String> = Vec::new();
    let mut previous = super::Totals::new();
    let mut last = std::time::Instant::now();
    let mut show = |policy: &LoadedPolicy, done: &[String], final_table: bool| -> Result<serde_json::Value> {
        if let Some(r) = log_reader.as_mut() {
            // In the server's namespace, where the records' interface
            // index names the server's end of the pair.
            xpol_runtime::sys::in_netns(&Lab::path(&lab.server), None, || log_sink.take(r))??;
        }
        let dt = last.elapsed().as_secs_f64();
        last = std::time::Instant::now();
        let mut report = super::snapshot(policy.maps(), &format!("{} in {}", lab.server_dev, lab.server), start.elapsed().as_secs_f64(), &previous, dt)?;
        report["policy"] = "firewall".into();
        previous = super::rule_totals(&report);
        if terminal || final_table && !json {
            super::print_table(&report, terminal);
            println!("  sent:");
            for d in done {
                println!("    {d}");
            }
            if log_sink.records > 0 {
                println!("  last log records ({} in all):", log_sink.records);
                for line in log_sink.recent() {
                    println!("    {line}");
                }
            }
        }
        Ok(report)
    };
    let mut sport = 40000u16;
    for step in steps() {
        interrupted()?;
        for _ in 0..step.frames {
            sport += 1;
            sender.send(&(step.spec)(sport).eth(CLIENT_MAC, SERVER_MAC).build()).with_context(|| format!("sending {}", step.what))?;
        }
        done.push(format!("{} x {:<62} expect {} by line {}", step.frames, step.what, step.verdict, step.line));
        if !terminal && !json {
            println!("sent {}", done.last().expect("just pushed"));
        }
        show(&policy, &done, false)?;
        if terminal {
            std::thread::sleep(Duration::from_millis(400));
        }
    }
    interrupted()?;
    let addr = SocketAddr::new(IpAddr::V4(v4(SERVER_V4)), WEB_PORT);
    let reply = xpol_runtime::sys::in_netns(&Lab::path(&lab.client), None, || -> std::io::Result<String> {
        let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply)?;
        Ok(reply)
    })?;
    let web_result = match (&reply, server.join()) {
        (Ok(r), Ok(Ok(()))) if r.ends_with("hello from xpol") => "a real connection to 198.18.0.2:80 got its reply (passed by line 19)".to_string(),
        (Ok(r), _) => format!("a real connection to 198.18.0.2:80 got an unexpected reply: {r:?}"),
        (Err(e), _) => format!("a real connection to 198.18.0.2:80 failed: {e}"),
    };
    done.push(web_result.clone());
    if !terminal && !json {
        println!("{web_result}");
    }
    // The last frames reach the program before their counters are read.
    std::thread::sleep(Duration::from_millis(200));
    let report = show(&policy, &done, true)?;
    drop(policy);
    drop(lab);
    if json {
        let steps: Vec<serde_json::Value> =
            steps().iter().map(|s| serde_json::json!({"what": s.what, "frames": s.frames, "line": s.line, "verdict": s.verdict})).collect();
        println!("{}", serde_json::json!({"schema": super::REPORT_SCHEMA, "demo": {"steps": steps, "web": web_result, "web_ok": reply.is_ok(), "log_records": log_sink.records}, "report": report}));
    } else {
        println!("\nThat was {FIREWALL_PATH}; `xpol run POLICY -i IFACE` does the same on a real interface, `xpol apply` keeps it there.");
    }
    Ok(if reply.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
