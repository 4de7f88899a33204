#!/usr/bin/env python3
"""Writes the policies of the LLVM version comparison (issue 17) into DIR:
the ref-fw firewall as benches/ref_fw.rs builds it (set and const
variants), two load-balancer cases as benches/lb_path.rs builds them, the
ClassBench fw1-1000 rules as benches/analysis.rs writes them, and the
examples. Usage: policies.py ROOT DIR"""
import shutil, sys
from pathlib import Path

root, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)

def ref_fw(n, const):
    rules = "\n".join(l for l in (root / f"bench/ref-fw/ref-fw-{n}.xpol").read_text().splitlines() if l.startswith("xdp"))
    lst = root / f"bench/ref-fw/blocklist-{n}.txt"
    if const:
        decl = "const blocklist = { " + ", ".join(l.strip() for l in lst.read_text().splitlines() if l.strip()) + " }"
    else:
        decl = f'set blocklist: cidr = file("{lst}")'
    (out / f"ref-fw-{n}-{'const' if const else 'set'}.xpol").write_text(f"{decl}\n{rules}\n")

def lb(name, delivery):
    backends = ", ".join(f"198.18.1.{10 + i}" for i in range(10))
    (out / f"lb-{name}.xpol").write_text(f"pool web = {{ {backends} }}\nxdp /ip.dst == 198.18.0.100 && tcp.dport == 80/ {{ lb(web, {delivery}) }}\n")

def classbench_rule(line):
    f = dict(p.split("=", 1) for p in line.split())
    conds = []
    for field, key in (("ip4.src", "src"), ("ip4.dst", "dst")):
        conds.append(f"{field} in {f[key]}" if f[key] != "0.0.0.0/0" else "ip.version == 4")
    proto = f["proto"]
    l4 = {"6": "tcp", "17": "udp"}.get(proto)
    if proto != "any":
        conds.append(f"ip.proto == {proto}")
    if l4:
        for field in ("sport", "dport"):
            lo, hi = f[field].split("-")
            if (lo, hi) != ("0", "65535"):
                conds.append(f"{l4}.{field} == {lo}" if lo == hi else f"{l4}.{field} in {lo}..{hi}")
    dedup = [c for i, c in enumerate(conds) if i == 0 or conds[i - 1] != c]
    return f"xdp /{' && '.join(dedup)}/ {{ {f['action']} }}"

ref_fw(10, False); ref_fw(1000, False); ref_fw(10, True); ref_fw(1000, True)
lb("ipip4", "encap: ipip, src: 198.18.0.1")
lb("nat4", "nat, port: 8080")
rules = [classbench_rule(l) for l in (root / "bench/classbench/fw1-1000.rules").read_text().splitlines() if l.strip()]
(out / "classbench-fw1-1000.xpol").write_text("\n".join(rules) + "\n")
for e in ("firewall", "edge", "lb", "ratelimit"):
    shutil.copy(root / f"examples/{e}.xpol", out / f"example-{e}.xpol")
