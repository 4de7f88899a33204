#!/usr/bin/env bash
# Bounded fuzzing, as CI runs it (.ci/run calls this after the tests): builds
# the fuzz targets and runs each for a fixed time from the corpus kept in
# fuzz/corpus/<target>. Any finding (panic, LLVM abort, timeout, memory
# blow-up) fails the script; libFuzzer prints the input and cargo-fuzz how to
# reproduce it (the input is saved under fuzz/artifacts/<target>/).
#
#   fuzz/run-ci.sh [SECONDS_PER_TARGET]     (default: $XPOL_FUZZ_SECONDS or 60)
#
# New inputs the run finds go to fuzz/target/corpus-work/, not into the repo;
# see README.md ("Fuzzing") for how to fold them into the kept corpus.
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-${XPOL_FUZZ_SECONDS:-60}}
# cargo-fuzz passes nightly -Z flags to rustc; only stable is installed.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# No sanitizer: the fuzzed crates are safe Rust (what ASan would watch is
# libLLVM, which is not instrumented anyway); debug assertions on, so that
# integer overflow panics.
flags=(-O -a -s none)
cargo fuzz build "${flags[@]}"

run() {
    local target=$1
    shift
    local work=target/corpus-work/$target
    mkdir -p "$work"
    echo "fuzz: $target for ${secs}s"
    cargo fuzz run "${flags[@]}" "$target" "$work" "corpus/$target" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 "$@"
}

run parse -dict=xpol.dict -max_len=4096
run compile -dict=xpol.dict -max_len=4096
run generated -max_len=512
run runtime_inputs -max_len=16384
echo "fuzz: no findings"
