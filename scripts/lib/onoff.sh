# Sourced by scripts/metrics-bench.sh and scripts/stats-bench.sh: the forwarding cost of one
# uturn feature, off vs on, end to end. The same uturn-bench load against uturn without and
# with the feature, alternating ROUNDS times (off, on, off, on, ...); prints server CPU per
# relayed packet for each run, the means and the ratio. Loopback only.
#
# The sourcing script sets ONOFF_NAME (rows are labelled NAME-off and NAME-on; JSON lines in
# target/NAME-bench.jsonl, server logs beside them), defines onoff_args MODE (fills the
# array ONOFF_ARGS with uturn's extra options for MODE, "on" or "off"), may define the hooks
# onoff_up MODE (uturn listens: e.g. start a scraper), onoff_down MODE (before uturn stops)
# and onoff_cleanup (on exit, also on failure), then calls onoff_main.
# env: ROUNDS (3), ALLOCS (1000), RATE (20000), DURATION (5), SERVER_CORE (0), LOAD_CORE (1),
#      SKIP_BUILD=1 to use the release binaries as they are

ROUNDS=${ROUNDS:-3}
ALLOCS=${ALLOCS:-1000}
RATE=${RATE:-20000}
DURATION=${DURATION:-5}
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
ONOFF_PID=""
ONOFF_ARGS=()

declare -F onoff_up >/dev/null || onoff_up() { :; }
declare -F onoff_down >/dev/null || onoff_down() { :; }
declare -F onoff_cleanup >/dev/null || onoff_cleanup() { :; }

# A free port on 127.0.0.1: free_port [DGRAM|STREAM].
free_port() {
    python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_${1:-DGRAM}); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}

onoff_stop_server() {
    if [ -n "$ONOFF_PID" ]; then
        kill -TERM "$ONOFF_PID" 2>/dev/null || true
        wait "$ONOFF_PID" 2>/dev/null || true
    fi
    ONOFF_PID=""
}

onoff_exit() {
    onoff_stop_server
    onoff_cleanup
}

# Waits until uturn (ONOFF_PID) listens on UDP port $1, at most 10 s.
onoff_wait_listening() {
    for _ in $(seq 100); do
        if ss -Hlun "sport = :$1" | grep -q .; then return 0; fi
        kill -0 "$ONOFF_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "$ONOFF_NAME-bench: uturn does not listen on $1; see target/$ONOFF_NAME-bench-*.log" >&2
    return 1
}

onoff_run() { # on|off
    local port
    port=$(free_port)
    ONOFF_ARGS=()
    onoff_args "$1"
    taskset -c "$SERVER_CORE" target/release/uturn --cores "$SERVER_CORE" --listening-ip 127.0.0.1 \
        --relay-ip 127.0.0.1 --listening-port "$port" --min-port 20000 --max-port 59999 \
        --realm example.org --user alice:secret --allow-loopback-peers --log-level warn \
        "${ONOFF_ARGS[@]}" >"target/$ONOFF_NAME-bench-$1.log" 2>&1 &
    ONOFF_PID=$!
    onoff_wait_listening "$port"
    onoff_up "$1"
    taskset -c "$LOAD_CORE" target/release/uturn-bench relay --server "127.0.0.1:$port" \
        --allocations "$ALLOCS" --rate "$RATE" --duration "$DURATION" --cores "$LOAD_CORE" \
        --server-pid "$ONOFF_PID" --label "$ONOFF_NAME-$1" --json --quiet
    onoff_down "$1"
    onoff_stop_server
}

onoff_main() {
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    [ -n "${SKIP_BUILD:-}" ] || cargo build --release --bins --quiet
    local out="target/$ONOFF_NAME-bench.jsonl"
    : >"$out"
    for _ in $(seq "$ROUNDS"); do
        onoff_run off >>"$out"
        onoff_run on >>"$out"
    done
    python3 - "$out" "$ONOFF_NAME" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
name = sys.argv[2]
for r in rows:
    print(f'{r["label"]:<12} rt/s {r["round_trips_per_s"]:>8.0f} loss {r["loss_pct"]:.3f}% cpu/pkt {r["cpu_us_per_packet"]} us')
def mean(label):
    v = [r["cpu_us_per_packet"] for r in rows if r["label"] == label and r["cpu_us_per_packet"]]
    return sum(v) / len(v) if v else None
off, on = mean(f"{name}-off"), mean(f"{name}-on")
if off and on:
    print(f"\nmean cpu us/pkt: off {off:.3f}, on {on:.3f}: on/off = {on / off:.3f} ({(on / off - 1) * 100:+.1f}%)")
PY
}

trap onoff_exit EXIT INT TERM
