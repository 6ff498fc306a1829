#!/usr/bin/env bash
# Forwarding cost with the Prometheus endpoint off vs on and scraped every second, end to
# end: the same uturn-bench load against uturn without --prometheus and with it (a scraper
# GETs /metrics once a second for the whole run), alternating ROUNDS times; prints server
# CPU per relayed packet for each and the ratio. Loopback only.
#
# usage: scripts/metrics-bench.sh   env: ROUNDS (3), ALLOCS (1000), RATE (20000), DURATION (5)
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
PID=""
SCRAPER=""
cleanup() {
    [ -n "$SCRAPER" ] && kill "$SCRAPER" 2>/dev/null
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    true
}
trap cleanup EXIT INT TERM

run() { # on|off
    local port prom extra=()
    port=$(free_port)
    prom=$(free_port STREAM)
    [ "$1" = on ] && extra=(--prometheus --prometheus-port "$prom")
    taskset -c "$SERVER_CORE" target/release/uturn --cores "$SERVER_CORE" --listening-ip 127.0.0.1 \
        --relay-ip 127.0.0.1 --listening-port "$port" --min-port 20000 --max-port 59999 \
        --realm example.org --user alice:secret --allow-loopback-peers --log-level warn "${extra[@]}" \
        >"target/metrics-bench-$1.log" 2>&1 &
    PID=$!
    sleep 0.5
    if [ "$1" = on ]; then
        (while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$prom/metrics"; done) &
        SCRAPER=$!
    fi
    taskset -c "$LOAD_CORE" target/release/uturn-bench relay --server "127.0.0.1:$port" \
        --allocations "$ALLOCS" --rate "$RATE" --duration "$DURATION" --cores "$LOAD_CORE" \
        --server-pid "$PID" --label "metrics-$1" --json --quiet
    if [ -n "$SCRAPER" ]; then kill "$SCRAPER" 2>/dev/null || true; SCRAPER=""; fi
    kill -TERM "$PID"
    wait "$PID" 2>/dev/null || true
    PID=""
}

OUT=target/metrics-bench.jsonl
: > "$OUT"
for _ in $(seq "$ROUNDS"); do
    run off >>"$OUT"
    run on >>"$OUT"
done
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    print(f'{r["label"]:<12} rt/s {r["round_trips_per_s"]:>8.0f} loss {r["loss_pct"]:.3f}% cpu/pkt {r["cpu_us_per_packet"]} us')
def mean(label):
    v = [r["cpu_us_per_packet"] for r in rows if r["label"] == label and r["cpu_us_per_packet"]]
    return sum(v) / len(v) if v else None
off, on = mean("metrics-off"), mean("metrics-on")
if off and on:
    print(f"\nmean cpu us/pkt: off {off:.3f}, on {on:.3f}: on/off = {on / off:.3f} ({(on / off - 1) * 100:+.1f}%)")
PY
