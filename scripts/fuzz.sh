#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a number of executions, one after another.
#
#   scripts/fuzz.sh              # 10,000,000 executions per target
#   scripts/fuzz.sh 100000       # a quick pass
#   FUZZ_RUNS=1000000 scripts/fuzz.sh
#   FUZZ_TARGETS="stun_message channel_data" scripts/fuzz.sh 100000
#
# Starts from the committed seeds in fuzz/corpus/<target>/ but writes what the fuzzer finds
# to a scratch directory (FUZZ_WORK, default /tmp/uturn-fuzz), so the seeds stay as they are.
# Crashes land in fuzz/artifacts/<target>/ (ignored by git). Exits non-zero if any target
# crashed.
#
# Only a stable toolchain is needed: cargo-fuzz passes nightly-only flags, so the build runs
# with RUSTC_BOOTSTRAP=1. Built without a sanitizer (-s none): the code under test has no
# `unsafe`, and this roughly doubles the executions per second; debug assertions and
# overflow checks stay on (cargo-fuzz's default).
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-${FUZZ_RUNS:-10000000}}"
targets="${FUZZ_TARGETS:-stun_message channel_data core_datagrams stream_framing tls_records}"
work="${FUZZ_WORK:-/tmp/uturn-fuzz}"
max_len="${FUZZ_MAX_LEN:-1500}"
sanitizer="${FUZZ_SANITIZER:-none}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
for t in $targets; do
    (cd fuzz && cargo fuzz build -s "$sanitizer" "$t")
done

failed=0
summary=()
for t in $targets; do
    mkdir -p "$work/corpus-$t" "$work/logs"
    log="$work/logs/$t.log"
    echo "fuzz.sh: $t: $runs executions (log: $log)"
    start=$(date +%s)
    set +e
    (cd fuzz && nice -n 10 cargo fuzz run -s "$sanitizer" "$t" \
        "$work/corpus-$t" "corpus/$t" -- \
        -runs="$runs" -max_len="$max_len" -print_final_stats=1) >"$log" 2>&1
    rc=$?
    set -e
    secs=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ "$rc" -eq 0 ]; then
        outcome="no crash"
    else
        outcome="CRASHED (exit $rc; see $log and fuzz/artifacts/$t/)"
        failed=1
    fi
    line="$t: ${execs:-?} executions in ${secs}s: $outcome"
    echo "fuzz.sh: $line"
    summary+=("$line")
done

echo
echo "fuzz.sh: summary"
printf '  %s\n' "${summary[@]}"
exit "$failed"
