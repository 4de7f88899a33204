//! `lb(POOL, nat)` end to end, through the `xpol` binary as a user runs it
//! (`xpol apply`, `xpol pool`), with real TCP and UDP traffic:
//!
//! ```text
//!  client ── veth ── LB ── veth ── switch (a bridge) ── backend1, backend2, backend3
//!  198.18.110.1     .2 │ 198.18.111.1                      198.18.111.11 .12 .13
//!  2001:db8:110::1  ::2│ 2001:db8:111::1                   2001:db8:111::11 ::12 ::13
//! ```
//!
//! The client reaches the VIPs (198.18.112.80, 2001:db8:112::80) through
//! the LB. The LB runs the policy's `xdp` program (the translation to a
//! backend) and its generated `tc:egress` program (replies translated back)
//! on its client-facing interface, and forwards. The backends have no VIP:
//! their default route goes through the LB, so their replies come back to
//! it, are forwarded, and leave by the client-facing interface, where
//! `tc:egress` gives them the VIP and port back. TCP to VIP:80 reaches the
//! backends' port 8080 (`port: 8080`); UDP to VIP:53 their port 53.
//!
//! Checked: every connection completes with data both ways (a digest of
//! what the client sent, a pattern the backend sent), the backends see
//! the client's own address, connections and datagrams spread over every
//! backend, each backend's new flows in `xpol pool ... list` are exactly
//! the connections and datagrams it answered; a capture on the client
//! sees TCP and UDP only from the VIPs, never from a backend's address,
//! every checksum right (and no host counts a checksum error; UDP without
//! a checksum, 0, both ways over IPv4, stays without). Then a
//! backend drained with `xpol pool` under a long-lived connection: the
//! connection goes on both ways, new connections and datagrams avoid the
//! backend; a backend deleted: its connection is reset, by a reset that
//! comes from the VIP.
//!
//! Checksum offload. veth hands a packet to its peer with its checksum
//! state, and a sender with transmit checksum offload (veth's default)
//! leaves TCP and UDP checksums partial (`CHECKSUM_PARTIAL`: the field
//! holds the pseudo-header's sum, for the device to finish). XDP sees only
//! the bytes and updates the field as a complete checksum, which a partial
//! one is not: with offload on at the client, the backends drop the
//! translated packets (native XDP sends them on as frames, whose checksums
//! the backend then verifies) or take them on trust (the stack kept them
//! partial). A client on another host sends complete checksums, finished
//! by its NIC; the client here does so too (`tx off`), as `tests/lb.rs`'s
//! does. The other way, `tc:egress` translates with the kernel's helpers,
//! which know partial checksums: backend1 sends complete checksums,
//! backends 2 and 3 partial ones, and the LB's client-facing interface has
//! transmit offload off, so the kernel finishes every reply's checksum
//! after the translation and the client verifies it.
//!
//! Namespaces, processes and the private bpffs (with the applied policies)
//! go away when the test ends, also when it fails.

mod common;
use common::script::Script;

use common::host::Host;
use common::net::{ip, output_bounded, unique, Netns};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

const CLIENT4: &str = "198.18.110.1";
const LB_FRONT4: &str = "198.18.110.2";
const LB_BACK4: &str = "198.18.111.1";
const BACKENDS4: [&str; 3] = ["198.18.111.11", "198.18.111.12", "198.18.111.13"];
const VIP4: &str = "198.18.112.80";
const CLIENT6: &str = "2001:db8:110::1";
const LB_FRONT6: &str = "2001:db8:110::2";
const LB_BACK6: &str = "2001:db8:111::1";
const BACKENDS6: [&str; 3] = ["2001:db8:111::11", "2001:db8:111::12", "2001:db8:111::13"];
const VIP6: &str = "2001:db8:112::80";

/// The policy: TCP to VIP:80 goes to the backends' port 8080, UDP to
/// VIP:53 to their port 53, over IPv4 and IPv6.
fn policy() -> String {
    format!(
        "pool web = {{ {} }}\n\
         pool web6 = {{ {} }}\n\
         xdp /ip.dst == {VIP4} && tcp.dport == 80/ {{ lb(web, nat, port: 8080) }}\n\
         xdp /ip.dst == {VIP4} && udp.dport == 53/ {{ lb(web, nat) }}\n\
         xdp /ip.dst == {VIP6} && tcp.dport == 80/ {{ lb(web6, nat, port: 8080) }}\n\
         xdp /ip.dst == {VIP6} && udp.dport == 53/ {{ lb(web6, nat) }}\n",
        BACKENDS4.join(", "),
        BACKENDS6.join(", ")
    )
}

// ------------------------------------------------------------ scripts

/// A backend: TCP on port 8080 (IPv4 and IPv6), where each request is a
/// line with a length, that many bytes, and a line with the length of the
/// answer, answered by a line "NAME PEER SHA256" (the client's address as
/// the backend sees it, the digest of the bytes received) and the answer's
/// bytes (i % 251); UDP on port 53, each datagram answered by "NAME PEER "
/// and the datagram (backend1 without a UDP checksum over IPv4: 0, none).
/// Exits when its standard input closes.
const BACKEND: &str = r#"
import hashlib, socket, sys, threading
name = sys.argv[1]
def plain(peer):
    return peer[0][7:] if peer[0].startswith("::ffff:") else peer[0]
srv = socket.socket(socket.AF_INET6)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.bind(("::", 8080))
srv.listen(256)
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
udp.bind(("::", 53))
if name == "backend1":
    udp.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK: over IPv4, no checksum (0)
def serve(c, peer):
    try:
        f = c.makefile("rb")
        for line in f:
            body = f.read(int(line))
            n = int(f.readline())
            head = "%s %s %s\n" % (name, plain(peer), hashlib.sha256(body).hexdigest())
            c.sendall(head.encode() + bytes(i % 251 for i in range(n)))
    except (OSError, ValueError):
        pass
    c.close()
def accept():
    while True:
        c, peer = srv.accept()
        threading.Thread(target=serve, args=(c, peer), daemon=True).start()
def datagrams():
    while True:
        data, peer = udp.recvfrom(65535)
        udp.sendto(("%s %s " % (name, plain(peer))).encode() + data, peer)
threading.Thread(target=accept, daemon=True).start()
threading.Thread(target=datagrams, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"#;

/// The client's side of one request on a connected socket (see BACKEND):
/// `UP` random bytes sent, `DOWN` bytes asked for; returns the backend's
/// name and the client address it saw, after checking both ways' bytes.
const EXCHANGE: &str = r#"
import hashlib, json, os, socket, sys
def exchange(s, f, up, down):
    body = os.urandom(up)
    s.sendall(b"%d\n" % up + body + b"%d\n" % down)
    head = f.readline().decode().split()
    if len(head) != 3:
        raise OSError("no answer: %r" % head)
    name, peer, digest = head
    if digest != hashlib.sha256(body).hexdigest():
        raise OSError("the backend got other bytes than sent")
    data = f.read(down)
    if data != bytes(i % 251 for i in range(down)):
        raise OSError("other bytes than the backend sent (%d)" % len(data))
    return name, peer
"#;

/// `N` TCP connections to VIP:80, one after another, each one request of
/// UP bytes out and DOWN bytes back; or (`udp`) N datagrams to VIP:53,
/// each from a socket of its own bound to port BASE + i (a new flow each),
/// each answer's source address and port checked, every other one over
/// IPv4 without a UDP checksum (0). Prints JSON: answers per backend,
/// client addresses the backends saw, failures (it stops at the third).
const CLIENT: &str = r#"
mode, vip, n, up, down, base = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
family = socket.AF_INET6 if ":" in vip else socket.AF_INET
names, peers, failed = {}, set(), []
for i in range(n):
    try:
        if mode == "tcp":
            s = socket.create_connection((vip, 80), timeout=4)
            name, peer = exchange(s, s.makefile("rb"), up, down)
        else:
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.settimeout(4)
            s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", base + i))
            if family == socket.AF_INET and i % 2:
                s.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK
            q = os.urandom(up)
            s.sendto(q, (vip, 53))
            data, src = s.recvfrom(65535)
            if (src[0], src[1]) != (vip, 53):
                raise OSError("an answer from %s port %d" % (src[0], src[1]))
            name, peer, echoed = data.split(b" ", 2)
            if echoed != q:
                raise OSError("the datagram came back changed")
            name, peer = name.decode(), peer.decode()
        s.close()
        names[name] = names.get(name, 0) + 1
        peers.add(peer)
    except (OSError, ValueError) as e:
        failed.append("%s #%d: %r" % (mode, i, e))
        if len(failed) == 3:
            break  # within the caller's time bound, with the reasons
print(json.dumps({"names": names, "peers": sorted(peers), "failed": failed}))
"#;

/// One long-lived connection to VIP:80: one request once connected and
/// one per line read on standard input, each printed as "NAME PEER", or
/// "error ..." when it failed.
const LONG_LIVED: &str = r#"
s = socket.create_connection((sys.argv[1], 80), timeout=4)
f = s.makefile("rb")
def ask():
    try:
        return "%s %s" % exchange(s, f, 30000, 50000)
    except (OSError, ValueError) as e:
        return "error " + type(e).__name__
print(ask(), flush=True)
for _ in sys.stdin:
    print(ask(), flush=True)
"#;

/// Captures what interface DEV receives (AF_PACKET) until its standard
/// input closes; then prints JSON: TCP and UDP packets by protocol, source
/// address and port, the ones whose checksum is wrong, UDP ones without
/// a checksum (0, not checked), and the socket's drops. The buffer holds the whole test's packets, however slowly
/// Python reads them.
const CAPTURE: &str = r#"
import json, select, socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 28)  # SO_RCVBUFFORCE
s.bind((sys.argv[1], 0))
def ones(b):
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xffff) + (t >> 16)
    return t
sources, bad, unchecked = {}, [], 0
print("ready", flush=True)
while True:
    r, _, _ = select.select([s, sys.stdin], [], [])
    if s not in r:
        break
    frame, addr = s.recvfrom(65535)
    if addr[2] != socket.PACKET_HOST:
        continue
    ip = frame[14:]
    if frame[12:14] == b"\x08\x00":
        hl, total = (ip[0] & 15) * 4, struct.unpack("!H", ip[2:4])[0]
        proto, src, l4 = ip[9], socket.inet_ntop(socket.AF_INET, ip[12:16]), ip[hl:total]
        pseudo = ip[12:20] + struct.pack("!BBH", 0, proto, len(l4))
    elif frame[12:14] == b"\x86\xdd":
        proto, src = ip[6], socket.inet_ntop(socket.AF_INET6, ip[8:24])
        l4 = ip[40:40 + struct.unpack("!H", ip[4:6])[0]]
        pseudo = ip[8:40] + struct.pack("!IxxxB", len(l4), proto)
    else:
        continue
    if proto not in (6, 17):
        continue
    key = "%s %s %d" % ("tcp" if proto == 6 else "udp", src, struct.unpack("!H", l4[0:2])[0])
    sources[key] = sources.get(key, 0) + 1
    if proto == 17 and l4[6:8] == b"\0\0":
        unchecked += 1
    elif ones(pseudo + l4) != 0xffff:
        bad.append(key + " " + l4.hex()[:80])
packets, drops = struct.unpack("II", s.getsockopt(263, 6, 8))  # PACKET_STATISTICS
print(json.dumps({"sources": sources, "bad": bad[:10], "bad_count": len(bad), "unchecked": unchecked, "drops": drops}))
"#;


// ------------------------------------------------------------ hosts

/// A namespace of this file's own name: its lab's tag and its role.
fn netns(role: &str, tag: &str) -> Netns {
    Netns::named(format!("xpol-nat{tag}-{role}"))
}

/// Counters of a host's stack.
trait Snmp {
    fn snmp(&self, group: &str, name: &str) -> u64;
    fn checksum_errors(&self) -> u64;
}

impl Snmp for Netns {
    /// A counter of /proc/net/snmp ("Tcp", "InCsumErrors") or, with group
    /// "", of /proc/net/snmp6 ("Udp6InCsumErrors").
    fn snmp(&self, group: &str, name: &str) -> u64 {
        let path = PathBuf::from("/run/netns").join(&self.name);
        let file = if group.is_empty() { "/proc/thread-self/net/snmp6" } else { "/proc/thread-self/net/snmp" };
        let text = xpol_runtime::sys::in_netns(&path, None, || std::fs::read_to_string(file)).expect("enter the namespace").expect("read snmp");
        if group.is_empty() {
            return text.lines().find_map(|l| l.strip_prefix(name).map(str::trim)).unwrap_or_else(|| panic!("no {name}")).parse().expect("a number");
        }
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("{group}: "))).collect();
        let names: Vec<&str> = lines[0].split_whitespace().collect();
        let values: Vec<&str> = lines[1].split_whitespace().collect();
        let i = names.iter().position(|n| *n == name).unwrap_or_else(|| panic!("no {group} {name}"));
        values[i].parse().expect("a number")
    }

    /// Checksum errors the host counted, TCP and UDP, IPv4 and IPv6.
    fn checksum_errors(&self) -> u64 {
        self.snmp("Tcp", "InCsumErrors") + self.snmp("Udp", "InCsumErrors") + self.snmp("", "Udp6InCsumErrors")
    }
}

/// The client, the LB, the switch and the backends; the scripts, the
/// private bpffs, then the namespaces go when it drops (fields drop in
/// their order).
struct Lab {
    scripts: Vec<Script>,
    bpffs: Host,
    client: Netns,
    lb: Netns,
    switch: Netns,
    backends: Vec<Netns>,
    /// The LB's interface towards the client, its peer, and the switch's
    /// port towards the LB.
    front: String,
    client_dev: String,
    switch_port: String,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let tag = unique();
        let (front, client_dev, back, switch_port) = (format!("nf{tag}"), format!("nc{tag}"), format!("nb{tag}"), format!("ns{tag}"));
        let lab = Lab {
            scripts: Vec::new(),
            bpffs: Host::new(),
            client: netns("c", &tag),
            lb: netns("lb", &tag),
            switch: netns("sw", &tag),
            backends: (1..=BACKENDS4.len()).map(|i| netns(&format!("b{i}"), &tag)).collect(),
            front,
            client_dev,
            switch_port,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let (c, lb, sw) = (&lab.client.name, &lab.lb.name, &lab.switch.name);
        ip(&["link", "add", &lab.client_dev, "netns", c, "type", "veth", "peer", "name", &lab.front, "netns", lb]);
        ip(&["link", "add", &back, "netns", lb, "type", "veth", "peer", "name", &lab.switch_port, "netns", sw]);
        lab.switch.ip(&["link", "add", "br0", "type", "bridge"]);
        lab.switch.ip(&["link", "set", "br0", "up"]);
        lab.switch.ip(&["link", "set", &lab.switch_port, "master", "br0"]);
        lab.switch.ip(&["link", "set", &lab.switch_port, "up"]);
        let addr = |ns: &Netns, dev: &str, a4: &str, a6: &str| {
            ns.ip(&["addr", "add", &format!("{a4}/24"), "dev", dev]);
            ns.ip(&["addr", "add", &format!("{a6}/64"), "dev", dev, "nodad"]);
            ns.ip(&["link", "set", dev, "up"]);
        };
        addr(&lab.client, &lab.client_dev, CLIENT4, CLIENT6);
        addr(&lab.lb, &lab.front, LB_FRONT4, LB_FRONT6);
        addr(&lab.lb, &back, LB_BACK4, LB_BACK6);
        lab.client.ip(&["route", "add", &format!("{VIP4}/32"), "via", LB_FRONT4]);
        lab.client.ip(&["-6", "route", "add", &format!("{VIP6}/128"), "via", LB_FRONT6]);
        lab.lb.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
        for (i, b) in lab.backends.iter().enumerate() {
            let (dev, port) = (format!("nb{tag}"), format!("ns{tag}-{i}"));
            ip(&["link", "add", &dev, "netns", &b.name, "type", "veth", "peer", "name", &port, "netns", sw]);
            lab.switch.ip(&["link", "set", &port, "master", "br0"]);
            lab.switch.ip(&["link", "set", &port, "up"]);
            addr(b, &dev, BACKENDS4[i], BACKENDS6[i]);
            // No VIP here: replies go back through the LB.
            b.ip(&["route", "add", "default", "via", LB_BACK4]);
            b.ip(&["-6", "route", "add", "default", "via", LB_BACK6]);
            if i == 0 {
                // backend1 sends complete checksums, the others partial ones.
                b.exec(&["ethtool", "-K", &dev, "tx", "off"]);
            }
        }
        // The client sends complete checksums, as a client on another host
        // does (see the module doc); the LB finishes every reply's checksum
        // after `tc:egress` translated it, so that the client verifies it.
        lab.client.exec(&["ethtool", "-K", &lab.client_dev, "tx", "off"]);
        lab.lb.exec(&["ethtool", "-K", &lab.front, "tx", "off"]);
        lab
    }

    /// `xpol ARGS` in the LB's namespace and the private bpffs; its stdout.
    fn xpol(&self, args: &[&str]) -> String {
        self.bpffs.ok(&self.lb.name, args)
    }

    fn start_backends(&mut self) {
        for i in 0..self.backends.len() {
            let name = format!("backend{}", i + 1);
            let mut s = Script::start(&self.backends[i].name, 180, BACKEND, &[&name]);
            assert_eq!(s.line(), "ready", "{name} starts");
            self.scripts.push(s);
        }
    }

    /// Runs CLIENT: `mode` "tcp" or "udp", `n` of them; answers by backend
    /// name, and the client addresses the backends saw. Every one must
    /// succeed.
    fn traffic(&self, mode: &str, vip: &str, n: usize, base_port: u16) -> (BTreeMap<String, u64>, Vec<String>) {
        let script = format!("{EXCHANGE}{CLIENT}");
        let out = output_bounded({
            let mut c = Command::new("ip");
            // UDP: datagrams of 512 bytes (`nat` takes no fragments).
            let up = if mode == "tcp" { "20000" } else { "512" };
            c.args(["netns", "exec", &self.client.name, "timeout", "24", "python3", "-c", &script, mode, vip, &n.to_string(), up, "64000", &base_port.to_string()]);
            c
        });
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "client: {text} {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("client output {text}: {e}"));
        assert_eq!(v["failed"], serde_json::json!([]), "every {mode} exchange with {vip} completes: {v}");
        let names = v["names"].as_object().expect("names").iter().map(|(k, v)| (k.clone(), v.as_u64().expect("count"))).collect();
        let peers = v["peers"].as_array().expect("peers").iter().map(|p| p.as_str().expect("address").to_string()).collect();
        (names, peers)
    }

    /// `xpol pool nat POOL list --json`: backend address -> (state, packets, new flows, active flows).
    fn pool(&self, pool: &str) -> BTreeMap<String, (String, u64, u64, u64)> {
        let list: serde_json::Value = serde_json::from_str(&self.xpol(&["pool", "nat", pool, "list", "--json"])).expect("JSON");
        let n = |b: &serde_json::Value, f: &str| b[f].as_u64().unwrap_or_else(|| panic!("{f} in {b}"));
        list["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|b| (b["address"].as_str().expect("address").to_string(), (b["state"].as_str().expect("state").to_string(), n(b, "packets"), n(b, "new_flows"), n(b, "active_flows"))))
            .collect()
    }
}

/// Backend `name` ("backend2") of a family's backends: its address.
fn address_of(name: &str, backends: &[&str; 3]) -> String {
    let i: usize = name.strip_prefix("backend").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("a backend's name: {name:?}"));
    backends[i - 1].to_string()
}

fn add(total: &mut BTreeMap<String, u64>, more: &BTreeMap<String, u64>) {
    for (k, v) in more {
        *total.entry(k.clone()).or_default() += v;
    }
}

fn usable(test: &str) -> bool {
    common::kernel(test) && ["python3", "ethtool", "unshare", "nsenter"].iter().all(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// A family's VIP, backends, client address and pool.
struct Family {
    vip: &'static str,
    backends: [&'static str; 3],
    client: &'static str,
    pool: &'static str,
}

const FAMILIES: [Family; 2] = [
    Family { vip: VIP4, backends: BACKENDS4, client: CLIENT4, pool: "web" },
    Family { vip: VIP6, backends: BACKENDS6, client: CLIENT6, pool: "web6" },
];

/// The new flows `xpol pool` counts are the connections and datagrams
/// each backend answered (`expected`: backend name -> count; a flow two
/// CPUs saw first at once counts twice);
/// each counted flow is in the flow table; packets at least one a flow.
fn check_pool(lab: &Lab, f: &Family, expected: &BTreeMap<String, u64>, what: &str) -> BTreeMap<String, (String, u64, u64, u64)> {
    let pool = lab.pool(f.pool);
    let by_addr: BTreeMap<String, u64> = expected.iter().map(|(n, c)| (address_of(n, &f.backends), *c)).collect();
    for (addr, (_, packets, new_flows, active)) in &pool {
        let want = by_addr.get(addr).copied().unwrap_or(0);
        // Two first packets of one flow handled at once on two CPUs (a
        // retransmitted SYN on a loaded machine) may both find no entry and
        // both count the flow new; the table still holds it once.
        assert!((want..=want + 2).contains(new_flows), "{what}: {addr}'s new flows are the connections and datagrams it answered: {pool:?} {expected:?}");
        assert_eq!(*active, want, "{what}: {addr}'s flows are in the flow table: {pool:?}");
        assert!(*packets >= *new_flows, "{what}: {pool:?}");
    }
    pool
}

/// Many TCP connections and UDP datagrams to both VIPs; a backend drained
/// under a long-lived connection; a backend deleted under one. See the
/// module doc.
fn nat_end_to_end(mode: &str) {
    let mut lab = Lab::new();
    let path = lab.dir.path().join("nat.xpol");
    std::fs::write(&path, policy()).expect("write the policy");
    let out = lab.bpffs.xpol(&lab.lb.name, &["apply", path.to_str().expect("utf-8"), "-i", &lab.front, "--name", "nat", "--mode", mode]);
    assert!(out.status.success(), "xpol apply: {}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_str(lab.xpol(&["list", "--json"]).lines().next().expect("a line")).expect("JSON");
    let mut hooks: Vec<String> = listed["policy"]["links"].as_array().expect("links").iter().map(|l| format!("{} on {}", l["hook"].as_str().expect("hook"), l["interface"].as_str().expect("interface"))).collect();
    hooks.sort();
    assert_eq!(hooks, [format!("tc:egress on {}", lab.front), format!("xdp on {}", lab.front)], "both programs on the client-facing interface: {listed}");
    // Native XDP redirects to the LB's other veth, which hands frames to
    // its peer's NAPI only while the peer has an XDP program.
    if mode == "native" {
        let pass = lab.dir.path().join("pass.xpol");
        std::fs::write(&pass, "xdp { pass }\n").expect("write");
        lab.bpffs.ok(&lab.switch.name, &["apply", pass.to_str().expect("utf-8"), "-i", &lab.switch_port, "--name", "peer", "--mode", "native"]);
    }
    lab.start_backends();
    let mut capture = Script::start(&lab.client.name, 170, CAPTURE, &[&lab.client_dev]);
    assert_eq!(capture.line(), "ready", "the capture starts");

    // Connections and datagrams over every backend; the backends saw the client.
    const N: usize = 60;
    let mut expected: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(), BTreeMap::new()];
    for (k, f) in FAMILIES.iter().enumerate() {
        for (what, base) in [("tcp", 0), ("udp", 20000)] {
            let (names, peers) = lab.traffic(what, f.vip, N, base);
            assert_eq!(names.values().sum::<u64>(), N as u64, "{what} to {}: {names:?}", f.vip);
            assert_eq!(names.len(), 3, "{what} to {}: {N} reach every backend: {names:?}", f.vip);
            assert_eq!(peers, [f.client], "{what} to {}: the backends see the client's own address", f.vip);
            add(&mut expected[k], &names);
        }
        check_pool(&lab, f, &expected[k], &format!("{} after the traffic", f.pool));
    }

    // A long-lived connection per family; its backend drained.
    let mut long: Vec<(Script, String)> = Vec::new();
    for (k, f) in FAMILIES.iter().enumerate() {
        let script = format!("{EXCHANGE}{LONG_LIVED}");
        let mut s = Script::start(&lab.client.name, 120, &script, &[f.vip]);
        let first = s.line();
        let (held, peer) = first.split_once(' ').unwrap_or_else(|| panic!("the long-lived connection to {}: {first:?}", f.vip));
        assert_eq!(peer, f.client, "{first}");
        let held = held.to_string();
        *expected[k].entry(held.clone()).or_default() += 1;
        let before = check_pool(&lab, f, &expected[k], &format!("{} with the long-lived connection", f.pool));
        let addr = address_of(&held, &f.backends);
        lab.xpol(&["pool", "nat", f.pool, "drain", &addr]);
        let (names, _) = lab.traffic("tcp", f.vip, N, 0);
        assert!(!names.contains_key(&held), "{}: the drained {held} gets no new connections: {names:?}", f.vip);
        assert_eq!(names.len(), 2, "{}: the others get them all: {names:?}", f.vip);
        add(&mut expected[k], &names);
        let (datagrams, _) = lab.traffic("udp", f.vip, N, 30000);
        assert!(!datagrams.contains_key(&held) && datagrams.len() == 2, "{}: no new datagram flow for the drained {held}: {datagrams:?}", f.vip);
        add(&mut expected[k], &datagrams);
        for round in 0..3 {
            s.say("again");
            assert_eq!(s.line(), first, "{}: round {round} of the long-lived connection, both ways, on the drained {held}", f.vip);
        }
        let after = check_pool(&lab, f, &expected[k], &format!("{} after the drain", f.pool));
        assert_eq!(after[&addr].0, "drained", "{after:?}");
        assert!(after[&addr].1 > before[&addr].1 + 3 * 30000 / 1500, "the drained backend's packets went on: {before:?} {after:?}");
        long.push((s, addr));
    }

    // Deleted: the IPv4 long-lived connection's next packet goes to
    // another backend, whose reset comes from the VIP.
    let (mut s, addr) = long.remove(0);
    lab.xpol(&["pool", "nat", "web", "del", &addr]);
    s.say("again");
    let after = s.line();
    assert!(["error ConnectionResetError", "error BrokenPipeError"].contains(&after.as_str()), "the deleted backend's connection went to another backend, which reset it: {after:?}");
    let (names, _) = lab.traffic("tcp", VIP4, 20, 0);
    assert_eq!(names.values().sum::<u64>(), 20, "{names:?}");
    assert!(!lab.pool("web").contains_key(&addr), "{addr} is gone");
    drop(s);
    drop(long);

    // What reached the client: TCP and UDP from the VIPs only, every
    // checksum right; no host counted a checksum error.
    let report = capture.finish();
    let v: serde_json::Value = serde_json::from_str(&report).unwrap_or_else(|e| panic!("capture output {report:?}: {e}"));
    let sources: BTreeMap<String, u64> = v["sources"].as_object().expect("sources").iter().map(|(k, v)| (k.clone(), v.as_u64().expect("count"))).collect();
    eprintln!("{mode}: the client received {sources:?}; {} with a wrong checksum, {} UDP without one, {} dropped by the capture", v["bad_count"], v["unchecked"], v["drops"]);
    let want: Vec<String> = ["tcp VIP4 80", "tcp VIP6 80", "udp VIP4 53", "udp VIP6 53"].iter().map(|k| k.replace("VIP4", VIP4).replace("VIP6", VIP6)).collect();
    let mut got: Vec<&String> = sources.keys().collect();
    got.sort();
    assert_eq!(got, want.iter().collect::<Vec<_>>(), "TCP and UDP only from the VIP and its port, never from a backend: {sources:?}");
    assert_eq!(v["drops"], 0, "the capture saw every packet");
    assert!(sources[&want[0]] > (N * 64000 / 1500) as u64, "the capture saw the answers: {sources:?}");
    assert_eq!(v["bad_count"], 0, "every checksum the client received is right: {}", v["bad"]);
    // backend1's answers over IPv4 came without a UDP checksum, and so
    // they reached the client (`tc:egress` left the 0 alone).
    let unchecked = v["unchecked"].as_u64().expect("a count");
    assert!(unchecked > 0 && unchecked < sources[&want[2]], "some UDP answers without a checksum: {unchecked}");
    for host in [&lab.client].into_iter().chain(&lab.backends) {
        assert_eq!(host.checksum_errors(), 0, "{}: no TCP or UDP checksum error", host.name);
    }

    // Native XDP sent packets on itself (redirected to the LB's other
    // interface) once it knew the backends' MACs; the stack forwarded the
    // first ones, and every reply (the backends' TCP segmentation offload
    // sends many as one).
    let forwarded = lab.lb.snmp("Ip", "ForwDatagrams");
    assert!(forwarded > 2 * N as u64, "the LB forwarded the replies: {forwarded}");
    if mode == "native" {
        let stats = lab.lb.exec(&["ethtool", "-S", &lab.front]);
        let redirected: u64 = stats.lines().find_map(|l| l.trim().strip_prefix("rx_queue_0_xdp_redirect: ")).unwrap_or_else(|| panic!("{stats}")).parse().expect("a number");
        eprintln!("{mode}: {redirected} packets redirected by XDP, {forwarded} forwarded by the LB's stack");
        assert!(redirected > 4 * N as u64, "XDP sent the client's packets on itself: {redirected}");
    }
}

#[test]
fn nat_end_to_end_native_xdp() {
    if usable("lb nat end to end (native XDP)") {
        nat_end_to_end("native");
    }
}

#[test]
fn nat_end_to_end_generic_xdp() {
    if usable("lb nat end to end (generic XDP)") {
        nat_end_to_end("skb");
    }
}
