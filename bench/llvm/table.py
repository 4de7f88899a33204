#!/usr/bin/env python3
"""The markdown tables of BENCHMARKS.md "LLVM versions (issue 17)" from
OUTDIR/compile.json (bench/llvm/compile.py) and OUTDIR/results.json
(benches/llvm_objects.rs). Usage: table.py OUTDIR"""
import json, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
comp = json.loads((out / "compile.json").read_text())
res = json.loads((out / "results.json").read_text())
VARIANTS = ["xpolc", "opt14-llc14", "llvm14", "llvm15", "llvm16", "llvm19", "llvm19-v4", "opt14-llc19"]
policies = sorted({r["policy"] for r in comp})
c = {(r["policy"], r["variant"]): r for r in comp}
o = {(r["policy"], r["variant"]): r for r in res["objects"]}
failed = {f.split(":")[0] for f in res["failed"]}

def cell(p, v, f):
    if f"{p}.{v}" in failed:
        return "rejected"
    return f(p, v) if (p, v) in o or (p, v) in c else "-"

print("Per packet: kernel run time per run (BPF statistics), median over the rounds of the ratio to `xpolc` within each round.\n")
print("| policy, packet | " + " | ".join(VARIANTS[1:]) + " | xpolc ns |")
print("|---|" + "---:|" * len(VARIANTS))
for p in policies:
    base = o.get((p, "xpolc"), {}).get("samples", {})
    for pkt, bs in base.items():
        row = []
        for v in VARIANTS[1:]:
            s = o.get((p, v), {}).get("samples", {}).get(pkt)
            row.append("rejected" if f"{p}.{v}" in failed else (f"{statistics.median([x / y for x, y in zip(s, bs)]):.3f}" if s else "-"))
        print(f"| {p}, {pkt} | " + " | ".join(row) + f" | {statistics.median(bs):.1f} |")

print("\nCode: instructions in the object (ld_imm64 counted twice) / unconditional jumps (`goto`) / instructions the kernel's verifier processed (all programs of the object).\n")
print("| policy | " + " | ".join(VARIANTS[1:] if False else VARIANTS) + " |")
print("|---|" + "---:|" * len(VARIANTS))
for p in policies:
    row = []
    for v in VARIANTS:
        cr = c.get((p, v))
        ver = o.get((p, v), {}).get("verified_insns")
        row.append(f"{cr['insns']} / {cr['gotos']} / {'rejected' if f'{p}.{v}' in failed else ver}" if cr else "-")
    print(f"| {p} | " + " | ".join(row) + " |")

print("\nCompile: CPU time (user + system, least of 5 runs) of `opt-N` + `llc-N` on the same pre-pass module (process start and reading the bitcode included), ms; `xpolc` is the whole `xpolc build` process with LLVM 14 in it (parsing, checking, lowering, LLVM, budgets).\n")
cv = ["llvm14", "llvm15", "llvm16", "llvm19", "llvm19-v4"]
print("| policy | xpolc build | " + " | ".join(cv) + " | llvm19 / llvm14 |")
print("|---|---:|" + "---:|" * (len(cv) + 1))
for p in policies:
    t = {v: c[(p, v)]["opt_ms"] + c[(p, v)]["llc_ms"] for v in cv}
    print(f"| {p} | {c[(p, 'xpolc')]['xpolc_ms']:.0f} | " + " | ".join(f"{t[v]:.0f} ({c[(p, v)]['opt_ms']:.0f} + {c[(p, v)]['llc_ms']:.0f})" for v in cv) + f" | {t['llvm19'] / t['llvm14']:.2f} |")
