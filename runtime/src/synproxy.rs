//! The host's side of `synproxy(...)` (docs/language.md, "SYN proxy").
//!
//! The XDP program answers SYNs with cookies and passes the ACKs whose
//! cookie is valid; netfilter's synproxy then checks the same cookie (the
//! kernel's one secret) and opens the connection to the local server,
//! translating sequence numbers for the rest of it. For that it needs:
//!
//! - the SYNs to the protected ports left untracked (`notrack` in a
//!   prerouting chain at `raw` priority), so that conntrack does not
//!   create an entry for SYNs XDP already answered (only those the policy
//!   let through reach the stack);
//! - the `synproxy` statement on `ct state invalid, untracked` in an input
//!   chain, with the options the SYN-ACK offered, and a drop of what is
//!   still invalid;
//! - `net.netfilter.nf_conntrack_tcp_loose = 0`, so that an ACK without a
//!   SYN seen is invalid (and goes to the synproxy) rather than picked up
//!   as a connection.
//!
//! [`NetfilterSide::install`] writes one table of its own (`inet
//! xpol_synproxy_NAME`) with `nft -f -` and sets the sysctl;
//! [`NetfilterSide::remove`] (or dropping it) deletes the table and puts
//! the sysctl back. Through the `nft` binary rather than a netlink crate:
//! the crates that exist either run the same binary (`nftables`, JSON) or
//! have no synproxy expression (`rustables`), and the text ruleset is what
//! an administrator reads in `nft list ruleset` and docs/security.md.

use std::io::Write;
use std::process::{Command, Stdio};
use xpol_lang::meta::SynproxyMeta;

/// The sysctl netfilter's synproxy needs at 0 (in the network namespace
/// the policy runs in).
pub const TCP_LOOSE: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_loose";

/// The oldest kernel with `bpf_tcp_raw_gen_syncookie_ipv4` and its kin.
pub const MIN_KERNEL: (u32, u32) = (6, 0);

#[derive(Debug, thiserror::Error)]
pub enum SynproxyError {
    #[error("`synproxy` needs Linux {}.{} or later (the BPF helpers bpf_tcp_raw_gen_syncookie_ipv4/ipv6 and bpf_tcp_raw_check_syncookie_ipv4/ipv6); this kernel is {release}", MIN_KERNEL.0, MIN_KERNEL.1)]
    OldKernel { release: String },
    #[error("`synproxy` needs nftables (the `nft` command) for the host's side of the handshake: {0}")]
    NoNft(std::io::Error),
    #[error("nft refused the synproxy table `{table}`: {message}")]
    Nft { table: String, message: String },
    #[error("cannot set {TCP_LOOSE} (netfilter's synproxy needs it at 0; is nf_conntrack available?): {0}")]
    Sysctl(std::io::Error),
}

/// A kernel release (`6.18.0-...`) as (major, minor).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Fails, naming the feature and the kernel, on a kernel without the SYN
/// cookie helpers (older than 6.0).
pub fn check_kernel() -> Result<(), SynproxyError> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    match parse_release(&release) {
        Some(v) if v < MIN_KERNEL => Err(SynproxyError::OldKernel { release: release.trim().to_string() }),
        _ => Ok(()),
    }
}

/// A name nft takes as a table name: letters, digits and `_`.
pub fn table_name(name: &str) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("xpol_synproxy_{clean}")
}

/// The ruleset of table `table` for these `synproxy`s on these
/// interfaces (all of them when none is named).
pub fn ruleset(table: &str, interfaces: &[String], synproxies: &[SynproxyMeta]) -> String {
    let iif = if interfaces.is_empty() {
        String::new()
    } else {
        // Interface names are checked by the kernel to hold no quote.
        let names: Vec<String> = interfaces.iter().map(|i| format!("\"{}\"", i.replace('"', ""))).collect();
        format!("iifname {{ {} }} ", names.join(", "))
    };
    let mut raw = String::new();
    let mut input = String::new();
    for s in synproxies {
        let ports: Vec<String> = s.ports.iter().map(|&(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }).collect();
        let dport = format!("tcp dport {{ {} }}", ports.join(", "));
        let mut options = format!("mss {}", s.mss);
        if s.timestamps {
            options.push_str(&format!(" wscale {} timestamp", s.wscale));
            if s.sack {
                options.push_str(" sack-perm");
            }
        }
        raw.push_str(&format!("\t\t{iif}{dport} tcp flags & (fin | syn | rst | ack) == syn notrack\n"));
        input.push_str(&format!("\t\t{iif}{dport} ct state {{ invalid, untracked }} synproxy {options}\n"));
        input.push_str(&format!("\t\t{iif}{dport} ct state invalid drop\n"));
    }
    format!(
        "table inet {table} {{\n\tchain raw {{\n\t\ttype filter hook prerouting priority raw; policy accept;\n{raw}\t}}\n\tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n{input}\t}}\n}}\n"
    )
}

fn nft(script: &str, table: &str) -> Result<(), SynproxyError> {
    let mut child = Command::new("nft").args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(SynproxyError::NoNft)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(SynproxyError::NoNft)?;
    }
    let out = child.wait_with_output().map_err(SynproxyError::NoNft)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SynproxyError::Nft { table: table.to_string(), message: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// The netfilter table and sysctl a running `synproxy` policy needs;
/// removed (and the sysctl put back) by [`NetfilterSide::remove`] or when
/// dropped.
#[derive(Debug)]
pub struct NetfilterSide {
    table: String,
    /// The sysctl's value before, when this changed it.
    loose_before: Option<String>,
    removed: bool,
}

impl NetfilterSide {
    /// Installs table `table_name(name)` for `synproxies` on
    /// `interfaces`; `None` when there is no `synproxy`. A table of that
    /// name left by an earlier run is replaced.
    pub fn install(name: &str, interfaces: &[String], synproxies: &[SynproxyMeta]) -> Result<Option<NetfilterSide>, SynproxyError> {
        if synproxies.is_empty() {
            return Ok(None);
        }
        check_kernel()?;
        let table = table_name(name);
        // `add` then `delete` first: the table may be left from a run that
        // was killed; deleting a missing one would fail.
        let script = format!("add table inet {table}\ndelete table inet {table}\n{}", ruleset(&table, interfaces, synproxies));
        let before = std::fs::read_to_string(TCP_LOOSE).map_err(SynproxyError::Sysctl)?.trim().to_string();
        let mut side = NetfilterSide { table: table.clone(), loose_before: None, removed: false };
        if before != "0" {
            std::fs::write(TCP_LOOSE, "0").map_err(SynproxyError::Sysctl)?;
            side.loose_before = Some(before);
        }
        // On failure, `side` is dropped: the sysctl goes back.
        nft(&script, &table)?;
        Ok(Some(side))
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The sysctl's value before, when this changed it.
    pub fn loose_before(&self) -> Option<&str> {
        self.loose_before.as_deref()
    }

    /// Deletes the table and puts the sysctl back.
    pub fn remove(mut self) -> Result<(), SynproxyError> {
        self.undo()
    }

    fn undo(&mut self) -> Result<(), SynproxyError> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        let table = self.table.clone();
        let deleted = nft(&format!("add table inet {table}\ndelete table inet {table}\n"), &table);
        if let Some(v) = self.loose_before.take() {
            std::fs::write(TCP_LOOSE, v).map_err(SynproxyError::Sysctl)?;
        }
        deleted
    }
}

impl Drop for NetfilterSide {
    fn drop(&mut self) {
        if let Err(e) = self.undo() {
            eprintln!("warning: removing the synproxy's netfilter side: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse() {
        assert_eq!(parse_release("6.18.0-1-amd64\n"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0"), Some((5, 15)));
        assert!(parse_release("6.0") >= Some(MIN_KERNEL));
        assert!(parse_release("5.19.17") < Some(MIN_KERNEL));
    }

    #[test]
    fn ruleset_names_ports_interfaces_and_options() {
        let s = SynproxyMeta { rule: 0, ports: vec![(80, 80), (8000, 8099)], mss: 1460, wscale: 7, sack: true, timestamps: true };
        let r = ruleset("xpol_synproxy_web", &["eth0".into()], &[s]);
        assert!(r.contains("iifname { \"eth0\" } tcp dport { 80, 8000-8099 } tcp flags & (fin | syn | rst | ack) == syn notrack"), "{r}");
        assert!(r.contains("ct state { invalid, untracked } synproxy mss 1460 wscale 7 timestamp sack-perm"), "{r}");
        assert!(r.contains("ct state invalid drop"), "{r}");
        assert_eq!(table_name("web-1"), "xpol_synproxy_web_1");
    }
}
