#!/usr/bin/env bash
# The XDP offload benchmark (scripts/bench.sh --xdp): three network namespaces this script
# creates and always removes, joined by veth pairs, so that every datagram, relayed or not,
# crosses a real (virtual) wire between namespaces, as between hosts with NICs:
#
#   client ns: lc0 192.0.2.10    <-> relay ns: xc0 192.0.2.1    (server listens here)
#   relay ns:  xp0 198.51.100.1  <-> peer ns:  lp0 198.51.100.20 (relay address -> peers)
#   client ns: dc0 203.0.113.10  <-> peer ns:  dp0 203.0.113.20 (the direct link)
#
# uturn-bench runs in the client ns pinned to LOAD_CORE; its echo peers are opened in the
# peer ns (--peer-netns), same process and core. The server runs in the relay ns pinned to
# SERVER_CORE. Same load, same run, against:
#   uturn-xdp       uturn --xdp xc0 --xdp xp0 (native): bound channels relayed by the kernel
#                   after the ChannelBind (the TURN core installs them)
#   uturn-xdp-generic  the same with --xdp-mode generic: on veth, native XDP copies each
#                   frame from a local sender (its skb lacks XDP's headroom) and the receiving
#                   veth rebuilds an skb from the redirected frame; generic mode runs on the
#                   skb itself (a head reallocation instead) and transmits it as an skb
#   uturn-io-uring  the same uturn without --xdp
#   coturn          Debian's turnserver, one relay thread
#   direct          the baseline: the same datagrams (ChannelData-sized) from the clients
#                   straight to the peers over the direct link: per packet one send, one
#                   veth crossing, one receive, no relay. A relayed packet costs that plus
#                   the relay: a second veth crossing and the relay's receive, work and send.
#   routed          (informative) the same datagrams from the clients to the peers through
#                   the relay ns by the kernel's IP forwarding (no relay process, no XDP):
#                   the same two veth crossings as a relayed packet; its overhead over direct
#                   is what the second hop and plain routing cost: the floor for any relay
#
# Where the relay ns's receive work runs. NAPI=softirq (the default): no NAPI on xc0/xp0
# without XDP, and all receive work, XDP included, in softirq on the sending core (a veth
# delivers in the sender's context), that is on LOAD_CORE for every packet the generator
# sends or its peers echo. On veth, native XDP costs the load core ~2 µs more per packet
# than generic (veth NAPI, copy of each locally sent frame into a page for headroom, skb
# rebuilt from the redirected frame, GRO). While uturn-bench paced with epoll's millisecond
# timeout (`--pace-ms`), it sent in bursts of ~10 at this rate and that cost queued into the
# latency; it now paces with a timer. NAPI=threaded: the relay ns's veths (xc0, xp0) have
# GRO on, so every row receives there through NAPI, and threaded NAPI, with the kernel's
# NAPI threads (napi/xc0-N, napi/xp0-N) pinned to SERVER_CORE: whatever the relay ns
# receives (XDP, forwarding, the socket path up to the server) runs on the relay's core, in
# parallel with the load generator, as a NIC's interrupt and NAPI poll would run on the
# relay host's CPUs, at the price of waking those threads across cores. Same set-up for
# every row (coturn and io_uring too); the direct row does not cross the relay ns.
# benches/RESULTS.md has the measurements of both.
#
# Relay overhead per relayed packet = CPU per packet of a relayed run minus the direct run's
# (each round trip counts as two packets in both); "over routed" = minus the routed run's
# instead: the relay's cost beyond the same two veth crossings (which, with NAPI=threaded,
# include waking the NAPI threads from the other core every few packets at this rate). Two
# CPU figures, both over exactly the measured window:
#   machine    all cores from /proc/stat: everything, wherever the kernel did it (XDP runs
#              in softirq or in the NAPI threads, not in the server), but also every other
#              process on the machine: exact only on a quiet machine
#   accounted  uturn-bench's process (clients and peers), the server's process, the
#              ksoftirqd threads and the NAPI threads: with tick-based CPU accounting
#              softirq work is charged to the task it interrupted, so this is the run's own
#              share of "machine", which other tenants do not change (check
#              /proc/config.gz or /boot/config-*: without CONFIG_IRQ_TIME_ACCOUNTING; with
#              it, use "machine" on a quiet machine)
# The fixed-rate runs repeat ROUNDS times, servers interleaved; the table shows medians.
# Then a search for the highest rate with < 0.1% loss per server; the direct run's is the
# load generator's own ceiling (with NAPI=softirq and XDP, the relaying also runs on the
# load core, in softirq after each send). Prints the tables, keeps the JSON lines. Needs
# root.
#
# usage: scripts/bench-xdp.sh [--out FILE]
# env: SERVER_CORE (0), LOAD_CORE (1), RATE (10000 round trips/s: 20,000 relayed packets/s,
#      well below coturn's ceiling, so that every relay runs without loss), ALLOCATIONS (50),
#      SIZE (170), DURATION (5 s), ROUNDS (3), SERVERS (subset of: uturn-xdp
#      uturn-xdp-generic uturn-io-uring coturn direct routed), FIND_MAX (1: also search the
#      highest rate with < 0.1% loss),
#      SEARCH_BUDGET (40 s per server), SKIP_BUILD=1 (use the release binaries as they are),
#      NAPI (softirq (default) or threaded: where the relay ns's receive work runs, above),
#      CHRT ("chrt POLICY PRIORITY", e.g. "chrt -f 10": a prefix for the server and the load
#      generator, and the policy given to the relay ns's NAPI threads, so that other
#      tenants of a shared machine cannot take the cores from a run; empty by default),
#      RECORD=1 (keep a `perf record -g` of LOAD_CORE and SERVER_CORE for RECORD_SECONDS (1.5)
#      in the middle of each fixed-rate run: target/bench-xdp-record-N-SERVER.data)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --xdp) ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n "2,/^set -euo pipefail/{/^set /!p}" "$0"; exit 0 ;;
        *) echo "bench-xdp.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "bench-xdp.sh: needs root (network namespaces, XDP)" >&2; exit 1; }
command -v turnserver >/dev/null || { echo "bench-xdp.sh: turnserver not found: apt-get install coturn" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench-xdp.sh: python3 is needed for the table" >&2; exit 1; }

SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
RATE=${RATE:-10000}
ALLOCATIONS=${ALLOCATIONS:-50}
SIZE=${SIZE:-170}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
FIND_MAX=${FIND_MAX:-1}
SEARCH_BUDGET=${SEARCH_BUDGET:-40}
NAPI=${NAPI:-softirq}
read -r -a CHRT <<<"${CHRT:-}"
RECORD=${RECORD:-0}
RECORD_SECONDS=${RECORD_SECONDS:-1.5}
case "$NAPI" in threaded|softirq) ;; *) echo "bench-xdp.sh: NAPI is threaded or softirq" >&2; exit 2 ;; esac
OUT=${OUT:-target/bench-xdp-$(date +%Y%m%d-%H%M%S).jsonl}
read -r -a SERVERS <<<"${SERVERS:-uturn-xdp uturn-xdp-generic uturn-io-uring coturn direct routed}"

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bins --quiet
UTURN=$PWD/target/release/uturn
BENCH=$PWD/target/release/uturn-bench
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

CLIENT=uturn-bench-client-$$
RELAY=uturn-bench-relay-$$
PEER=uturn-bench-peer-$$
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
    for ns in "$CLIENT" "$RELAY" "$PEER"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

for ns in "$CLIENT" "$RELAY" "$PEER"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
link() { # ns_a dev_a ip_a ns_b dev_b ip_b
    ip -n "$1" link add "$2" type veth peer name "$5" netns "$4"
    ip -n "$1" addr add "$3/24" dev "$2"
    ip -n "$4" addr add "$6/24" dev "$5"
    ip -n "$1" link set "$2" up
    ip -n "$4" link set "$5" up
}
link "$RELAY" xc0 192.0.2.1 "$CLIENT" lc0 192.0.2.10
link "$RELAY" xp0 198.51.100.1 "$PEER" lp0 198.51.100.20
link "$CLIENT" dc0 203.0.113.10 "$PEER" dp0 203.0.113.20
# The relay ns forwards on both links: XDP's route lookup needs it, and so does the routed
# baseline (the client and peer ns route the other side's prefix through it).
for dev in xc0 xp0; do
    for family in ipv4 ipv6; do ip netns exec "$RELAY" sysctl -qw "net.$family.conf.$dev.forwarding=1"; done
done
ip -n "$CLIENT" route add 198.51.100.0/24 via 192.0.2.1
ip -n "$PEER" route add 192.0.2.0/24 via 198.51.100.1
# Every endpoint device alike: full checksums on the wire, as from a NIC, and GRO on so
# the veth takes XDP_REDIRECTed frames.
for end in "$CLIENT lc0" "$CLIENT dc0" "$PEER lp0" "$PEER dp0"; do
    read -r ns dev <<<"$end"
    ip netns exec "$ns" ethtool -K "$dev" tx off gro on >/dev/null
done
if [ "$NAPI" = threaded ]; then
    for dev in xc0 xp0; do
        ip netns exec "$RELAY" ethtool -K "$dev" gro on >/dev/null
        ip netns exec "$RELAY" sh -c "echo 1 > /sys/class/net/$dev/threaded" || {
            echo "bench-xdp.sh: this kernel has no threaded NAPI on veth; use NAPI=softirq" >&2
            exit 1
        }
    done
fi
# The relay ns's NAPI threads, pinned to the relay's core; again after each server start,
# since attaching XDP may create the device's NAPI instances anew. (The kernel names them
# after the device only: another namespace's threaded xc0/xp0 would be pinned too.)
pin_napi() {
    [ "$NAPI" = threaded ] || return 0
    local pid pinned=0
    for pid in $(ps -eo pid=,comm= | awk '$2 ~ /^napi\/x[cp]0-[0-9]+$/ {print $1}'); do
        taskset -pc "$SERVER_CORE" "$pid" >/dev/null
        # "chrt -f 10" for a process is "chrt -f -p 10 PID" for a thread already running.
        [ ${#CHRT[@]} -eq 0 ] || "${CHRT[0]}" "${CHRT[1]}" -p "${CHRT[@]:2}" "$pid"
        pinned=$((pinned + 1))
    done
    [ "$pinned" -ge 2 ] || { echo "bench-xdp.sh: found $pinned NAPI threads of xc0/xp0 to pin" >&2; exit 1; }
}
pin_napi
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

SERVER_RUN=0
start_server() { # name
    # The previous server's port must be free, or the readiness check below would see it.
    for _ in $(seq 50); do
        ip netns exec "$RELAY" ss -Hlun "sport = :3478" | grep -q . || break
        sleep 0.1
    done
    SERVER_RUN=$((SERVER_RUN + 1))
    local log="target/bench-xdp-server-$SERVER_RUN-$1.log"
    SERVER_LOG=$log
    local common=(--listening-ip 192.0.2.1 --relay-ip 198.51.100.1 --listening-port 3478
        --min-port 20000 --max-port 59999 --realm example.org --user alice:secret
        --lt-cred-mech --allowed-peer-ip 198.51.100.20)
    case "$1" in
        uturn-xdp|uturn-xdp-generic|uturn-io-uring)
            local xdp=()
            [ "$1" = uturn-xdp ] && xdp=(--xdp xc0 --xdp xp0 --xdp-mode native)
            [ "$1" = uturn-xdp-generic ] && xdp=(--xdp xc0 --xdp xp0 --xdp-mode generic)
            ip netns exec "$RELAY" "${CHRT[@]}" taskset -c "$SERVER_CORE" "$UTURN" --cores "$SERVER_CORE" \
                --no-tcp --no-tls "${common[@]}" "${xdp[@]}" --log-level info >"$log" 2>&1 &
            ;;
        coturn)
            ip netns exec "$RELAY" "${CHRT[@]}" taskset -c "$SERVER_CORE" turnserver -n -m 1 "${common[@]}" \
                --no-tcp --no-tls --no-dtls --no-tcp-relay --no-cli --log-file "$log" \
                --pidfile "target/bench-xdp-coturn.pid" >/dev/null 2>&1 &
            ;;
        direct|routed) return 0 ;;
        *) echo "bench-xdp.sh: unknown server $1" >&2; exit 2 ;;
    esac
    SERVER_PID=$!
    wait_listening
    pin_napi
    if [ "${xdp[*]-}" ] && ! grep -q "XDP offload attached" "$log"; then
        echo "bench-xdp.sh: uturn did not attach XDP; see $log" >&2
        exit 1
    fi
}

run() { # server extra...
    local server=$1
    shift
    # Clients and peers per row: through the relay, over the direct link, or routed.
    local ends=(--server 192.0.2.1:3478 --client-ips 192.0.2.10 --peer-ip 198.51.100.20)
    case "$server" in
        direct) ends=(--direct --client-ips 203.0.113.10 --peer-ip 203.0.113.20) ;;
        routed) ends=(--direct --client-ips 192.0.2.10 --peer-ip 198.51.100.20) ;;
    esac
    start_server "$server"
    local pid=()
    [ -n "$SERVER_PID" ] && pid=(--server-pid "$SERVER_PID")
    echo "== $server: $ALLOCATIONS allocations, $SIZE bytes $*" >&2
    local recorder=""
    if [ "$RECORD" = 1 ] && [[ " $* " != *" --find-max "* ]]; then
        # The middle of the measured window (after the 1 s warm-up).
        (sleep "$(python3 -c "print(max(0, 1 + $DURATION / 2 - $RECORD_SECONDS / 2))")"
         perf record -q -C "$LOAD_CORE,$SERVER_CORE" -F 20000 -g \
             -o "target/bench-xdp-record-$SERVER_RUN-$server.data" -- sleep "$RECORD_SECONDS" \
             >/dev/null 2>&1) &
        recorder=$!
    fi
    if ! timeout 300 ip netns exec "$CLIENT" "${CHRT[@]}" "$BENCH" relay "${ends[@]}" --peer-netns "$PEER" \
        --user alice:secret --allocations "$ALLOCATIONS" --size "$SIZE" \
        --duration "$DURATION" --warmup 1 --cores "$LOAD_CORE" "${pid[@]}" --label "$server" \
        --json --quiet "$@" >>"$OUT"; then
        local alive=""
        if [ -n "$SERVER_PID" ]; then
            if kill -0 "$SERVER_PID" 2>/dev/null; then alive=" (server still running"; else alive=" (server exited"; fi
            alive="$alive; its log: $SERVER_LOG)"
        fi
        echo "bench-xdp.sh: $server failed$alive" >&2
    fi
    [ -z "$recorder" ] || wait "$recorder" || true
    stop_server
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date '+%Y-%m-%d %H:%M')
echo "load average: $LOAD_START; NAPI=$NAPI${CHRT[*]:+; CHRT=${CHRT[*]}}" >&2
for _ in $(seq "$ROUNDS"); do
    for s in "${SERVERS[@]}"; do run "$s" --rate "$RATE"; done
done
if [ "$FIND_MAX" = 1 ]; then
    for s in "${SERVERS[@]}"; do
        run "$s" --rate "$RATE" --find-max --search-budget "$SEARCH_BUDGET"
    done
fi
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average: $LOAD_END" >&2

python3 - "$OUT" "$START" "$LOAD_START" "$LOAD_END" "$RATE" "$ALLOCATIONS" "$SIZE" "$NAPI" "${CHRT[*]}" <<'EOF'
import json, statistics, sys
out, start, load_start, load_end, rate, allocs, size, napi, chrt = sys.argv[1:10]
rows = [json.loads(l) for l in open(out) if l.strip()]
order = ["uturn-xdp", "uturn-xdp-generic", "uturn-io-uring", "coturn", "direct", "routed"]
labels = sorted({r["label"] for r in rows}, key=lambda l: order.index(l) if l in order else 99)
# Rows with an overhead over the direct run: the relays, and the kernel's own forwarding.
RELAYS = ("uturn-xdp", "uturn-xdp-generic", "uturn-io-uring", "coturn", "routed")
f = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"

def med(sel, key):
    v = [r[key] for r in sel if r.get(key) is not None]
    return statistics.median(v) if v else None

print(f"\n{start}, load average {load_start} at the start, {load_end} at the end; "
      f"{allocs} allocations x {size} bytes, {int(rate) * 2} packets/s offered; "
      f"relay ns receive: NAPI={napi}" + (f"; CHRT={chrt}" if chrt else ""))
fixed = {l: [r for r in rows if r["kind"] == "fixed" and r["label"] == l] for l in labels}
fixed = {l: s for l, s in fixed.items() if s}
if fixed:
    m = {l: {k: med(s, k) for k in ("relayed_pps", "loss_pct", "p50_us", "p99_us",
                                     "cpu_us_per_packet", "machine_us_per_packet",
                                     "accounted_us_per_packet")} for l, s in fixed.items()}
    def overhead(l, key):
        if l not in RELAYS or l not in m or "direct" not in m or m[l][key] is None \
                or m["direct"][key] is None:
            return None
        return m[l][key] - m["direct"][key]
    def ratio(l, key):
        o, c = overhead(l, key), overhead("coturn", key)
        return None if o is None or not c or c <= 0 else o / c
    # The relay's own cost beyond the floor: the routed run crosses the same two veths.
    def over_routed(l, key="accounted_us_per_packet"):
        if l in ("routed", "direct") or "routed" not in m or m[l][key] is None \
                or m["routed"][key] is None:
            return None
        return m[l][key] - m["routed"][key]
    def routed_ratio(l):
        o, c = over_routed(l), over_routed("coturn") if "coturn" in m else None
        return None if o is None or not c or c <= 0 else o / c
    n = max(len(s) for s in fixed.values())
    print(f"\nfixed rate, median of {n} interleaved runs (µs per relayed packet; overhead = "
          "relayed run minus direct; x coturn = overhead / coturn's overhead, target <= 0.20)")
    print("| server | relayed pps | loss % | p50 µs | p99 µs | server process µs | machine µs | "
          "machine overhead µs | x coturn | accounted µs | accounted overhead µs | x coturn | "
          "accounted over routed µs | x coturn |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lossy = [l for l, v in m.items() if (v["loss_pct"] or 0) >= 0.1]
    for l, v in m.items():
        mark = " ⚠" if l in lossy else ""
        print(f"| {l}{mark} | {f(v['relayed_pps'], 0)} | {f(v['loss_pct'], 3)} | {f(v['p50_us'], 0)} | "
              f"{f(v['p99_us'], 0)} | {f(v['cpu_us_per_packet'])} | {f(v['machine_us_per_packet'])} | "
              f"{f(overhead(l, 'machine_us_per_packet'))} | {f(ratio(l, 'machine_us_per_packet'))} | "
              f"{f(v['accounted_us_per_packet'])} | {f(overhead(l, 'accounted_us_per_packet'))} | "
              f"{f(ratio(l, 'accounted_us_per_packet'))} | {f(over_routed(l))} | {f(routed_ratio(l))} |")
    if lossy:
        print(f"\n⚠ {', '.join(lossy)}: median loss >= 0.1%, at or past its ceiling at this rate: "
              "its figures per packet (and every ratio to it) are not comparable; lower RATE")
    spread = {l: (min(r["accounted_us_per_packet"] or 0 for r in s),
                  max(r["accounted_us_per_packet"] or 0 for r in s)) for l, s in fixed.items()}
    print("\naccounted µs/packet, min-max over the runs: " +
          ", ".join(f"{l} {a:.2f}-{b:.2f}" for l, (a, b) in spread.items()))
best = {r["label"]: r for r in rows if r["kind"] == "best"}
if best:
    ceiling = best.get("direct", {}).get("relayed_pps")
    print("\nhighest rate with < 0.1% loss (one search per server; direct = the load "
          "generator's own ceiling; latency is the best step's, near saturation)")
    print("| server | packets/s | loss % | p50 µs | p99 µs | of the generator's ceiling |")
    print("|---|---|---|---|---|---|")
    for l in labels:
        r = best.get(l)
        if r is None:
            print(f"| {l} | no rate without loss found | | | | |")
            continue
        share = r["relayed_pps"] / ceiling if ceiling else None
        note = "-" if share is None or l == "direct" else f"{share:.2f}" + (
            " (generator-bound)" if share >= 0.9 else "")
        print(f"| {l} | {r['relayed_pps']:.0f} | {r['loss_pct']:.3f} | {r['p50_us']} | "
              f"{r['p99_us']} | {note} |")
EOF
echo "raw: $OUT" >&2
