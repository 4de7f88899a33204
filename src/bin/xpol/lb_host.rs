//! What a host running `lb(...)` needs from its kernel settings, checked
//! when a policy with pools is attached. Warnings, not errors: the
//! operator may route otherwise, and the policy works as documented
//! either way (docs/language.md, "Next hop").

use xpol_lang::meta::ObjectMeta;

/// A sysctl's value, `None` when it cannot be read (another kernel, no
/// such interface). Only fixed paths under /proc/sys are read; an
/// interface name that could leave its directory is not looked up.
fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}")).ok().map(|v| v.trim().to_string())
}

fn plain_name(iface: &str) -> bool {
    !iface.is_empty() && iface != "." && iface != ".." && !iface.contains('/')
}

/// Warnings for a policy with pools attached to `interfaces`.
pub fn warnings(meta: &ObjectMeta, interfaces: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if meta.pools.is_empty() {
        return out;
    }
    let v4 = meta.pools.iter().any(|p| !p.v6);
    let v6 = meta.pools.iter().any(|p| p.v6);
    if v4 && sysctl("net/ipv4/ip_forward").as_deref() == Some("0") {
        out.push("IPv4 forwarding is off (net.ipv4.ip_forward=0): `lb` finds its next hop with the FIB, which then answers \"forwarding disabled\", and every balanced packet goes up the stack, which drops it; `sysctl -w net.ipv4.ip_forward=1`".to_string());
    }
    if v6 && sysctl("net/ipv6/conf/all/forwarding").as_deref() == Some("0") {
        out.push("IPv6 forwarding is off (net.ipv6.conf.all.forwarding=0): `lb` to IPv6 backends then sends every packet up the stack, which drops it; `sysctl -w net.ipv6.conf.all.forwarding=1`".to_string());
    }
    if v4 {
        for iface in interfaces.iter().filter(|i| plain_name(i)) {
            if sysctl(&format!("net/ipv4/conf/{iface}/accept_local")).as_deref() == Some("0") {
                out.push(format!(
                    "accept_local is off on {iface}: if an `lb` over an IPv4 pool has `src:` an address of this host, a packet the FIB has no neighbour for yet goes up the stack as a martian and is dropped, and the neighbour is never resolved; `sysctl -w net.ipv4.conf.{iface}.accept_local=1`"
                ));
            }
        }
    }
    out
}
