#!/usr/bin/env bash
# A/B of uturn (io_uring backend) set-ups under one uturn-bench load, interleaved: A, B, A,
# B, ... ROUNDS times, each a fresh server on SERVER_CORE (one shard) and the load on
# LOAD_CORE. Per run: server CPU per relayed packet, round-trip p50/p99, loss, and from
# `perf stat` on the server process the system calls (raw_syscalls:sys_enter) and context
# switches per relayed packet. Loopback only.
#
# usage: scripts/ab.sh [--out FILE] -- 'A env/args' 'B env/args' [...]
#   each variant is "ENV=V ... -- uturn args" or just "uturn args"; e.g.
#   scripts/ab.sh -- 'UTURN_TEST_FIXED_FILES=0 --' ''
# env: ROUNDS (3), LOAD ("--allocations 50 --size 170 --rate 20000"), DURATION (5),
#      SERVER_CORE (0), LOAD_CORE (1), PERF (1: count system calls with perf stat),
#      RECORD (0; 1: also `perf record -g` the server, target/ab-record-ROUND-VARIANT.data)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/ab-$(date +%Y%m%d-%H%M%S).jsonl
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n 2,13p "$0"; exit 0 ;;
        *) echo "ab.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ $# -ge 1 ] || { echo "ab.sh: give the variants after --" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
LOAD=${LOAD:---allocations 50 --size 170 --rate 20000}
DURATION=${DURATION:-5}
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
PERF=${PERF:-1}
RECORD=${RECORD:-0}
if [ "$PERF" = 1 ] && ! command -v perf >/dev/null; then
    echo "ab.sh: perf not found (apt-get install linux-perf), or PERF=0" >&2; exit 1
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --bins --quiet
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
PORT=$(python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")

SERVER_PID="" PERF_PID="" RECORD_PID=""
cleanup() {
    [ -n "$PERF_PID" ] && kill -INT "$PERF_PID" 2>/dev/null || true
    [ -n "$RECORD_PID" ] && kill -INT "$RECORD_PID" 2>/dev/null || true
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    SERVER_PID="" PERF_PID="" RECORD_PID=""
}
trap cleanup EXIT INT TERM

run() { # round index variant
    local round=$1 index=$2 variant=$3 envs=() args=()
    if [[ "$variant" == *--* ]]; then
        read -r -a envs <<<"${variant%%--*}"
        read -r -a args <<<"${variant#*--}"
    else
        read -r -a args <<<"$variant"
    fi
    env "${envs[@]}" taskset -c "$SERVER_CORE" target/release/uturn --backend io-uring \
        --cores "$SERVER_CORE" --no-tcp --no-tls --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 \
        --listening-port "$PORT" --min-port 20000 --max-port 59999 --realm example.org \
        --user alice:secret --lt-cred-mech --allow-loopback-peers --log-level warn \
        "${args[@]}" >"target/ab-server-$index.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do ss -Hluna "sport = :$PORT" | grep -q . && break; sleep 0.1; done
    sleep 0.3
    local perf_out="target/ab-perf-$index.txt"
    if [ "$PERF" = 1 ]; then
        # Started after set-up and warm-up (1 s), stopped when the load ends.
        ( sleep 2.5; exec perf stat -e raw_syscalls:sys_enter,context-switches -p "$SERVER_PID" \
            -x, -o "$perf_out" -- sleep "$((DURATION - 1))" ) &
        PERF_PID=$!
    fi
    if [ "$RECORD" = 1 ]; then
        ( sleep 2.5; exec perf record -g -p "$SERVER_PID" -o "target/ab-record-$round-$index.data" \
            -- sleep "$((DURATION - 1))" ) >/dev/null 2>&1 &
        RECORD_PID=$!
    fi
    # shellcheck disable=SC2086
    local line
    line=$(target/release/uturn-bench relay --server "127.0.0.1:$PORT" --user alice:secret \
        $LOAD --duration "$DURATION" --warmup 1 --cores "$LOAD_CORE" --server-pid "$SERVER_PID" \
        --label "$index" --json --quiet)
    local sys=null cs=null
    if [ "$PERF" = 1 ]; then
        wait "$PERF_PID" 2>/dev/null || true
        PERF_PID=""
        sys=$(awk -F, '/raw_syscalls:sys_enter/{print $1}' "$perf_out")
        cs=$(awk -F, '/context-switches/{print $1}' "$perf_out")
    fi
    if [ -n "$RECORD_PID" ]; then wait "$RECORD_PID" 2>/dev/null || true; RECORD_PID=""; fi
    echo "${line%\}},\"variant\":\"$variant\",\"perf_s\":$((DURATION - 1)),\"syscalls\":${sys:-null},\"ctx_switches\":${cs:-null},\"load\":\"$(cut -d' ' -f1 /proc/loadavg)\"}" >>"$OUT"
    cleanup
}

for round in $(seq "$ROUNDS"); do
    i=0
    for variant in "$@"; do
        echo "== round $round, variant $i: '$variant'" >&2
        run "$round" "$i" "$variant"
        i=$((i + 1))
    done
done

python3 - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| variant | rt/s | loss % | p50 µs | p99 µs | cpu µs/pkt | syscalls/pkt | ctx sw/pkt | load |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    pkts = r["relayed_pps"] * r["perf_s"]
    sc = "-" if r["syscalls"] is None else f'{r["syscalls"] / pkts:.3f}'
    cs = "-" if r["ctx_switches"] is None else f'{r["ctx_switches"] / pkts:.3f}'
    print(f'| `{r["variant"] or "(default)"}` | {r["round_trips_per_s"]:.0f} | {r["loss_pct"]:.3f} | '
          f'{r["p50_us"]} | {r["p99_us"]} | {r["cpu_us_per_packet"]:.2f} | {sc} | {cs} | {r["load"]} |')
EOF
echo "raw: $OUT" >&2
