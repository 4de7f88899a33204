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

/// Warnings for a policy with pools attached to `interfaces`. The FIB
/// checks forwarding on the interface a packet came in by, and
/// `accept_local` is on when `all` or the interface has it. The commands
/// given write /proc/sys directly: `sysctl`'s dotted names break on
/// interface names with dots (VLANs).
pub fn warnings(meta: &ObjectMeta, interfaces: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if meta.pools.is_empty() {
        return out;
    }
    let v4 = meta.pools.iter().any(|p| !p.v6);
    let v6 = meta.pools.iter().any(|p| p.v6);
    let off = |path: &str| sysctl(path).as_deref() == Some("0");
    for iface in interfaces.iter().filter(|i| plain_name(i)) {
        for (on, family, what) in [(v4, "ipv4", "IPv4"), (v6, "ipv6", "IPv6")] {
            let path = format!("net/{family}/conf/{iface}/forwarding");
            if on && off(&path) {
                out.push(format!(
                    "{what} forwarding is off on {iface}: `lb` finds its next hop with the FIB, which then answers \"forwarding disabled\", and every balanced packet goes up the stack, which drops it; `echo 1 > /proc/sys/{path}` (or net.{family}.conf.all.forwarding, net.ipv4.ip_forward)"
                ));
            }
        }
        let path = format!("net/ipv4/conf/{iface}/accept_local");
        if v4 && off(&path) && off("net/ipv4/conf/all/accept_local") {
            out.push(format!(
                "accept_local is off on {iface}: if an `lb` over an IPv4 pool encapsulates with `src:` an address of this host, a packet the FIB has no neighbour for yet goes up the stack as a martian and is dropped, and the neighbour is never resolved; `echo 1 > /proc/sys/{path}`"
            ));
        }
    }
    out
}
