//! `xpol`: run xpol policies in the kernel.
//!
//!   xpol run POLICY -i IFACE   attach a policy to an interface and show live,
//!                              per rule, what it does; Ctrl-C detaches.
//!   xpol log NAME              print an applied policy's log records as they come.
//!   xpol test POLICY           compile (or load an object), verify it in the kernel
//!                              and run sample packets through it with
//!                              BPF_PROG_TEST_RUN, showing verdicts and counters.
//!   xpol demo                  the bundled examples/firewall.xpol on namespaces
//!                              of its own, with real traffic; everything removed.
//!   xpol agent --config FILE   keep the host's applied policies as FILE says.
//!   xpol completions SHELL     a completion script for bash, zsh, fish, ...
//!   xpol man [--out DIR]       man pages, from the same definitions as the parser

mod common;
#[path = "xpol/applied.rs"]
mod applied;
#[path = "xpol/metrics.rs"]
mod metrics;
#[path = "xpol/follow.rs"]
mod follow;
#[path = "xpol/lb_host.rs"]
mod lb_host;
#[path = "xpol/log.rs"]
mod log_records;
#[path = "xpol/demo.rs"]
mod demo;
#[path = "xpol/agent.rs"]
mod agent;
#[path = "xpol/dynsets.rs"]
mod dynsets;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xpol_runtime::loader::{LoadedPolicy, PolicyMaps, XdpAttachMode};
use xpol_runtime::packet::PacketSpec;

#[derive(Parser)]
#[command(name = "xpol", version, about = "Run xpol network policies in the kernel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach a policy to an interface and show live counters until Ctrl-C,
    /// SIGTERM or --duration; then detach and print a summary.
    Run {
        /// A `.xpol` source (compiled on the spot) or an object from `xpolc build`.
        policy: PathBuf,
        /// The interface to attach to.
        #[arg(short = 'i', long = "interface")]
        interface: String,
        /// Attach only this hook's program (default: every hook the
        /// policy has). `tc-ingress` and `tc-egress`, an older spelling,
        /// are still accepted.
        #[arg(long, value_enum)]
        hook: Option<HookArg>,
        /// How XDP attaches, in xdp-tools' words (`xdp-loader --mode`).
        #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
        mode: ModeArg,
        #[command(flatten)]
        every: Every,
        /// Serve the counters in Prometheus text format at http://ADDR/metrics,
        /// refreshed every interval: PORT (on 127.0.0.1) or ADDRESS:PORT.
        /// The text shows rule texts and file names: see docs/security.md.
        #[arg(long, value_parser = metrics::listen_addr)]
        metrics: Option<std::net::SocketAddr>,
        /// Compile again whenever the policy, a file it includes or a set
        /// file it reads changes, and switch the attached programs to the
        /// new version without a gap, keeping the counters of unchanged
        /// rules and unchanged @maps. A version that does not compile or
        /// load is reported and the running one stays.
        #[arg(long)]
        watch: bool,
        /// Write the packets the policy's `log` statements record to FILE
        /// as pcap (their first 128 bytes), renamed into place when xpol
        /// stops; a FIFO is written as they come.
        #[arg(long, value_name = "FILE")]
        pcap_out: Option<PathBuf>,
        #[command(flatten)]
        rejection: RejectionOptions,
    },
    /// Attach a policy so that it stays attached after xpol exits, until
    /// `xpol delete NAME`. On an applied NAME, replace it atomically,
    /// keeping its state (set contents, counters, @maps); if anything
    /// fails, the running policy stays as it was.
    Apply {
        /// A `.xpol` source (compiled on the spot) or an object from `xpolc build`.
        policy: PathBuf,
        /// The interfaces to attach to (repeat for several).
        #[arg(short = 'i', long = "interface", required = true)]
        interfaces: Vec<String>,
        /// The name the policy is applied under (`xpol list`).
        #[arg(long)]
        name: String,
        /// Attach only these hooks (repeat for several; default: every
        /// hook the policy has). `tc-ingress` and `tc-egress`, an older
        /// spelling, are still accepted.
        #[arg(long, value_enum)]
        hook: Vec<HookArg>,
        /// How XDP attaches, in xdp-tools' words (`xdp-loader --mode`).
        #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
        mode: ModeArg,
        #[arg(short = 'j', long)]
        json: bool,
        /// Keep running and apply again whenever the policy, a file it
        /// includes or a set file it reads changes (Ctrl-C stops watching;
        /// the policy stays applied). A version that does not compile or
        /// load is reported and the running one stays.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        rejection: RejectionOptions,
    },
    /// Detach an applied policy and remove everything xpol keeps of it.
    #[command(alias = "detach")]
    Delete { name: String },
    /// List the applied policies, with their interfaces and state.
    List {
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// List the connections in an applied policy's connection table
    /// (`ct.state`, docs/conntrack.md): each one's endpoints, state and
    /// time left.
    Ct {
        name: String,
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Show the counters, maps and sets of an applied policy.
    Stats {
        name: String,
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Show an applied policy's counters live, every interval, until
    /// Ctrl-C or --duration (it stays applied).
    #[command(alias = "top")]
    Watch {
        name: String,
        #[command(flatten)]
        every: Every,
    },
    /// Print an applied policy's log records as they come (its `log`
    /// statements), until Ctrl-C, SIGTERM or --duration; follows the
    /// policy when it is applied again. One reader at a time: two would
    /// each get some of the records.
    Log {
        name: String,
        /// One JSON object per record (docs/json.md).
        #[arg(short = 'j', long)]
        json: bool,
        /// Stop after this many seconds (more than 0, at most a year).
        #[arg(long, value_parser = duration_seconds, allow_negative_numbers = true)]
        duration: Option<f64>,
        /// Also write the logged packets to FILE as pcap (their first 128
        /// bytes), renamed into place when xpol stops; a FIFO (or
        /// /dev/stdout, the records then printed on standard error) is
        /// written as they come.
        #[arg(long, value_name = "FILE")]
        pcap_out: Option<PathBuf>,
    },
    /// Read or change a named set of an applied policy. Each change is
    /// switched in atomically: a packet sees the old set or the new one.
    Set {
        /// The applied policy.
        name: String,
        /// The set, as named in the policy.
        set: String,
        #[command(subcommand)]
        op: SetOp,
    },
    /// Read or change a load-balancer pool of an applied policy, in place:
    /// `list`, `add ADDR [weight W]`, `del ADDR`, `drain ADDR`, `weight
    /// ADDR W`. Established flows keep their backend unless it is deleted.
    Pool {
        /// The applied policy.
        name: String,
        /// The pool, as named in the policy.
        pool: String,
        #[command(subcommand)]
        op: PoolOp,
    },
    /// Verify a policy in the kernel and run sample packets through it
    /// (BPF_PROG_TEST_RUN; nothing is attached to any interface).
    Test {
        /// A `.xpol` source or an object built by `xpolc build`.
        policy: PathBuf,
        /// Hook to test (default: every hook of the policy). `tc-ingress`
        /// and `tc-egress`, an older spelling, are still accepted.
        #[arg(long, value_enum)]
        hook: Option<HookArg>,
        /// Run the frames of this capture (pcap or pcapng, Ethernet) instead
        /// of the built-in sample packets.
        #[arg(long)]
        pcap: Option<PathBuf>,
        /// One JSON object per test case, then one with the result; without
        /// test cases (or with --pcap), one per packet, then one with the
        /// counters (docs/json.md).
        #[arg(short = 'j', long)]
        json: bool,
        #[command(flatten)]
        rejection: RejectionOptions,
    },
    /// Show what xpol does, on a machine of its own: two network
    /// namespaces joined by a veth pair, the bundled
    /// examples/firewall.xpol attached, a mix of traffic (blocked and
    /// allowed sources, ssh from inside and outside the admin range,
    /// telnet, web, fragments) and the live per-rule table; everything is
    /// removed at the end, on failure and on Ctrl-C. Needs root and `ip`.
    Demo {
        /// The final report as one JSON object (docs/json.md), with the
        /// traffic sent.
        #[arg(short = 'j', long)]
        json: bool,
        /// How XDP attaches, in xdp-tools' words (`xdp-loader --mode`).
        #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
        mode: ModeArg,
    },
    /// Keep this host's applied policies as a config file says (TOML:
    /// policies by interface, a metrics address; docs/deploy.md): apply
    /// what is missing or changed (atomically, as `apply`), delete what
    /// the agent applied and the config no longer names (never a policy
    /// applied by hand), follow the config and the policies' files, and
    /// serve metrics for every applied policy. SIGTERM or Ctrl-C stops it;
    /// the policies stay applied.
    Agent {
        /// The config file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a shell completion script on standard output, e.g.
    /// `xpol completions bash > /usr/share/bash-completion/completions/xpol`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page xpol(8), or with --out write it and one page per
    /// subcommand (xpol-run.8, ...) into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// A hook, spelled as in the language.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum HookArg {
    /// XDP: in the driver or the network stack, before the kernel makes a
    /// socket buffer.
    Xdp,
    /// TC (clsact) on packets the interface receives, after XDP.
    #[value(name = "tc:ingress", alias = "tc-ingress")]
    TcIngress,
    /// TC (clsact) on packets the interface sends.
    #[value(name = "tc:egress", alias = "tc-egress")]
    TcEgress,
}

impl HookArg {
    /// The name the object's metadata and the runtime use: the language's.
    fn name(self) -> String {
        let hook = match self {
            HookArg::Xdp => xpol_lang::ast::Hook::Xdp,
            HookArg::TcIngress => xpol_lang::ast::Hook::TcIngress,
            HookArg::TcEgress => xpol_lang::ast::Hook::TcEgress,
        };
        hook.as_str().to_string()
    }
}

/// XDP attach mode, in the words of xdp-tools (`xdp-loader load --mode`).
/// An interface has one XDP program per mode, and the skb and native modes
/// exclude each other.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    /// Native when the driver supports XDP, else skb.
    Auto,
    /// In the driver, before the kernel makes a socket buffer: the fastest;
    /// fails when the driver has no XDP support (also: drv).
    #[value(alias = "drv")]
    Native,
    /// In the kernel's network stack, on the socket buffer: works on every
    /// interface, slower (also: generic, the older name).
    #[value(alias = "generic")]
    Skb,
}

impl From<ModeArg> for XdpAttachMode {
    fn from(mode: ModeArg) -> XdpAttachMode {
        match mode {
            ModeArg::Auto => XdpAttachMode::Auto,
            ModeArg::Native => XdpAttachMode::Native,
            ModeArg::Skb => XdpAttachMode::Generic,
        }
    }
}

#[derive(Subcommand)]
enum SetOp {
    /// Add elements (prefixes, addresses, integers, ranges `a..b`, MACs);
    /// to a dynamic set, `add ADDR... [timeout D]` (`30s`, `10m`, `1h`,
    /// `1d`; default: the set's `timeout`).
    Add { elements: Vec<String> },
    /// Remove elements (each must be in the set).
    #[command(alias = "delete")]
    Del { elements: Vec<String> },
    /// Print the elements, one per line (of a dynamic set, with the time
    /// each has left).
    List {
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Remove every element.
    Flush,
    /// Replace the whole contents, in one switch, with the elements of a
    /// file (one per line, `#` comments) or, with `-`, standard input.
    Replace {
        #[arg(long = "from-file")]
        from_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum PoolOp {
    /// Print each backend: address, weight, state, packets, bytes, new
    /// flows, active flows (flow-table entries).
    List {
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Add a backend (default weight 1): `add 198.18.1.13` or `add 198.18.1.13 weight 2`.
    Add {
        #[arg(value_parser = backend_addr)]
        addr: std::net::IpAddr,
        /// The word `weight`, then the weight (0 to 65535; 0: drained).
        #[arg(num_args = 0..=2, value_names = ["weight", "W"])]
        weight: Vec<String>,
    },
    /// Remove a backend; its established flows are balanced again.
    #[command(alias = "delete")]
    Del {
        #[arg(value_parser = backend_addr)]
        addr: std::net::IpAddr,
    },
    /// Give a backend no new flows (weight 0); its established flows stay.
    Drain {
        #[arg(value_parser = backend_addr)]
        addr: std::net::IpAddr,
    },
    /// Change a backend's weight (0 to 65535; 0 drains it).
    Weight {
        #[arg(value_parser = backend_addr)]
        addr: std::net::IpAddr,
        #[arg(value_parser = backend_weight)]
        weight: u32,
    },
}

/// A backend's address on the command line.
fn backend_addr(s: &str) -> std::result::Result<std::net::IpAddr, String> {
    s.trim().parse().map_err(|_| format!("`{s}` is not an IPv4 or IPv6 address (a backend is an address, e.g. 198.18.1.10 or 2001:db8:1::10)"))
}

/// A backend's weight on the command line: 0 to 65535.
fn backend_weight(s: &str) -> std::result::Result<u32, String> {
    let max = xpol_lang::meta::MAX_BACKEND_WEIGHT;
    match s.trim().parse::<u64>() {
        Ok(w) if w <= u64::from(max) => Ok(w as u32),
        Ok(_) => Err(format!("the weight {s} is out of range: a weight is 0 (drained) to {max}")),
        Err(_) => Err(format!("`{s}` is not a weight: a whole number, 0 (drained) to {max}")),
    }
}

/// How often and how long to report, and in which form.
#[derive(clap::Args, Clone, Copy)]
struct Every {
    /// Seconds between two reports (0.1 to 86400).
    #[arg(long, default_value_t = 1.0, value_parser = interval_seconds, allow_negative_numbers = true)]
    interval: f64,
    /// Stop after this many seconds (`run` detaches; `watch` leaves the
    /// policy applied); more than 0, at most a year.
    #[arg(long, value_parser = duration_seconds, allow_negative_numbers = true)]
    duration: Option<f64>,
    /// One JSON object per interval instead of a table.
    #[arg(short = 'j', long)]
    json: bool,
}

/// `--interval`: checked here, when the arguments are parsed, as a value
/// found wrong later (infinite: a panic turning it into a `Duration`) would
/// come after the policy is attached.
fn interval_seconds(s: &str) -> std::result::Result<f64, String> {
    seconds(s, 0.1, 86_400.0)
}

/// `--duration`, as [`interval_seconds`]: NaN would never be reached.
fn duration_seconds(s: &str) -> std::result::Result<f64, String> {
    seconds(s, f64::MIN_POSITIVE, 365.0 * 86_400.0)
}

fn seconds(s: &str, min: f64, max: f64) -> std::result::Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v.is_finite() && (min..=max).contains(&v)) {
        let low = if min == f64::MIN_POSITIVE { "more than 0".to_string() } else { format!("at least {min}") };
        return Err(format!("`{s}` is out of range: give a number of seconds, {low} and at most {max}"));
    }
    Ok(v)
}

/// What to show when the kernel verifier rejects the policy.
#[derive(clap::Args, Clone, Default)]
struct RejectionOptions {
    /// With a verifier rejection, also print the relevant lines of the
    /// verifier's log (also: XPOL_VERBOSE=1).
    #[arg(long)]
    verbose: bool,
    /// With a verifier rejection, write the verifier's whole log to FILE.
    #[arg(long, value_name = "FILE")]
    verifier_log: Option<PathBuf>,
}

fn main() -> ExitCode {
    xpol_runtime::sys::default_sigpipe();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Compiles a source policy (or reads an object) and loads it into the
/// kernel. A verifier rejection of a compiled policy is shown at the policy
/// expression it comes from (`None`: the problem was reported). Also
/// returns the build of a source policy, even when it did not load (it
/// names the files the policy read).
fn load_policy_and_build(
    policy: &Path,
    options: &xpol_runtime::loader::LoadOptions,
    rejection: &RejectionOptions,
) -> Result<(Option<LoadedPolicy>, Option<xpol_compiler::Build>)> {
    if policy.extension().is_some_and(|e| e == "o") {
        let object = xpol_lang::input::read_file(policy, xpol_lang::input::DATA_LIMIT).with_context(|| format!("cannot read {}", policy.display()))?;
        return Ok((Some(LoadedPolicy::load_with(&object, options).context("loading the policy into the kernel")?), None));
    }
    let build = xpol_compiler::build(policy, &xpol_compiler::BuildOptions::default());
    if let Some(path) = &rejection.verifier_log {
        // Refused now rather than after a rejection, if ever.
        let inputs: Vec<&Path> = build.sources.files().filter_map(|(_, f)| f.path.as_deref()).collect();
        common::check_output(path, &inputs)?;
    }
    let loaded = load_build(&build, options, rejection)?;
    Ok((loaded, Some(build)))
}

/// Loads a build's object, showing its diagnostics and any rejection at
/// its source; `None` when something was reported.
fn load_build(build: &xpol_compiler::Build, options: &xpol_runtime::loader::LoadOptions, rejection: &RejectionOptions) -> Result<Option<LoadedPolicy>> {
    let color = std::io::stderr().is_terminal();
    if !build.diagnostics.is_empty() {
        eprint!("{}", xpol_lang::render::render_human(&build.diagnostics, &build.sources, color));
    }
    let Some(out) = &build.output else { return Ok(None) };
    if !options.missing_interfaces_ok && report_missing_interfaces(build) {
        return Ok(None);
    }
    match LoadedPolicy::load_with(&out.object, options) {
        Ok(p) => Ok(Some(p)),
        Err(e) => explain_load_error(build, e, rejection).map(|()| None),
    }
}

/// Shows an error at each `redirect` to an interface this machine lacks,
/// before the policy loads (where it would abort those packets); true when
/// there was one.
fn report_missing_interfaces(build: &xpol_compiler::Build) -> bool {
    let Some(out) = &build.output else { return false };
    let missing = xpol_compiler::check::lints::missing_interfaces(&out.ir, |name| xpol_runtime::sys::if_nametoindex(name) != 0, xpol_lang::Severity::Error);
    if !missing.is_empty() {
        eprint!("{}", xpol_lang::render::render_human(&missing, &build.sources, std::io::stderr().is_terminal()));
    }
    !missing.is_empty()
}

/// Shows a kernel rejection of a build's object at the policy's source
/// (the verifier at the rule, a refused map at its declaration); any other
/// error is passed on.
fn explain_load_error(build: &xpol_compiler::Build, e: xpol_runtime::loader::RuntimeError, rejection: &RejectionOptions) -> Result<()> {
    let color = std::io::stderr().is_terminal();
    let Some(out) = &build.output else { return Err(e).context("loading the policy into the kernel") };
    match e {
        xpol_runtime::loader::RuntimeError::Verifier { program, log, .. } => {
            let section = out.meta.programs.iter().find(|p| p.name == program).map(|p| p.section.clone()).unwrap_or_default();
            let verbose = rejection.verbose || std::env::var("XPOL_VERBOSE").is_ok_and(|v| v == "1");
            let d = xpol_compiler::verifier::explain(&program, &section, &log, &out.object, &out.located, &build.sources, verbose);
            eprint!("{}", xpol_lang::render::render_human(&[d], &build.sources, color));
            if let Some(path) = &rejection.verifier_log {
                let inputs: Vec<&Path> = build.sources.files().filter_map(|(_, f)| f.path.as_deref()).collect();
                common::write_output(path, log.as_bytes(), &inputs)?;
                eprintln!("wrote the verifier's log of `{program}` to {}", path.display());
            }
            Ok(())
        }
        xpol_runtime::loader::RuntimeError::Map { map, source } => {
            let d = xpol_compiler::verifier::explain_map(&map, &source, out);
            eprint!("{}", xpol_lang::render::render_human(&[d], &build.sources, color));
            Ok(())
        }
        // At the `redirect` that names it.
        xpol_runtime::loader::RuntimeError::UnknownInterface(name) if out.ir.redirects.iter().any(|r| r.ifname == name) => {
            let d = xpol_compiler::check::lints::missing_interfaces(&out.ir, |n| n != name, xpol_lang::Severity::Error);
            eprint!("{}", xpol_lang::render::render_human(&d, &build.sources, color));
            Ok(())
        }
        e => Err(e).context("loading the policy into the kernel"),
    }
}

/// Packets that exercise a typical firewall: web, SSH and telnet over both
/// families, documentation-range and benchmark-range sources, UDP, and a
/// non-first fragment.
fn sample_packets() -> Vec<(String, PacketSpec)> {
    let v4 = |s: &str| s.parse().expect("valid literal");
    let v6 = |s: &str| s.parse().expect("valid literal");
    vec![
        ("tcp 198.18.7.7 -> 198.19.255.1:80 syn".into(), PacketSpec::tcp4(v4("198.18.7.7"), v4("198.19.255.1"), 40000, 80).syn()),
        ("tcp 203.0.113.9 -> 198.19.255.1:80 syn".into(), PacketSpec::tcp4(v4("203.0.113.9"), v4("198.19.255.1"), 40000, 80).syn()),
        ("tcp 198.51.100.7 -> 198.19.255.1:22 syn".into(), PacketSpec::tcp4(v4("198.51.100.7"), v4("198.19.255.1"), 40000, 22).syn()),
        ("tcp 198.18.9.9 -> 198.19.255.1:22 syn".into(), PacketSpec::tcp4(v4("198.18.9.9"), v4("198.19.255.1"), 40000, 22).syn()),
        ("tcp 198.18.9.9 -> 198.19.255.1:23 syn".into(), PacketSpec::tcp4(v4("198.18.9.9"), v4("198.19.255.1"), 40000, 23).syn()),
        ("udp 198.18.9.9 -> 198.19.255.1:53".into(), PacketSpec::udp4(v4("198.18.9.9"), v4("198.19.255.1"), 40000, 53)),
        ("tcp [2001:db8:bad::1] -> [2001:db8::80]:443 syn".into(), PacketSpec::tcp6(v6("2001:db8:bad::1"), v6("2001:db8::80"), 40000, 443).syn()),
        ("tcp [2001:db8:1::5] -> [2001:db8::80]:22 syn".into(), PacketSpec::tcp6(v6("2001:db8:1::5"), v6("2001:db8::80"), 40000, 22).syn()),
        (
            "tcp 198.18.9.9 -> 198.19.255.1:22 fragment offset 64".into(),
            PacketSpec::tcp4(v4("198.18.9.9"), v4("198.19.255.1"), 40000, 22).frag(64, false),
        ),
    ]
}

/// Version of every JSON record `xpol` prints: the reports of `run`,
/// `stats`, `watch`, and `list`, `apply`, `set list`, `pool list`, `test`
/// (docs/json.md).
pub const REPORT_SCHEMA: u32 = 1;

/// One report: every rule's counters and rate, every @map's size and top
/// keys, every named set's size.
fn snapshot(policy: &PolicyMaps, interface: &str, elapsed: f64, previous: &Totals, dt: f64) -> Result<serde_json::Value> {
    let counters = policy.rule_counters()?;
    let meta = policy.meta();
    let keys = xpol_runtime::apply::rule_identities(meta);
    let rules: Vec<serde_json::Value> = meta
        .rules
        .iter()
        .zip(&counters)
        .enumerate()
        .map(|(i, (r, c))| {
            // By identity: a replace between two reports may move rules.
            // A rule new since the last report has no rate yet.
            let new_rule = if previous.is_empty() { (0, 0) } else { (c.packets, c.bytes) };
            let (p0, b0) = previous.get(&keys[i]).copied().unwrap_or(new_rule);
            serde_json::json!({
                "id": r.id, "key": keys[i], "label": r.label, "verdict": r.verdict, "hook": r.hook, "file": r.file, "line": r.line, "column": r.column, "text": r.text,
                "packets": c.packets, "bytes": c.bytes,
                "pps": if dt > 0.0 { c.packets.saturating_sub(p0) as f64 / dt } else { 0.0 },
                "bps": if dt > 0.0 { c.bytes.saturating_sub(b0) as f64 * 8.0 / dt } else { 0.0 },
            })
        })
        .collect();
    let mut maps = Vec::new();
    let lost = policy.lost_updates()?;
    for (m, lost) in meta.maps.iter().zip(lost) {
        let entries = policy.map_entries(&m.name)?;
        let top: Vec<serde_json::Value> = entries
            .iter()
            .take(5)
            .map(|(k, v)| serde_json::json!({"key": k.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "), "value": v}))
            .collect();
        maps.push(serde_json::json!({"name": m.name, "entries": entries.len(), "capacity": m.max_entries, "lost": lost, "top": top}));
    }
    let sets: Vec<serde_json::Value> = meta.sets.iter().map(|s| serde_json::json!({"name": s.name, "size": s.elements.len()})).collect();
    let pools: Vec<serde_json::Value> = policy.pool_stats_for_reports()?.iter().map(pool_json).collect();
    let mut limits = Vec::new();
    for (i, l) in meta.limits.iter().enumerate() {
        let buckets = policy.limit_buckets(i)?;
        let not_full: Vec<_> = buckets.iter().filter(|b| b.credit_ns < l.depth_ns).collect();
        // The emptiest buckets first: the keys being limited now.
        let top: Vec<serde_json::Value> = not_full
            .iter()
            .take(5)
            .map(|b| serde_json::json!({"key": b.key.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "), "credit": b.credit_ns as f64 / l.depth_ns.max(1) as f64}))
            .collect();
        limits.push(serde_json::json!({
            "rule": l.rule, "key": keys.get(l.rule as usize), "line": l.line, "column": l.column, "text": l.text, "keyed": !l.keys.is_empty(),
            "entries": buckets.len(), "capacity": l.max_entries, "not_full": not_full.len(), "top": top,
        }));
    }
    let conntrack = match policy.ct_summary()? {
        Some(ct) => serde_json::json!({"entries": ct.entries, "capacity": ct.capacity, "states": ct.states}),
        None => serde_json::Value::Null,
    };
    let dynsets: Vec<serde_json::Value> =
        policy.dynset_summaries()?.iter().map(|d| serde_json::json!({"name": d.name, "elements": d.elements, "capacity": d.capacity})).collect();
    let lost = policy.log_lost()?;
    let logs: Vec<serde_json::Value> = meta
        .logs
        .iter()
        .zip(lost)
        .map(|(l, lost)| {
            serde_json::json!({
                "rule": l.rule, "key": keys.get(l.rule as usize), "line": l.line, "column": l.column, "prefix": l.prefix, "text": l.text, "verdict": l.verdict, "lost": lost,
            })
        })
        .collect();
    Ok(serde_json::json!({"schema": REPORT_SCHEMA, "time_s": elapsed, "interface": interface, "rules": rules, "maps": maps, "sets": sets, "pools": pools, "limits": limits, "conntrack": conntrack, "logs": logs, "dynsets": dynsets}))
}

/// A pool's backends and counters, as reports and `xpol pool list --json`
/// give them (docs/json.md).
fn pool_json(p: &xpol_runtime::lb::PoolStats) -> serde_json::Value {
    let backends: Vec<serde_json::Value> = p
        .backends
        .iter()
        .map(|b| {
            serde_json::json!({
                "address": b.backend.addr.to_string(), "slot": b.backend.slot, "weight": b.backend.weight, "state": b.backend.state(),
                "packets": b.packets, "bytes": b.bytes, "new_flows": b.new_flows,
                "active_flows": if p.active_counted { serde_json::json!(b.active_flows) } else { serde_json::Value::Null },
            })
        })
        .collect();
    serde_json::json!({"name": p.name, "no_backend": p.no_backend, "backends": backends})
}

/// A pool's backends as a table (`xpol pool list`, and the reports).
fn pool_table(pool: &serde_json::Value, indent: &str) -> String {
    let mut out = format!("{indent}{:<40} {:>6} {:<8} {:>12} {:>14} {:>10} {:>10}\n", "backend", "weight", "state", "packets", "bytes", "new flows", "flows now");
    for b in pool["backends"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{indent}{:<40} {:>6} {:<8} {:>12} {:>14} {:>10} {:>10}\n",
            b["address"].as_str().unwrap_or(""),
            // Numbers as text: a JSON value ignores widths.
            b["weight"].to_string(),
            b["state"].as_str().unwrap_or(""),
            b["packets"].to_string(),
            b["bytes"].to_string(),
            b["new_flows"].to_string(),
            if b["active_flows"].is_null() { "-".to_string() } else { b["active_flows"].to_string() }
        ));
    }
    let dropped = pool["no_backend"].as_u64().unwrap_or(0);
    if dropped > 0 {
        out.push_str(&format!("{indent}{dropped} packets dropped: no backend had a weight\n"));
    }
    out
}

fn print_table(report: &serde_json::Value, in_place: bool) {
    let mut out = String::new();
    if in_place {
        out.push_str("\x1b[H\x1b[2J");
    }
    out.push_str(&format!("xpol on {} — {:.0}s\n", report["interface"].as_str().unwrap_or(""), report["time_s"].as_f64().unwrap_or(0.0)));
    out.push_str(&format!("  {:<4} {:<26} {:>12} {:>14} {:>10}  {}\n", "rule", "where", "packets", "bytes", "pkt/s", "text"));
    for r in report["rules"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  #{:<3} {:<26} {:>12} {:>14} {:>10.0}  {}\n",
            r["id"].as_u64().unwrap_or(0),
            format!("{}:{}", r["file"].as_str().unwrap_or(""), r["line"]),
            r["packets"].as_u64().unwrap_or(0),
            r["bytes"].as_u64().unwrap_or(0),
            r["pps"].as_f64().unwrap_or(0.0),
            labelled_text(r)
        ));
    }
    for m in report["maps"].as_array().into_iter().flatten() {
        out.push_str(&format!("  @{} ({}/{} entries, {} lost updates)\n", m["name"].as_str().unwrap_or(""), m["entries"], m["capacity"], m["lost"]));
        for t in m["top"].as_array().into_iter().flatten() {
            out.push_str(&format!("      [{}] = {}\n", t["key"].as_str().unwrap_or(""), t["value"]));
        }
    }
    for w in map_warnings(report) {
        out.push_str(&format!("  warning: {w}\n"));
    }
    for st in report["sets"].as_array().into_iter().flatten() {
        out.push_str(&format!("  set {}: {} elements\n", st["name"].as_str().unwrap_or(""), st["size"]));
    }
    for d in report["dynsets"].as_array().into_iter().flatten() {
        out.push_str(&format!("  dynamic set {}: {}/{} elements\n", d["name"].as_str().unwrap_or(""), d["elements"], d["capacity"]));
    }
    for l in report["limits"].as_array().into_iter().flatten() {
        out.push_str(&limit_line(l));
    }
    if !report["conntrack"].is_null() {
        out.push_str(&conntrack_line(&report["conntrack"]));
    }
    for w in log_records::report_warnings(report) {
        out.push_str(&format!("  warning: {w}\n"));
    }
    for p in report["pools"].as_array().into_iter().flatten() {
        out.push_str(&format!("  pool {}:\n{}", p["name"].as_str().unwrap_or(""), pool_table(p, "    ")));
    }
    print!("{out}");
}

/// A `limit` of a report, as the tables show it: its buckets, and the
/// emptiest ones by key.
fn limit_line(l: &serde_json::Value) -> String {
    let mut out = format!(
        "  limit (rule #{}, line {}) {}: {}/{} buckets, {} not full\n",
        l["rule"], l["line"], l["text"].as_str().unwrap_or(""), l["entries"], l["capacity"], l["not_full"]
    );
    for t in l["top"].as_array().into_iter().flatten().filter(|_| l["keyed"] == true) {
        out.push_str(&format!("      [{}] {:.0}% of a full bucket\n", t["key"].as_str().unwrap_or(""), 100.0 * t["credit"].as_f64().unwrap_or(0.0)));
    }
    out
}

/// The connection table of a report: its entries, by state.
fn conntrack_line(ct: &serde_json::Value) -> String {
    let states: Vec<String> = ct["states"].as_object().into_iter().flatten().map(|(s, n)| format!("{s} {n}")).collect();
    let by_state = if states.is_empty() { String::new() } else { format!(": {}", states.join(", ")) };
    format!("  conntrack: {}/{} connections{by_state}\n", ct["entries"], ct["capacity"])
}

/// A rule's header as a table shows it: `[LABEL] ` first when labelled.
fn labelled_text(rule: &serde_json::Value) -> String {
    let text = rule["text"].as_str().unwrap_or("");
    match rule["label"].as_str() {
        Some(label) => format!("[{label}] {text}"),
        None => text.to_string(),
    }
}

/// Prints one interval's report: JSON, a table redrawn in place on a
/// terminal, else one line.
fn show_report(report: &serde_json::Value, json: bool, terminal: bool) {
    if json {
        println!("{report}");
    } else if terminal {
        print_table(report, true);
    } else {
        print_line(report);
    }
}

/// Each rule's (packets, bytes) by rule identity: the base of the next rates.
type Totals = std::collections::HashMap<String, (u64, u64)>;

fn rule_totals(report: &serde_json::Value) -> Totals {
    report["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["key"].as_str().unwrap_or("").to_string(), (r["packets"].as_u64().unwrap_or(0), r["bytes"].as_u64().unwrap_or(0))))
        .collect()
}

/// A one-line report for logs and pipes; maps that lost updates at the end.
fn print_line(report: &serde_json::Value) {
    let rules: Vec<String> = report["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let label = r["label"].as_str().map(|l| format!("[{l}]")).unwrap_or_default();
            format!("#{}{label}={}({:.0}/s)", r["id"], r["packets"], r["pps"].as_f64().unwrap_or(0.0))
        })
        .collect();
    let lost: Vec<String> = lossy_maps(report).map(|m| format!(" @{}:lost={}", m["name"].as_str().unwrap_or(""), m["lost"])).collect();
    // Each backend's packets: `web[198.18.1.10=12,198.18.1.11=9]`.
    let pools: Vec<String> = report["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let backends: Vec<String> = p["backends"].as_array().into_iter().flatten().map(|b| format!("{}={}", b["address"].as_str().unwrap_or(""), b["packets"])).collect();
            format!(" {}[{}]", p["name"].as_str().unwrap_or(""), backends.join(","))
        })
        .collect();
    let ct = if report["conntrack"].is_null() { String::new() } else { format!(" ct={}", report["conntrack"]["entries"]) };
    println!("t={:.0}s {}{}{}{ct}", report["time_s"].as_f64().unwrap_or(0.0), rules.join(" "), lost.concat(), pools.concat());
}

/// The maps of a report that lost updates.
fn lossy_maps(report: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    report["maps"].as_array().into_iter().flatten().filter(|m| m["lost"].as_u64().unwrap_or(0) > 0)
}

/// What to say of each map that lost updates: it was full, and how to
/// make room.
fn map_warnings(report: &serde_json::Value) -> Vec<String> {
    lossy_maps(report)
        .map(|m| {
            let name = m["name"].as_str().unwrap_or("");
            format!(
                "@{name} was full: {} updates found no room among its {} entries and were lost; declare `map @{name} max N` with a larger N",
                m["lost"], m["capacity"]
            )
        })
        .collect()
}

/// What the kernel did with a test packet, as a test states it: its
/// action, or `lb` when it sent on the frame the reference semantics
/// builds for `lb` (`XDP_TX` or a redirect with the next hop's Ethernet
/// addresses, or up the stack as it is when the FIB had none).
fn kernel_outcome(kernel: &xpol_runtime::loader::RunOutcome, reference: &xpol_compiler::reference::Evaluation, input: &[u8], translates_back: bool) -> String {
    use xpol_runtime::loader::Action;
    let action = format!("{:?}", kernel.action).to_lowercase();
    // On a `tc:egress` program that translates `nat` replies back, a
    // packet leaves as the reference translated it, or as it came.
    if translates_back && kernel.action == Action::Pass && kernel.packet != *reference.translated.as_deref().unwrap_or(input) {
        return format!("{action} with another frame than the reference's");
    }
    let Some(frame) = reference.lb.as_ref().filter(|b| b.backend.is_some()).map(|b| &b.frame) else { return action };
    let same = match kernel.action {
        Action::Pass => kernel.packet == *frame,
        Action::Tx | Action::Redirect => kernel.packet.get(12..) == frame.get(12..),
        _ => return action,
    };
    if same {
        "lb".to_string()
    } else {
        format!("{action} with another frame than `lb` sends")
    }
}

/// Runs the policy's `test` blocks in the kernel and in the reference
/// semantics; a case passes when both give the expected outcome.
fn run_policy_tests(loaded: &mut LoadedPolicy, build: &xpol_compiler::Build, json: bool) -> Result<ExitCode> {
    let out = build.output.as_ref().expect("a successful build");
    let ir = &out.ir;
    let first_hook = ir.programs.iter().map(|p| p.hook).min().expect("a policy has a program");
    let mut state = xpol_compiler::reference::State::default();
    let (mut passed, mut failed) = (0, 0);
    let mut failures = Vec::new();
    let color = std::io::stderr().is_terminal();
    let mut current = String::new();
    let mut ok = true;
    let mut log_reader = xpol_runtime::log::LogReader::open(loaded.maps())?;
    let finish = |name: &str, ok: bool| {
        if !name.is_empty() && !json {
            println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        }
    };
    for case in &ir.tests {
        if case.test != current {
            finish(&current, ok);
            current = case.test.clone();
            ok = true;
            // Each test block starts with no connections and empty
            // dynamic sets.
            state.conntrack.clear();
            state.dynsets.clear();
        }
        let hook = case.hook.unwrap_or(first_hook);
        let bytes = xpol_runtime::packet::from_test(&case.packet);
        let before = loaded.rule_counters()?;
        // A test's clock moves by `after` only, and the kernel's cannot be
        // moved or stopped: its buckets are set to hold what the
        // reference's hold, just before the packet.
        state.advance(case.after_ns);
        let set_at = std::time::Instant::now();
        let mut wrong_limits = Vec::new();
        for i in 0..ir.limits.len() {
            let unknown = loaded.set_limit_credit(i, |key| reference_credit(ir, &state, i, key))?;
            wrong_limits.extend(unknown.iter().map(|k| format!("{}: the kernel has a bucket the reference does not", limit_name(loaded, i, k))));
        }
        // The connection table likewise: the kernel's is set to hold the
        // reference's live entries with the time they have left.
        if ir.conntrack.is_some() {
            loaded.maps().ct_set(&state.ct_stored())?;
        }
        dynsets::sync_to_kernel(loaded.maps(), ir, &state)?;
        if let Some(r) = log_reader.as_mut() {
            r.drain(|_| {});
        }
        let kernel = loaded.test_run(hook.as_str(), &bytes)?;
        let mut kernel_logs = Vec::new();
        if let Some(r) = log_reader.as_mut() {
            r.drain(|e| kernel_logs.push((e.record.clone(), e.log.prefix.clone())));
        }
        let after = loaded.rule_counters()?;
        let fired: Vec<usize> = after.iter().zip(&before).enumerate().filter(|(_, (a, b))| a.packets > b.packets).map(|(i, _)| i).collect();
        let reference = xpol_compiler::reference::evaluate(ir, hook, &bytes, &mut state);
        let translates_back = hook == xpol_lang::ast::Hook::TcEgress && !ir.nat_pools.is_empty();
        let kernel_outcome = kernel_outcome(&kernel, &reference, &bytes, translates_back);
        let fired_u32: Vec<u32> = fired.iter().map(|&r| r as u32).collect();
        let right_rule = case.decided_by.is_none_or(|r| reference.decided_by == Some(r));
        // Map entries after the packet, both engines.
        let mut wrong_maps = Vec::new();
        for m in &case.maps {
            let (kernel_value, reference_value) = map_values(loaded, ir, &state, m)?;
            if kernel_value != m.value || reference_value != m.value {
                let keys: Vec<String> = m.keys.iter().map(|k| k.to_string()).collect();
                let keys = if keys.is_empty() { String::new() } else { format!("[{}]", keys.join(", ")) };
                wrong_maps.push(format!(
                    "@{}{keys}: expected {}, the kernel has {kernel_value}, the reference {reference_value}",
                    ir.maps[m.map].name, m.value
                ));
            }
        }
        // And on the limits' buckets: the kernel's has what the
        // reference's has, plus the credit of the time since they were set.
        let buckets = (0..ir.limits.len()).map(|i| loaded.limit_buckets(i)).collect::<Result<Vec<_>, _>>()?;
        let since_set = set_at.elapsed().as_nanos() as u64;
        for (i, kernel) in buckets.iter().enumerate() {
            for b in kernel {
                let name = limit_name(loaded, i, &b.key);
                match reference_credit(ir, &state, i, &b.key) {
                    None => wrong_limits.push(format!("{name}: the kernel has a bucket the reference does not")),
                    Some(r) if b.credit_ns < r.min(ir_depth(loaded, i)) || b.credit_ns > r.saturating_add(since_set) => wrong_limits.push(format!(
                        "{name}: the kernel's bucket holds {} us of credit, the reference's {} us",
                        b.credit_ns / 1000,
                        r.min(ir_depth(loaded, i)) / 1000
                    )),
                    Some(_) => {}
                }
            }
            let missing = state.limits.keys().filter(|(l, key)| *l == i && !kernel.iter().any(|b| key_parts(&b.key) == *key)).count();
            if missing > 0 {
                wrong_limits.push(format!("the limit on line {}: the reference has {missing} buckets the kernel does not", loaded.meta().limits[i].line));
            }
        }
        // And on the connection table after the packet.
        if ir.conntrack.is_some() {
            wrong_limits.extend(ct_differences(&loaded.maps().ct_entries()?, &state.ct_stored()));
        }
        wrong_limits.extend(dynsets::differences(loaded.maps(), ir, &state)?);
        let wrong_logs = log_records::test_mismatches(case, &kernel_logs, &reference.logs);
        // Both engines must agree on the rules that fired, not only on the verdict.
        // `=> lb(POOL, ADDR)`: both engines chose that backend of that pool.
        let kernel_backend = xpol_runtime::lb::delivered_to(&kernel.packet).filter(|_| case.lb.is_some());
        let reference_backend = reference.lb.as_ref().and_then(|b| b.backend);
        let right_backend = case.lb.is_none_or(|(pool, addr)| {
            let reference_ok = reference.lb.as_ref().is_some_and(|b| b.pool == pool && addr.is_none_or(|a| b.backend == Some(a)));
            let kernel_ok = addr.is_none_or(|a| kernel_backend == Some(a));
            reference_ok && kernel_ok
        });
        let backends = match (case.lb, kernel_backend, reference_backend) {
            (Some(_), k, r) => format!(
                " (backend: the kernel's {}, the reference's {})",
                k.map_or("none".to_string(), |a| a.to_string()),
                r.map_or("none".to_string(), |a| a.to_string())
            ),
            _ => String::new(),
        };
        let good = kernel_outcome == case.expect.as_str()
            && reference.outcome == case.expect
            && right_backend
            && fired_u32 == reference.fired
            && right_rule
            && wrong_maps.is_empty()
            && wrong_limits.is_empty()
            && wrong_logs.is_empty();
        if json {
            let (_, line, _) = build.sources.location(case.span);
            let decided_line = reference.decided_by.map(|r| out.meta.rules[r as usize].line);
            println!(
                "{}",
                serde_json::json!({
                    "schema": REPORT_SCHEMA, "test": case.test, "case": build.sources.snippet(case.span), "line": line,
                    "expect": case.expect.as_str(), "expect_by": case.decided_by.map(|r| out.meta.rules[r as usize].line),
                    "kernel": kernel_outcome, "reference": reference.outcome.as_str(), "decided_by": decided_line,
                    "fired": fired, "maps_wrong": wrong_maps, "limits_wrong": wrong_limits, "ok": good,
                    "logs": kernel_logs.iter().map(|(_, p)| p).collect::<Vec<_>>(), "logs_wrong": wrong_logs,
                    "kernel_backend": kernel_backend.map(|a| a.to_string()), "reference_backend": reference_backend.map(|a| a.to_string()),
                })
            );
        }
        if good {
            passed += 1;
        } else {
            failed += 1;
            ok = false;
            let line_of = |r: u32| out.meta.rules[r as usize].line;
            let rules: Vec<String> = fired.iter().map(|r| format!("#{r} (line {})", line_of(*r as u32))).collect();
            let logs: String = case
                .logs
                .iter()
                .map(|e| format!(", {}log{}", if e.logged { "" } else { "!" }, e.prefix.as_ref().map(|p| format!("({p:?})")).unwrap_or_default()))
                .collect();
            let expected = match case.decided_by {
                Some(r) => format!("{} by the rule on line {}{logs}", case.expect.as_str(), line_of(r)),
                None => format!("{}{logs}", case.expect.as_str()),
            };
            let decided = match reference.decided_by {
                Some(r) => format!(", decided by the rule on line {}", line_of(r)),
                None => ", decided by no rule (default)".to_string(),
            };
            failures.push(
                xpol_lang::Diagnostic::error("xpol::test::failed", format!("test `{}`: expected {expected}", case.test))
                    .with_label(case.span, format!("the kernel gave {kernel_outcome}, the reference {}{decided}{backends}", reference.outcome.as_str()))
                    .with_help(format!(
                        "{}{}",
                        if rules.is_empty() { "no rule fired".to_string() } else { format!("rules fired: {}", rules.join(", ")) },
                        wrong_maps.iter().chain(&wrong_limits).chain(&wrong_logs).map(|w| format!("\n{w}")).collect::<String>()
                    )),
            );
        }
    }
    finish(&current, ok);
    if !failures.is_empty() {
        eprint!("{}", xpol_lang::render::render_human(&failures, &build.sources, color));
    }
    if json {
        println!("{}", serde_json::json!({"schema": REPORT_SCHEMA, "result": {"passed": passed, "failed": failed, "ok": failed == 0}}));
    } else {
        println!("\ntest result: {}. {passed} passed; {failed} failed", if failed == 0 { "ok" } else { "FAILED" });
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// How the kernel's connection table differs from the reference's: an
/// entry in one only, or with another state, flags, or time left (by more
/// than a second: the two clocks are read at different times, and the
/// kernel's in jiffies).
fn ct_differences(kernel: &[xpol_runtime::conntrack::CtEntry], reference: &[(xpol_lang::meta::CtKey, xpol_lang::meta::CtValue, u64)]) -> Vec<String> {
    const SLACK_NS: u64 = 1_000_000_000;
    let mut out = Vec::new();
    for (key, value, left) in reference {
        let name = || xpol_runtime::conntrack::CtEntry { key: *key, value: *value, from: key.endpoints().0, to: key.endpoints().1, state: String::new(), expires_in_ns: *left }.describe();
        match kernel.iter().find(|e| e.key == *key) {
            None => out.push(format!("connection {}: the reference has it, the kernel does not", name())),
            Some(e) if (e.value.state, e.value.flags) != (value.state, value.flags) => out.push(format!(
                "connection {}: the kernel has it {} (flags {:#x}), the reference {} (flags {:#x})",
                e.describe(),
                e.state,
                e.value.flags,
                xpol_lang::meta::ct_state_name(key.proto, value.state, value.flags),
                value.flags
            )),
            Some(e) if e.expires_in_ns.abs_diff(*left) > SLACK_NS => {
                out.push(format!("connection {}: the kernel's expires in {} ms, the reference's in {} ms", e.describe(), e.expires_in_ns / 1_000_000, left / 1_000_000))
            }
            Some(_) => {}
        }
    }
    for e in kernel.iter().filter(|e| !reference.iter().any(|(k, _, _)| *k == e.key)) {
        out.push(format!("connection {}: the kernel has it, the reference does not", e.describe()));
    }
    out
}

/// A limit's key as the reference keeps it.
fn key_parts(key: &[xpol_runtime::loader::KeyValue]) -> Vec<xpol_compiler::reference::KeyPart> {
    use xpol_compiler::reference::KeyPart;
    use xpol_runtime::loader::KeyValue;
    key.iter()
        .map(|k| match *k {
            KeyValue::Int(i) => KeyPart::Int(i),
            KeyValue::Ip(a) => KeyPart::Ip(a),
            KeyValue::Bool(b) => KeyPart::Bool(b),
            KeyValue::Mac(m) => KeyPart::Int(m.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))),
        })
        .collect()
}

/// The credit of a limit's bucket in the reference now; a bucket of an
/// unkeyed limit that no packet used yet is full (the kernel's one bucket
/// exists from the start).
fn reference_credit(ir: &xpol_compiler::ir::Policy, state: &xpol_compiler::reference::State, limit: usize, key: &[xpol_runtime::loader::KeyValue]) -> Option<u64> {
    match state.limit_credit(ir, limit, &key_parts(key)) {
        Some((credit, _)) => Some(credit),
        None if ir.limits[limit].keys.is_empty() => Some(u64::MAX),
        None => None,
    }
}

/// What a full bucket of limit `limit` holds, as the object says.
fn ir_depth(loaded: &LoadedPolicy, limit: usize) -> u64 {
    loaded.meta().limits[limit].depth_ns
}

/// A limit's bucket in a test's words: `the limit on line 3 [198.18.0.1]`.
fn limit_name(loaded: &LoadedPolicy, limit: usize, key: &[xpol_runtime::loader::KeyValue]) -> String {
    let line = loaded.meta().limits[limit].line;
    let keys: Vec<String> = key.iter().map(|k| k.to_string()).collect();
    if keys.is_empty() {
        format!("the limit on line {line}")
    } else {
        format!("the limit on line {line} [{}]", keys.join(", "))
    }
}

/// The value of a test's map entry after the packet (0: no entry), in the
/// kernel and in the reference state.
fn map_values(loaded: &LoadedPolicy, ir: &xpol_compiler::ir::Policy, state: &xpol_compiler::reference::State, m: &xpol_compiler::ir::MapExpect) -> Result<(u64, u64)> {
    use xpol_compiler::ir::Value;
    use xpol_compiler::reference::KeyPart;
    use xpol_runtime::loader::KeyValue;
    let kernel_key: Vec<KeyValue> = m
        .keys
        .iter()
        .map(|k| match *k {
            Value::Int(i) => KeyValue::Int(i),
            Value::Bool(b) => KeyValue::Bool(b),
            Value::Ip(a) => KeyValue::Ip(a),
            Value::Mac(v) => KeyValue::Mac(v.to_be_bytes()[2..].try_into().expect("6 bytes")),
        })
        .collect();
    let reference_key: Vec<KeyPart> = m
        .keys
        .iter()
        .map(|k| match *k {
            Value::Int(i) | Value::Mac(i) => KeyPart::Int(i),
            Value::Bool(b) => KeyPart::Bool(b),
            Value::Ip(a) => KeyPart::Ip(a),
        })
        .collect();
    let name = &ir.maps[m.map].name;
    let kernel = loaded.map_entries(name)?.into_iter().find(|(k, _)| *k == kernel_key).map_or(0, |(_, v)| v);
    let reference = state.maps.get(&(m.map, reference_key)).copied().unwrap_or(0);
    Ok((kernel, reference))
}

struct WatchOptions {
    interval: f64,
    duration: Option<f64>,
    json: bool,
    metrics: Option<std::net::SocketAddr>,
    /// `--watch`: follow the policy's files.
    watch: bool,
    /// `--pcap-out`: the logged packets' capture.
    pcap_out: Option<PathBuf>,
}

/// A report in the Prometheus text exposition format.
fn prometheus(report: &serde_json::Value) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let str_of = |v: &serde_json::Value| esc(v.as_str().unwrap_or(""));
    // Labels that survive editing other rules and running from another
    // directory: the policy's name and the rule's identity, not its id,
    // file or line; `verdict` makes "drops per second" one query.
    let scope = format!("policy=\"{}\",interface=\"{}\"", str_of(&report["policy"]), str_of(&report["interface"]));
    let mut out = String::new();
    for (metric, field, help) in [
        ("xpol_rule_packets_total", "packets", "Packets for which the rule's predicate held."),
        ("xpol_rule_bytes_total", "bytes", "Bytes of the packets for which the rule's predicate held."),
    ] {
        out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} counter\n"));
        for r in report["rules"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{metric}{{{scope},hook=\"{}\",rule=\"{}\",verdict=\"{}\"}} {}\n",
                str_of(&r["hook"]),
                str_of(&r["key"]),
                str_of(&r["verdict"]),
                r[field].as_u64().unwrap_or(0)
            ));
        }
    }
    for (metric, field, kind, help) in [
        ("xpol_map_entries", "entries", "gauge", "Entries in a @map."),
        ("xpol_map_capacity", "capacity", "gauge", "The most entries a @map holds (`map @NAME max N`, else the default)."),
        ("xpol_map_lost_updates_total", "lost", "counter", "Updates of a @map that found it full and were lost."),
    ] {
        out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} {kind}\n"));
        for m in report["maps"].as_array().into_iter().flatten() {
            out.push_str(&format!("{metric}{{{scope},map=\"{}\"}} {}\n", str_of(&m["name"]), m[field].as_u64().unwrap_or(0)));
        }
    }
    for (metric, field, help) in [
        ("xpol_limit_buckets", "entries", "Buckets (keys) a limit holds."),
        ("xpol_limit_capacity", "capacity", "The most buckets a limit holds (`size: N`, else the default)."),
        ("xpol_limit_buckets_not_full", "not_full", "Buckets of a limit that have spent some of their credit."),
    ] {
        out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} gauge\n"));
        for l in report["limits"].as_array().into_iter().flatten() {
            out.push_str(&format!("{metric}{{{scope},rule=\"{}\",line=\"{}\",column=\"{}\"}} {}\n", str_of(&l["key"]), l["line"], l["column"], l[field].as_u64().unwrap_or(0)));
        }
    }
    if !report["conntrack"].is_null() {
        let ct = &report["conntrack"];
        out.push_str("# HELP xpol_conntrack_entries Connections in the connection table, by state (expired entries not counted).\n# TYPE xpol_conntrack_entries gauge\n");
        for (state, n) in ct["states"].as_object().into_iter().flatten() {
            out.push_str(&format!("xpol_conntrack_entries{{{scope},state=\"{state}\"}} {}\n", n.as_u64().unwrap_or(0)));
        }
        out.push_str("# HELP xpol_conntrack_capacity The most connections the table holds (`conntrack flows N`, else the default).\n# TYPE xpol_conntrack_capacity gauge\n");
        out.push_str(&format!("xpol_conntrack_capacity{{{scope}}} {}\n", ct["capacity"].as_u64().unwrap_or(0)));
    }
    if report["dynsets"].as_array().is_some_and(|d| !d.is_empty()) {
        for (metric, field, help) in [
            ("xpol_dynset_elements", "elements", "Live elements (their time not up) in a dynamic set."),
            ("xpol_dynset_capacity", "capacity", "The most elements a dynamic set holds (`max N`, else the default)."),
        ] {
            out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} gauge\n"));
            for d in report["dynsets"].as_array().into_iter().flatten() {
                out.push_str(&format!("{metric}{{{scope},set=\"{}\"}} {}\n", str_of(&d["name"]), d[field].as_u64().unwrap_or(0)));
            }
        }
    }
    out.push_str("# HELP xpol_log_lost_records_total Records of a `log` lost because the ring buffer was full.\n# TYPE xpol_log_lost_records_total counter\n");
    for l in report["logs"].as_array().into_iter().flatten() {
        out.push_str(&format!("xpol_log_lost_records_total{{{scope},rule=\"{}\",line=\"{}\",column=\"{}\"}} {}\n", str_of(&l["key"]), l["line"], l["column"], l["lost"].as_u64().unwrap_or(0)));
    }
    out.push_str("# HELP xpol_set_elements Elements in a named set.\n# TYPE xpol_set_elements gauge\n");
    for st in report["sets"].as_array().into_iter().flatten() {
        out.push_str(&format!("xpol_set_elements{{{scope},set=\"{}\"}} {}\n", str_of(&st["name"]), st["size"]));
    }
    // Load-balancer backends, labelled by pool and address: the series of
    // a backend removed and added again restarts from 0 (a counter reset).
    let pools = report["pools"].as_array().map(Vec::as_slice).unwrap_or_default();
    if pools.is_empty() {
        return out;
    }
    for (metric, field, kind, help) in [
        ("xpol_lb_backend_packets_total", "packets", "counter", "Packets the load balancer sent to a backend."),
        ("xpol_lb_backend_bytes_total", "bytes", "counter", "Bytes of the packets the load balancer sent to a backend."),
        ("xpol_lb_backend_new_flows_total", "new_flows", "counter", "Flows the Maglev table sent to a backend."),
        ("xpol_lb_backend_active_flows", "active_flows", "gauge", "Entries of the flow table that name a backend."),
        ("xpol_lb_backend_weight", "weight", "gauge", "A backend's weight (0: drained)."),
    ] {
        out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} {kind}\n"));
        for p in pools {
            // A value not counted (`null`: active flows of a flow table too
            // large to scan every interval) is no sample.
            for b in p["backends"].as_array().into_iter().flatten().filter(|b| !b[field].is_null()) {
                out.push_str(&format!("{metric}{{{scope},pool=\"{}\",backend=\"{}\"}} {}\n", str_of(&p["name"]), str_of(&b["address"]), b[field].as_u64().unwrap_or(0)));
            }
        }
    }
    out.push_str("# HELP xpol_lb_no_backend_drops_total Packets a pool dropped because no backend had a weight.\n# TYPE xpol_lb_no_backend_drops_total counter\n");
    for p in pools {
        out.push_str(&format!("xpol_lb_no_backend_drops_total{{{scope},pool=\"{}\"}} {}\n", str_of(&p["name"]), p["no_backend"].as_u64().unwrap_or(0)));
    }
    out
}

fn attach_and_watch(policy_path: &Path, interface: &str, hook: Option<String>, mode: XdpAttachMode, options: &WatchOptions, rejection: &RejectionOptions) -> Result<ExitCode> {
    let (interval, duration, json) = (options.interval, options.duration, options.json);
    let metrics = match options.metrics {
        Some(addr) => Some(metrics::serve(addr)?),
        None => None,
    };
    // Watching starts before the first compile: a change made meanwhile counts.
    let mut follower = if options.watch { Some(follow::Follower::new(policy_path)?) } else { None };
    let (loaded, build) = load_policy_and_build(policy_path, &Default::default(), rejection)?;
    if let Some(f) = follower.as_mut() {
        f.follow(&follow::files_read(policy_path, build.as_ref()))?;
    }
    let Some(mut policy) = loaded else { return Ok(ExitCode::FAILURE) };
    let terminal = std::io::stdout().is_terminal();
    // The capture is opened (or refused) before anything is attached.
    let inputs: Vec<&Path> = build.as_ref().map(|b| b.sources.files().filter_map(|(_, f)| f.path.as_deref()).collect()).unwrap_or_else(|| vec![policy_path]);
    let mut log_sink = log_records::LogSink::new(json, options.pcap_out.as_deref(), &inputs, terminal && !json, true)?;
    let mut log_reader = xpol_runtime::log::LogReader::open(policy.maps())?;
    if log_reader.is_none() && options.pcap_out.is_some() {
        eprintln!("warning: {} has no `log` statement: the capture stays empty", policy_path.display());
    }
    let hooks: Vec<String> = match &hook {
        Some(h) => vec![h.clone()],
        None => policy.meta().programs.iter().map(|p| p.hook.clone()).collect(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    // The host's side of `synproxy` first: the SYN-ACKs XDP sends are
    // answered by it. Removed when this returns (dropped), even on error.
    let name = format!("run_{}", std::process::id());
    let _netfilter = xpol_runtime::synproxy::NetfilterSide::install(&name, &[interface.to_string()], &policy.meta().synproxies)?;
    if let Some(n) = &_netfilter {
        let was = n.loose_before().map_or(String::new(), |v| format!(", was {v}"));
        eprintln!("installed nftables table inet {} and net.netfilter.nf_conntrack_tcp_loose=0{was} for `synproxy` (both undone on exit)", n.table());
    }
    for h in &hooks {
        policy.attach(h, interface, mode)?;
    }
    eprintln!("attached {} to {interface} ({}); Ctrl-C to detach (`xpol apply` keeps a policy attached)", policy_path.display(), hooks.join(", "));
    if let Some(w) = xpol_runtime::conntrack::unattached_trackers(policy.meta(), &hooks) {
        eprintln!("warning: {w}");
    }
    for w in lb_host::warnings(policy.meta(), &[interface.to_string()]) {
        eprintln!("warning: {w}");
    }
    if let Some(f) = &follower {
        eprintln!("watching {} file(s) of {}: a change replaces the running version", f.len(), policy_path.display());
    }
    // The version running: 1, then one more per replace (`--watch`).
    let mut generation = 1u64;
    let start = Instant::now();
    // Checked when parsed (`interval_seconds`): finite, 0.1 to 86400.
    let interval = Duration::from_secs_f64(interval);
    let mut previous = Totals::new();
    let mut last = Instant::now();
    let report = loop {
        let next = last + interval;
        let mut finished = false;
        while Instant::now() < next {
            if stop.load(Ordering::SeqCst) || duration.is_some_and(|d| start.elapsed().as_secs_f64() >= d) {
                finished = true;
                break;
            }
            match follower.as_mut() {
                Some(f) => {
                    if f.changed(Duration::from_millis(20))? && run_again(&mut policy, policy_path, hook.as_deref(), interface, mode, f, rejection) {
                        generation += 1;
                        // The new version has a ring of its own: the old
                        // one's last records first.
                        if let Some(r) = log_reader.as_mut() {
                            log_sink.take(r)?;
                        }
                        log_reader = xpol_runtime::log::LogReader::open(policy.maps())?;
                    }
                }
                None => match &log_reader {
                    Some(r) => {
                        r.wait(Duration::from_millis(20))?;
                    }
                    None => std::thread::sleep(Duration::from_millis(20)),
                },
            }
            if let Some(r) = log_reader.as_mut() {
                log_sink.take(r)?;
            }
        }
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        // A link the kernel no longer attaches (interface deleted, or
        // detached from outside) filters nothing: say so and fail.
        let lost: Vec<String> = policy.links_attached().into_iter().filter(|(_, attached)| !attached).map(|(hook, _)| hook).collect();
        if !lost.is_empty() {
            bail!(
                "{} on {interface} is no longer attached (the interface went away, or the program was detached from outside): the policy filters nothing there",
                lost.join(", ")
            );
        }
        let mut report = snapshot(policy.maps(), interface, start.elapsed().as_secs_f64(), &previous, dt)?;
        // A policy run from a file is named after it, wherever it was run from.
        report["policy"] = policy_path.file_stem().map_or(String::new(), |s| s.to_string_lossy().into_owned()).into();
        report["generation"] = generation.into();
        previous = rule_totals(&report);
        if let Some(m) = &metrics {
            m.publish(prometheus(&report));
        }
        if finished {
            break report;
        }
        show_report(&report, json, terminal);
        if terminal && !json && log_sink.records > 0 {
            println!("  last log records:");
            for line in log_sink.recent() {
                println!("    {line}");
            }
        }
    };
    // Detach (dropping the links) before the summary, so that nothing is
    // left attached even if printing fails.
    drop(policy);
    eprintln!("detached from {interface}");
    // What the programs wrote before they were detached.
    if let Some(r) = log_reader.as_mut() {
        log_sink.take(r)?;
        for line in log_sink.recent().filter(|_| terminal && !json) {
            println!("{line}");
        }
        if log_sink.records > 0 || options.pcap_out.is_some() {
            eprintln!("{} log records", log_sink.records);
        }
    }
    log_sink.finish()?;
    if json {
        println!("{}", serde_json::json!({"schema": REPORT_SCHEMA, "final": true, "report": report}));
    } else {
        print_table(&report, false);
    }
    Ok(ExitCode::SUCCESS)
}

/// `run --watch` after a change: compiles the policy again and switches
/// the attached programs to the new version (`apply::replace_attached`).
/// Whatever fails is reported and the running version stays. True when
/// the new version runs.
fn run_again(policy: &mut LoadedPolicy, path: &Path, hook: Option<&str>, interface: &str, mode: XdpAttachMode, follower: &mut follow::Follower, rejection: &RejectionOptions) -> bool {
    let not_replaced = || eprintln!("{} not replaced; the running version stays", path.display());
    let compiled = follow::compile(path).and_then(|c| follower.follow(&c.files).map(|()| c));
    let (object, build) = match compiled {
        Ok(follow::Compiled { object: Some(built), .. }) => built,
        Ok(_) => {
            not_replaced();
            return false;
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            not_replaced();
            return false;
        }
    };
    let hooks: Vec<String> = match hook {
        Some(h) => vec![h.to_string()],
        // An unreadable object attaches nothing: the replace says why.
        None => xpol_runtime::loader::read_meta(&object).map(|m| m.programs.iter().map(|p| p.hook.clone()).collect()).unwrap_or_default(),
    };
    match xpol_runtime::apply::replace_attached(policy, &object, &hooks, interface, mode) {
        Ok(done) => {
            for w in &done.warnings {
                eprintln!("warning: {} was replaced, but {w}", path.display());
            }
            let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
            let mut pools = if done.pools_kept.is_empty() { String::new() } else { format!("; pools kept live: {}", done.pools_kept.join(", ")) };
            if done.conntrack_kept {
                pools.push_str("; connections kept");
            }
            eprintln!(
                "replaced {} on {interface} ({}): {} rules kept their counters; kept @maps: {}{pools}; attached: {}; detached: {}",
                path.display(),
                hooks.join(", "),
                done.rules_carried,
                list(&done.maps_kept),
                list(&done.attached),
                list(&done.detached)
            );
            true
        }
        Err(e) => {
            let shown = match (&e, &build) {
                (xpol_runtime::loader::RuntimeError::Verifier { .. } | xpol_runtime::loader::RuntimeError::Map { .. }, Some(build)) => explain_load_error(build, e, rejection),
                _ => Err(e.into()),
            };
            if let Err(e) = shown {
                eprintln!("error: {e:#}");
            }
            not_replaced();
            false
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Log { name, json, duration, pcap_out } => log_records::follow(&name, json, duration, pcap_out.as_deref()),
        Command::Run { policy, interface, hook, mode, every, metrics, watch, pcap_out, rejection } => {
            let options = WatchOptions { interval: every.interval, duration: every.duration, json: every.json, metrics, watch, pcap_out };
            attach_and_watch(&policy, &interface, hook.map(HookArg::name), mode.into(), &options, &rejection)
        }
        Command::Apply { policy, interfaces, name, hook, mode, json, watch, rejection } => {
            let target = applied::Target { interfaces, name, hooks: hook.into_iter().map(HookArg::name).collect(), mode: mode.into() };
            if watch {
                applied::apply_watch(&policy, &target, json, &rejection)
            } else {
                applied::apply(&policy, &target, json, &rejection)
            }
        }
        Command::Demo { json, mode } => demo::demo(json, mode.into()),
        Command::Agent { config } => agent::agent(&config),
        Command::Delete { name } => applied::delete(&name),
        Command::List { json } => applied::list(json),
        Command::Stats { name, json } => applied::stats(&name, json),
        Command::Ct { name, json } => applied::conntrack(&name, json),
        Command::Watch { name, every } => applied::watch(&name, every.interval, every.duration, every.json),
        Command::Completions { shell } => common::generate::completions(Cli::command(), shell).map(|()| ExitCode::SUCCESS),
        Command::Man { out } => common::generate::man(Cli::command(), "8", out.as_deref()).map(|()| ExitCode::SUCCESS),
        Command::Set { name, set, op } if dynsets::is_dynamic(&name, &set)? => dynsets::set(&name, &set, op),
        Command::Set { name, set, op } => applied::set(&name, &set, op),
        Command::Pool { name, pool, op } => applied::pool(&name, &pool, op),
        Command::Test { policy, hook, pcap, json, rejection } => {
            let options = xpol_runtime::loader::LoadOptions { missing_interfaces_ok: true, ..Default::default() };
            let (Some(mut loaded), build) = load_policy_and_build(&policy, &options, &rejection)? else { return Ok(ExitCode::FAILURE) };
            if let Some(build) = build.as_ref().filter(|b| pcap.is_none() && b.output.as_ref().is_some_and(|o| !o.ir.tests.is_empty())) {
                return run_policy_tests(&mut loaded, build, json);
            }
            let hooks: Vec<String> = match hook {
                Some(h) => vec![h.name()],
                None => loaded.meta().programs.iter().map(|p| p.hook.clone()).collect(),
            };
            if hooks.is_empty() {
                bail!("the object has no programs");
            }
            let packets: Vec<(String, Vec<u8>)> = match &pcap {
                Some(path) => {
                    let capture = xpol_runtime::pcap::read_frames(path)?;
                    // The frames before a damaged record are still run.
                    if let Some(why) = &capture.stopped {
                        eprintln!("warning: {why}");
                    }
                    capture.frames.into_iter().enumerate().map(|(i, f)| (format!("#{} ({} bytes)", i + 1, f.len()), f)).collect()
                }
                None => sample_packets().into_iter().map(|(name, spec)| (name, spec.build())).collect(),
            };
            let rules = loaded.meta().rules.clone();
            if !json {
                println!("{} verified by the kernel: {} rules", policy.display(), rules.len());
            }
            for hook in &hooks {
                if !json {
                    println!("\n{hook}:");
                    println!("  {:<50} {:<9} rules fired", "packet", "verdict");
                }
                for (i, (name, bytes)) in packets.iter().enumerate() {
                    let before = loaded.rule_counters()?;
                    let verdict = match loaded.test_run(hook, bytes) {
                        Ok(out) => format!("{:?}", out.action).to_lowercase(),
                        // Frames the kernel will not test-run (shorter than an
                        // Ethernet header) are reported, not fatal.
                        Err(e) => format!("error: {e}"),
                    };
                    let after = loaded.rule_counters()?;
                    let fired: Vec<usize> = after.iter().zip(&before).enumerate().filter(|(_, (a, b))| a.packets > b.packets).map(|(i, _)| i).collect();
                    if json {
                        println!("{}", serde_json::json!({"schema": REPORT_SCHEMA, "hook": hook, "packet": i + 1, "name": name, "len": bytes.len(), "verdict": verdict, "fired": fired}));
                    } else {
                        let fired: Vec<String> = fired.iter().map(|&r| format!("#{} (line {})", r, rules[r].line)).collect();
                        println!("  {:<50} {:<9} {}", name, verdict, fired.join(", "));
                    }
                }
            }
            let report = snapshot(loaded.maps(), "-", 0.0, &Totals::new(), 0.0)?;
            if json {
                println!("{}", serde_json::json!({"schema": REPORT_SCHEMA, "counters": report}));
            } else {
                println!("\ncounters:");
                let counters = loaded.rule_counters()?;
                for (r, c) in rules.iter().zip(&counters) {
                    let text = match &r.label {
                        Some(label) => format!("[{label}] {}", r.text),
                        None => r.text.clone(),
                    };
                    println!("  #{:<3} {}:{:<4} {:>6} pkts {:>8} bytes  {text}", r.id, r.file, r.line, c.packets, c.bytes);
                }
                for m in loaded.meta().maps.clone() {
                    for (key, value) in loaded.map_entries(&m.name)? {
                        let key: Vec<String> = key.iter().map(|k| k.to_string()).collect();
                        println!("  @{}[{}] = {}", m.name, key.join(", "), value);
                    }
                }
                for m in report["maps"].as_array().into_iter().flatten() {
                    println!("  @{}: {}/{} entries, {} lost updates", m["name"].as_str().unwrap_or(""), m["entries"], m["capacity"], m["lost"]);
                }
                for l in report["limits"].as_array().into_iter().flatten() {
                    print!("{}", limit_line(l));
                }
                for w in map_warnings(&report) {
                    println!("  warning: {w}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Cli, Command, HookArg};
    use clap::{CommandFactory, Parser};
    use xpol_runtime::loader::XdpAttachMode;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("xpol").chain(args.iter().copied()))
    }

    /// clap's own checks of the definitions (no two flags on one letter).
    #[test]
    fn command_line_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    /// `--mode` in xdp-tools' words, and the older spellings a script may
    /// still use.
    #[test]
    fn mode_takes_xdp_tools_words_and_the_old_ones() {
        for (word, mode) in [
            ("skb", XdpAttachMode::Generic),
            ("generic", XdpAttachMode::Generic),
            ("native", XdpAttachMode::Native),
            ("drv", XdpAttachMode::Native),
            ("auto", XdpAttachMode::Auto),
        ] {
            let Command::Apply { mode: m, .. } = parse(&["apply", "p.xpol", "-i", "eth0", "--name", "n", "--mode", word]).expect(word).command else { panic!("apply") };
            assert_eq!(XdpAttachMode::from(m), mode, "{word}");
            let Command::Run { mode: m, .. } = parse(&["run", "p.xpol", "-i", "eth0", "--mode", word]).expect(word).command else { panic!("run") };
            assert_eq!(XdpAttachMode::from(m), mode, "{word}");
        }
        let Command::Run { mode, .. } = parse(&["run", "p.xpol", "-i", "eth0"]).expect("default").command else { panic!("run") };
        assert_eq!(XdpAttachMode::from(mode), XdpAttachMode::Auto);
        let e = parse(&["run", "p.xpol", "-i", "eth0", "--mode", "fast"]).err().expect("an unknown mode is refused").to_string();
        assert!(e.contains("skb") && e.contains("native") && e.contains("auto"), "{e}");
    }

    /// Hooks as the language spells them, and the older `tc-` spelling;
    /// either way the runtime gets the language's name.
    #[test]
    fn hook_takes_the_language_spelling_and_the_old_one() {
        for (word, name) in [("xdp", "xdp"), ("tc:ingress", "tc:ingress"), ("tc-ingress", "tc:ingress"), ("tc:egress", "tc:egress"), ("tc-egress", "tc:egress")] {
            let Command::Test { hook, .. } = parse(&["test", "p.xpol", "--hook", word]).expect(word).command else { panic!("test") };
            assert_eq!(hook.map(HookArg::name).as_deref(), Some(name));
            let Command::Apply { hook, .. } = parse(&["apply", "p.xpol", "-i", "e", "--name", "n", "--hook", word, "--hook", "xdp"]).expect(word).command else { panic!("apply") };
            assert_eq!(hook.into_iter().map(HookArg::name).collect::<Vec<_>>(), [name, "xdp"]);
        }
        let e = parse(&["run", "p.xpol", "-i", "eth0", "--hook", "tc"]).err().expect("an unknown hook is refused").to_string();
        assert!(e.contains("tc:ingress") && e.contains("tc:egress") && !e.contains("tc-ingress"), "the help shows one spelling: {e}");
    }

    /// `-j` wherever `--json` is.
    #[test]
    fn j_is_json_everywhere() {
        for args in [
            &["list", "-j"][..],
            &["stats", "n", "-j"],
            &["ct", "n", "-j"],
            &["watch", "n", "-j"],
            &["log", "n", "-j"],
            &["test", "p.xpol", "-j"],
            &["run", "p.xpol", "-i", "e", "-j"],
            &["apply", "p.xpol", "-i", "e", "--name", "n", "-j"],
            &["set", "n", "s", "list", "-j"],
            &["pool", "n", "p", "list", "-j"],
            &["demo", "-j"],
        ] {
            let json = match parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}")).command {
                Command::List { json } | Command::Stats { json, .. } | Command::Ct { json, .. } | Command::Test { json, .. } | Command::Apply { json, .. } | Command::Log { json, .. } | Command::Demo { json, .. } => json,
                Command::Watch { every, .. } | Command::Run { every, .. } => every.json,
                Command::Set { op: super::SetOp::List { json }, .. } | Command::Pool { op: super::PoolOp::List { json }, .. } => json,
                _ => panic!("{args:?}"),
            };
            assert!(json, "{args:?}");
        }
    }

    /// Each @map gives three series labelled by policy, interface and map:
    /// its entries and capacity (gauges) and its lost updates (a counter);
    /// a map that lost updates gets a warning naming the fix.
    #[test]
    fn prometheus_shows_map_fill_and_lost_updates() {
        let report = serde_json::json!({
            "policy": "edge", "interface": "eth0", "rules": [], "sets": [],
            "maps": [{"name": "seen", "entries": 4, "capacity": 4, "lost": 6, "top": []}, {"name": "ok", "entries": 1, "capacity": 10240, "lost": 0, "top": []}],
        });
        let text = super::prometheus(&report);
        for line in [
            "# TYPE xpol_map_lost_updates_total counter",
            "xpol_map_lost_updates_total{policy=\"edge\",interface=\"eth0\",map=\"seen\"} 6",
            "xpol_map_lost_updates_total{policy=\"edge\",interface=\"eth0\",map=\"ok\"} 0",
            "# TYPE xpol_map_capacity gauge",
            "xpol_map_capacity{policy=\"edge\",interface=\"eth0\",map=\"seen\"} 4",
            "xpol_map_entries{policy=\"edge\",interface=\"eth0\",map=\"seen\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        let warnings = super::map_warnings(&report);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("@seen was full: 6 updates"), "{warnings:?}");
        assert!(!text.contains("xpol_lb_"), "no pool, no load-balancer series");
    }

    /// Each `log` gives its lost records (the ring was full), labelled by
    /// its rule's identity and place; one that lost records gets a warning.
    #[test]
    fn prometheus_shows_lost_log_records() {
        let report = serde_json::json!({
            "policy": "edge", "interface": "eth0", "rules": [], "maps": [], "sets": [],
            "logs": [{"rule": 2, "key": "xdp /tcp.dport == 23/", "line": 18, "column": 45, "prefix": "telnet: ", "lost": 7}, {"rule": 3, "key": "xdp", "line": 20, "column": 5, "prefix": "", "lost": 0}],
        });
        let text = super::prometheus(&report);
        for line in [
            "# TYPE xpol_log_lost_records_total counter",
            "xpol_log_lost_records_total{policy=\"edge\",interface=\"eth0\",rule=\"xdp /tcp.dport == 23/\",line=\"18\",column=\"45\"} 7",
            "xpol_log_lost_records_total{policy=\"edge\",interface=\"eth0\",rule=\"xdp\",line=\"20\",column=\"5\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        let warnings = super::log_records::report_warnings(&report);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("the `log` on line 18 lost 7 records"), "{warnings:?}");
    }

    /// Each dynamic set gives its live elements and capacity; a policy
    /// without one, no such metric.
    #[test]
    fn prometheus_shows_dynamic_sets() {
        let report = serde_json::json!({
            "policy": "edge", "interface": "eth0", "rules": [], "maps": [], "sets": [], "logs": [],
            "dynsets": [{"name": "scanners", "elements": 3, "capacity": 65536}],
        });
        let text = super::prometheus(&report);
        for line in [
            "# TYPE xpol_dynset_elements gauge",
            "xpol_dynset_elements{policy=\"edge\",interface=\"eth0\",set=\"scanners\"} 3",
            "xpol_dynset_capacity{policy=\"edge\",interface=\"eth0\",set=\"scanners\"} 65536",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        let none = super::prometheus(&serde_json::json!({"policy": "p", "interface": "eth0", "rules": [], "maps": [], "sets": [], "logs": [], "dynsets": []}));
        assert!(!none.contains("xpol_dynset"), "{none}");
    }

    /// Each backend of each pool gives its counters (and gauges for its
    /// flows now and its weight) labelled by pool and address; each pool
    /// its drops for want of a backend.
    #[test]
    fn prometheus_shows_backends_by_pool_and_address() {
        let backend = |addr: &str, slot: u32, weight: u32, packets: u64| {
            let b = xpol_runtime::lb::LiveBackend { slot, addr: addr.parse().expect("address"), weight };
            xpol_runtime::lb::BackendStats { backend: b, packets, bytes: packets * 60, new_flows: packets / 2, active_flows: 3 }
        };
        let pool = xpol_runtime::lb::PoolStats { name: "web".into(), active_counted: true, backends: vec![backend("198.18.1.10", 0, 2, 10), backend("2001:db8::10", 1, 0, 4)], no_backend: 7 };
        let report = serde_json::json!({"policy": "edge", "interface": "eth0", "rules": [], "maps": [], "sets": [], "pools": [super::pool_json(&pool)]});
        let text = super::prometheus(&report);
        for line in [
            "# TYPE xpol_lb_backend_packets_total counter",
            "xpol_lb_backend_packets_total{policy=\"edge\",interface=\"eth0\",pool=\"web\",backend=\"198.18.1.10\"} 10",
            "xpol_lb_backend_bytes_total{policy=\"edge\",interface=\"eth0\",pool=\"web\",backend=\"198.18.1.10\"} 600",
            "xpol_lb_backend_new_flows_total{policy=\"edge\",interface=\"eth0\",pool=\"web\",backend=\"2001:db8::10\"} 2",
            "# TYPE xpol_lb_backend_active_flows gauge",
            "xpol_lb_backend_active_flows{policy=\"edge\",interface=\"eth0\",pool=\"web\",backend=\"198.18.1.10\"} 3",
            "xpol_lb_backend_weight{policy=\"edge\",interface=\"eth0\",pool=\"web\",backend=\"2001:db8::10\"} 0",
            "# TYPE xpol_lb_no_backend_drops_total counter",
            "xpol_lb_no_backend_drops_total{policy=\"edge\",interface=\"eth0\",pool=\"web\"} 7",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        let table = super::pool_table(&super::pool_json(&pool), "");
        assert!(table.lines().nth(2).is_some_and(|l| l.contains("2001:db8::10") && l.contains("drained")), "{table}");
        assert!(table.contains("7 packets dropped: no backend had a weight"), "{table}");
    }
}
