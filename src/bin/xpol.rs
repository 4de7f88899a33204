//! `xpol`: run xpol policies in the kernel.
//!
//!   xpol test POLICY     compile (or load an object), verify it in the kernel
//!                        and run sample packets through it with
//!                        BPF_PROG_TEST_RUN, showing verdicts and counters.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use xpol_runtime::loader::LoadedPolicy;
use xpol_runtime::packet::PacketSpec;

#[derive(Parser)]
#[command(name = "xpol", version, about = "Run xpol network policies in the kernel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a policy in the kernel and run sample packets through it
    /// (BPF_PROG_TEST_RUN; nothing is attached to any interface).
    Test {
        /// A `.xpol` source or an object built by `xpolc build`.
        policy: PathBuf,
        /// Hook to test (`xdp`, `tc:ingress`, `tc:egress`); default: every hook of the policy.
        #[arg(long)]
        hook: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Compiles a source policy, or reads an object.
fn object_for(policy: &Path) -> Result<Option<Vec<u8>>> {
    if policy.extension().is_some_and(|e| e == "o") {
        return Ok(Some(std::fs::read(policy).with_context(|| format!("cannot read {}", policy.display()))?));
    }
    let build = xpol_compiler::build(policy, &xpol_compiler::BuildOptions::default());
    if !build.diagnostics.is_empty() {
        eprint!("{}", xpol_lang::render::render_human(&build.diagnostics, &build.sources, std::io::stderr().is_terminal()));
    }
    Ok(build.output.map(|o| o.object))
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

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Test { policy, hook } => {
            let Some(object) = object_for(&policy)? else { return Ok(ExitCode::FAILURE) };
            let mut loaded = LoadedPolicy::load(&object).context("loading the policy into the kernel")?;
            let hooks: Vec<String> = match hook {
                Some(h) => vec![h],
                None => loaded.meta().programs.iter().map(|p| p.hook.clone()).collect(),
            };
            if hooks.is_empty() {
                bail!("the object has no programs");
            }
            let rules = loaded.meta().rules.clone();
            println!("{} verified by the kernel: {} rules", policy.display(), rules.len());
            for hook in &hooks {
                println!("\n{hook}:");
                println!("  {:<50} {:<9} rules fired", "packet", "verdict");
                for (name, spec) in sample_packets() {
                    let before = loaded.rule_counters()?;
                    let out = loaded.test_run(hook, &spec.build())?;
                    let after = loaded.rule_counters()?;
                    let fired: Vec<String> = after
                        .iter()
                        .zip(&before)
                        .enumerate()
                        .filter(|(_, (a, b))| a.packets > b.packets)
                        .map(|(i, _)| format!("#{} (line {})", i, rules[i].line))
                        .collect();
                    println!("  {:<50} {:<9} {}", name, format!("{:?}", out.action).to_lowercase(), fired.join(", "));
                }
            }
            println!("\ncounters:");
            let counters = loaded.rule_counters()?;
            for (r, c) in rules.iter().zip(&counters) {
                println!("  #{:<3} {}:{:<4} {:>6} pkts {:>8} bytes  {}", r.id, r.file, r.line, c.packets, c.bytes, r.text);
            }
            for m in loaded.meta().maps.clone() {
                for (key, value) in loaded.map_entries(&m.name)? {
                    let key: Vec<String> = key.iter().map(|k| k.to_string()).collect();
                    println!("  @{}[{}] = {}", m.name, key.join(", "), value);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
