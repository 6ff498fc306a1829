#!/usr/bin/env bash
# The XDP offload benchmark (scripts/bench.sh --xdp): two network namespaces this script
# creates and always removes, joined by two veth pairs, so every relayed datagram crosses a
# real (virtual) wire twice, as on a host with a NIC:
#
#   load ns: lc0 192.0.2.10      <-> relay ns: xc0 192.0.2.1 (listening)
#   load ns: lp0 198.51.100.20   <-> relay ns: xp0 198.51.100.1 (relay address)
#
# uturn-bench (clients on 192.0.2.10, echo peers on 198.51.100.20) runs in the load ns
# pinned to LOAD_CORE; the server in the relay ns pinned to SERVER_CORE. Same load, same
# run, against:
#   uturn-xdp       uturn with --xdp xc0 --xdp xp0 (native): bound channels relayed by the
#                   kernel after the ChannelBind (the TURN core installs them)
#   uturn-io-uring  the same uturn without --xdp
#   coturn          Debian's turnserver, one relay thread
#   direct          the same load from the clients straight to the peers, no relay (in the
#                   load ns both ends are local, so this baseline skips the veths: the
#                   relay overhead below is an upper bound)
# XDP work is charged to softirq, often in the sender's context, not to the server process:
# compare the relay overhead, machine CPU (all cores, /proc/stat) per relayed packet minus
# the direct run's, and loss / latency at the same offered rate. Then a search for the
# highest rate with < 0.1% loss per server (the load generator's own ceiling is the direct
# run's). Prints the table, keeps the JSON lines. Needs root.
#
# usage: scripts/bench-xdp.sh [--out FILE]
# env: SERVER_CORE (0), LOAD_CORE (1), RATE (20000 round trips/s), ALLOCATIONS (50),
#      SIZE (170), DURATION (5 s), SERVERS (subset of: uturn-xdp uturn-io-uring coturn
#      direct), FIND_MAX (1: also search the highest rate with < 0.1% loss)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --xdp) ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n 2,30p "$0"; exit 0 ;;
        *) echo "bench-xdp.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "bench-xdp.sh: needs root (network namespaces, XDP)" >&2; exit 1; }
command -v turnserver >/dev/null || { echo "bench-xdp.sh: turnserver not found: apt-get install coturn" >&2; exit 1; }

SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
RATE=${RATE:-20000}
ALLOCATIONS=${ALLOCATIONS:-50}
SIZE=${SIZE:-170}
DURATION=${DURATION:-5}
FIND_MAX=${FIND_MAX:-1}
OUT=${OUT:-target/bench-xdp-$(date +%Y%m%d-%H%M%S).jsonl}
read -r -a SERVERS <<<"${SERVERS:-uturn-xdp uturn-io-uring coturn direct}"

cargo build --release --bins --quiet
UTURN=$PWD/target/release/uturn
BENCH=$PWD/target/release/uturn-bench
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

LOAD=uturn-bench-load-$$
RELAY=uturn-bench-relay-$$
SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
cleanup() {
    stop_server
    ip netns del "$LOAD" 2>/dev/null || true
    ip netns del "$RELAY" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

ip netns add "$LOAD"
ip netns add "$RELAY"
for ns in "$LOAD" "$RELAY"; do ip -n "$ns" link set lo up; done
for pair in "xc0 lc0 192.0.2.1 192.0.2.10" "xp0 lp0 198.51.100.1 198.51.100.20"; do
    read -r rdev ldev rip lip <<<"$pair"
    ip -n "$RELAY" link add "$rdev" type veth peer name "$ldev" netns "$LOAD"
    ip -n "$RELAY" addr add "$rip/24" dev "$rdev"
    ip -n "$LOAD" addr add "$lip/24" dev "$ldev"
    ip -n "$RELAY" link set "$rdev" up
    ip -n "$LOAD" link set "$ldev" up
    ip netns exec "$RELAY" sysctl -qw "net.ipv4.conf.$rdev.forwarding=1"
    # Full checksums on the wire, as from a NIC; GRO on so the veth takes XDP_REDIRECTed frames.
    ip netns exec "$LOAD" ethtool -K "$ldev" tx off gro on >/dev/null
done
# One socket per allocation on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

wait_listening() {
    for _ in $(seq 100); do
        if ip netns exec "$RELAY" ss -Hlun "sport = :3478" | grep -q .; then return 0; fi
        sleep 0.1
    done
    echo "bench-xdp.sh: nothing listens on 3478" >&2
    return 1
}

start_server() { # name
    local log="target/bench-xdp-server-$1.log"
    local common=(--listening-ip 192.0.2.1 --relay-ip 198.51.100.1 --listening-port 3478
        --min-port 20000 --max-port 59999 --realm example.org --user alice:secret
        --lt-cred-mech --allowed-peer-ip 198.51.100.20)
    case "$1" in
        uturn-xdp|uturn-io-uring)
            local xdp=()
            [ "$1" = uturn-xdp ] && xdp=(--xdp xc0 --xdp xp0 --xdp-mode native)
            ip netns exec "$RELAY" taskset -c "$SERVER_CORE" "$UTURN" --cores "$SERVER_CORE" \
                --no-tcp --no-tls "${common[@]}" "${xdp[@]}" --log-level info >"$log" 2>&1 &
            ;;
        coturn)
            ip netns exec "$RELAY" taskset -c "$SERVER_CORE" turnserver -n -m 1 "${common[@]}" \
                --no-tcp --no-tls --no-dtls --no-tcp-relay --no-cli --log-file "$log" \
                --pidfile "target/bench-xdp-coturn.pid" >/dev/null 2>&1 &
            ;;
        direct) return 0 ;;
    esac
    SERVER_PID=$!
    wait_listening
    if [ "$1" = uturn-xdp ] && ! grep -q "XDP offload attached" "$log"; then
        echo "bench-xdp.sh: uturn did not attach XDP; see $log" >&2
        exit 1
    fi
}

run() { # server extra...
    local server=$1
    shift
    local mode=()
    [ "$server" = direct ] && mode=(--direct)
    start_server "$server"
    local pid=()
    [ -n "$SERVER_PID" ] && pid=(--server-pid "$SERVER_PID")
    echo "== $server: $ALLOCATIONS allocations, $SIZE bytes $*" >&2
    if ! timeout 300 ip netns exec "$LOAD" "$BENCH" relay "${mode[@]}" --server 192.0.2.1:3478 \
        --client-ips 192.0.2.10 --peer-ip 198.51.100.20 --user alice:secret \
        --allocations "$ALLOCATIONS" --size "$SIZE" --duration "$DURATION" --warmup 1 \
        --cores "$LOAD_CORE" "${pid[@]}" --label "$server" --json --quiet "$@" >>"$OUT"; then
        echo "bench-xdp.sh: $server failed" >&2
    fi
    stop_server
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for s in "${SERVERS[@]}"; do run "$s" --rate "$RATE"; done
if [ "$FIND_MAX" = 1 ]; then
    for s in "${SERVERS[@]}"; do run "$s" --rate "$RATE" --find-max --search-budget 40; done
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def table(kind_filter, title):
    sel = [r for r in rows if kind_filter(r)]
    if not sel:
        return
    direct = next((r["machine_us_per_packet"] for r in sel if r["label"] == "direct"), None)
    coturn = None
    for r in sel:
        if r["label"] == "coturn" and direct is not None and r["machine_us_per_packet"] is not None:
            coturn = r["machine_us_per_packet"] - direct
    print(f"\n{title}")
    print("| server | relayed pps | loss % | p50 µs | p99 µs | server CPU µs/pkt | machine µs/pkt | relay overhead µs/pkt | x coturn |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sel:
        m = r["machine_us_per_packet"]
        o = m - direct if m is not None and direct is not None and r["label"] != "direct" else None
        x = f"{o / coturn:.2f}" if o is not None and coturn else "-"
        f = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"
        print(f"| {r['label']} | {r['relayed_pps']:.0f} | {r['loss_pct']:.3f} | {r['p50_us']} | {r['p99_us']} | {f(r['cpu_us_per_packet'])} | {f(m)} | {f(o)} | {x} |")
table(lambda r: r["kind"] == "fixed", "fixed rate")
table(lambda r: r["kind"] == "best", "highest rate with < 0.1% loss (direct: the generator's own ceiling)")
EOF
echo "raw: $OUT" >&2
