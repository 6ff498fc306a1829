#!/usr/bin/env bash
# Forwarding cost with the Redis stats thread on vs off, end to end: the same uturn-bench
# load against uturn without Redis and with a redis-server of this script's own (with
# --stats-interval 1 so every allocation publishes traffic every second, far more than
# coturn's every-4096-packets), alternating ROUNDS times; prints server CPU per relayed
# packet for each and the ratio. Loopback only.
#
# usage: scripts/stats-bench.sh     env: ROUNDS (3), ALLOCS (1000), RATE (20000), DURATION (5)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
ALLOCS=${ALLOCS:-1000}
RATE=${RATE:-20000}
DURATION=${DURATION:-5}
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
free_port() { python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_${1:-DGRAM}); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --bins --quiet
REDIS_PORT=$(free_port STREAM)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
REDIS_PID=$!
PID=""
cleanup() {
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

run() { # on|off
    local port extra=()
    port=$(free_port)
    [ "$1" = on ] && extra=(--redis-url "redis://127.0.0.1:$REDIS_PORT/0" --stats-interval 1)
    taskset -c "$SERVER_CORE" target/release/uturn --cores "$SERVER_CORE" --listening-ip 127.0.0.1 \
        --relay-ip 127.0.0.1 --listening-port "$port" --min-port 20000 --max-port 59999 \
        --realm example.org --user alice:secret --allow-loopback-peers --log-level warn "${extra[@]}" \
        >"target/stats-bench-$1.log" 2>&1 &
    PID=$!
    sleep 0.5
    taskset -c "$LOAD_CORE" target/release/uturn-bench relay --server "127.0.0.1:$port" \
        --allocations "$ALLOCS" --rate "$RATE" --duration "$DURATION" --cores "$LOAD_CORE" \
        --server-pid "$PID" --label "stats-$1" --json --quiet
    kill -TERM "$PID"
    wait "$PID" 2>/dev/null || true
    PID=""
}

OUT=target/stats-bench.jsonl
: > "$OUT"
for _ in $(seq "$ROUNDS"); do
    run off >>"$OUT"
    run on >>"$OUT"
done
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    print(f'{r["label"]:<10} rt/s {r["round_trips_per_s"]:>8.0f} loss {r["loss_pct"]:.3f}% cpu/pkt {r["cpu_us_per_packet"]} us')
def mean(label):
    v = [r["cpu_us_per_packet"] for r in rows if r["label"] == label and r["cpu_us_per_packet"]]
    return sum(v) / len(v) if v else None
off, on = mean("stats-off"), mean("stats-on")
if off and on:
    print(f"\nmean cpu us/pkt: off {off:.3f}, on {on:.3f}: on/off = {on / off:.3f} ({(on / off - 1) * 100:+.1f}%)")
PY
