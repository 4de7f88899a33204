#!/usr/bin/env python3
"""Compiles the policies in POLDIR with xpolc (LLVM 14 in process, its
modules dumped before and after LLVM's passes through XPOL_LLVM_DUMP), then
the same pre-pass module with opt-N and llc-N of other LLVM versions, into
OUTDIR/POLICY.VARIANT.o for benches/llvm_objects.rs; prints (and writes to
OUTDIR/compile.json) instruction counts, unconditional jumps and compile
times (CPU time).

  compile.py XPOLC POLDIR OUTDIR

Variants: xpolc (the object xpolc wrote: O2 or its long pipeline, then its
likely-fallthrough layout, cpu v3); llvmN (opt-N with xpolc's pass
pipeline, llc-N, cpu v3: no layout pass); llvm19-v4 (the same with
-mcpu=v4); opt14-llc19 (xpolc's optimized and laid-out module, llc-19:
the backend alone); opt14-llc14 (the same through llc-14: must match
xpolc, the check that the external tools reproduce the in-process build)."""
import json, resource, subprocess, sys
from pathlib import Path

xpolc, poldir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
dump = out / "dump"
dump.mkdir(parents=True, exist_ok=True)
VERSIONS = [14, 15, 16, 19]
RUNS = 5  # compile times: the best of RUNS


def timed(cmd, env=None):
    """CPU time (user + system, ms) of the command, the least of RUNS: the
    machine is shared, and CPU time suffers less from the other work on it
    than wall-clock time does."""
    best = None
    for _ in range(RUNS):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        dt = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, cmd))}: {r.stderr[-2000:]}")
        best = dt if best is None else min(best, dt)
    return best * 1e3


def insns(obj):
    """(instruction slots in the program sections, unconditional jumps, conditional jumps) from llvm-objdump-19."""
    d = subprocess.run(["llvm-objdump-19", "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True, check=True).stdout
    slots = gotos = conds = 0
    for line in d.splitlines():
        parts = line.split(":", 1)
        if len(parts) != 2 or not parts[0].strip().isdigit():
            continue
        ins = parts[1].strip()
        slots += 2 if ins.endswith(" ll") else 1
        if ins.startswith("goto") or ins.startswith("gotol"):
            gotos += 1
        elif ins.startswith("if "):
            conds += 1
    return slots, gotos, conds


import os
rows = []
for pol in sorted(poldir.glob("*.xpol")):
    stem = pol.stem
    env = dict(os.environ, XPOL_LLVM_DUMP=str(dump))
    ms = {}
    ms["xpolc"] = timed([xpolc, "build", str(pol), "-o", str(out / f"{stem}.xpolc.o")], env)
    pre, post = dump / f"{stem}.pre.bc", dump / f"{stem}.post.bc"
    passes = (dump / f"{stem}.pre.passes").read_text()
    for n in VERSIONS:
        opt_bc = dump / f"{stem}.opt{n}.bc"
        t_opt = timed([f"opt-{n}", "-mcpu=v3", f"-passes={passes}", str(pre), "-o", str(opt_bc)])
        t_llc = timed([f"llc-{n}", "-mcpu=v3", "-filetype=obj", str(opt_bc), "-o", str(out / f"{stem}.llvm{n}.o")])
        ms[f"llvm{n}"] = (t_opt, t_llc)
        if n == 19:
            # v4 from the start: opt too (the target features reach the IR passes).
            opt4 = dump / f"{stem}.opt19-v4.bc"
            t_opt4 = timed([f"opt-{n}", "-mcpu=v4", f"-passes={passes}", str(pre), "-o", str(opt4)])
            t_llc4 = timed([f"llc-{n}", "-mcpu=v4", "-filetype=obj", str(opt4), "-o", str(out / f"{stem}.llvm19-v4.o")])
            ms["llvm19-v4"] = (t_opt4, t_llc4)
    for n in (14, 19):
        ms[f"opt14-llc{n}"] = (0.0, timed([f"llc-{n}", "-mcpu=v3", "-filetype=obj", str(post), "-o", str(out / f"{stem}.opt14-llc{n}.o")]))
    for variant, t in ms.items():
        s, g, c = insns(out / f"{stem}.{variant}.o")
        size = (out / f"{stem}.{variant}.o").stat().st_size
        row = {"policy": stem, "variant": variant, "insns": s, "gotos": g, "cond_jumps": c, "object_bytes": size}
        if isinstance(t, tuple):
            row.update(opt_ms=round(t[0], 1), llc_ms=round(t[1], 1))
        else:
            row.update(xpolc_ms=round(t, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
(out / "compile.json").write_text(json.dumps(rows, indent=1))
