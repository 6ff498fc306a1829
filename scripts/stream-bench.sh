#!/usr/bin/env bash
# TCP and TLS client benchmark on one host, loopback only, with a load uturn did not write:
# coturn's turnutils_uclient (-t, -t -S) through uturn (io_uring and portable backends) and
# coturn (Debian's turnserver), each server pinned to SERVER_CORE with one relay thread,
# the client and its echo peer to LOAD_CORE. Per run: server CPU (utime+stime from /proc)
# per relayed message, and loss. Then user-space memory per idle TLS connection: CONNS
# connections that finished their handshake and sent nothing, RSS before and after.
#
# Then the same servers under uturn-bench's paced TURN load over the same transport
# (--load bench): CPU per relayed packet over the measured window, ratio to coturn's and to
# the floor's, round-trip p50/p99 and loss. The floor is server null: uturn-bench's null
# forwarder (`forward --cert --pkey`), one connection and one UDP relay socket per client,
# ChannelData cut from the stream and sent on, no TURN; TCP and TLS on one port.
#
# usage: scripts/stream-bench.sh [--transport tcp|tls|both] [--load uclient|bench|all]
# env: SERVER_CORE (0), LOAD_CORE (1), CLIENTS (50), MESSAGES (400 per client), CONNS (500),
#      ALLOCS (50 uturn-bench connections), RATE (10000 round trips/s), DURATION (5 s),
#      OUT (the uturn-bench JSON lines, target/stream-bench-DATE.jsonl), SERVERS (for the
#      uturn-bench runs: null uturn-io-uring uturn-portable coturn; uturn-io-uring-epoll is the
#      io_uring shard serving TCP/TLS through epoll, uturn-io-uring-reads the io_uring shard
#      with ring receives but accepts and writes through epoll, as before ring sends),
#      SYSCALLS (1: also count the server's system calls per relayed packet with perf over
#      the measured window; less sensitive to a loaded host than CPU time),
#      UTURN_B (another uturn binary: server uturn-b runs it on io_uring, for A/B runs
#      interleaved in one table, e.g. SERVERS="uturn-io-uring uturn-b coturn")
set -euo pipefail
cd "$(dirname "$0")/.."

TRANSPORTS=(tcp tls)
LOAD=all
while [ $# -gt 0 ]; do
    case "$1" in
        --transport)
            case "$2" in
                tcp|tls) TRANSPORTS=("$2") ;;
                both) TRANSPORTS=(tcp tls) ;;
                *) echo "stream-bench.sh: --transport tcp|tls|both" >&2; exit 2 ;;
            esac
            shift
            ;;
        --load)
            case "$2" in
                uclient|bench|all) LOAD="$2" ;;
                *) echo "stream-bench.sh: --load uclient|bench|all" >&2; exit 2 ;;
            esac
            shift
            ;;
        -h|--help) sed -n 2,25p "$0"; exit 0 ;;
        *) echo "stream-bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
CLIENTS=${CLIENTS:-50}
MESSAGES=${MESSAGES:-400}
CONNS=${CONNS:-500}
ALLOCS=${ALLOCS:-50}
RATE=${RATE:-10000}
DURATION=${DURATION:-5}
SERVERS=${SERVERS:-null uturn-io-uring uturn-portable coturn}
SYSCALLS=${SYSCALLS:-0}
OUT=${OUT:-${CARGO_TARGET_DIR:-target}/stream-bench-$(date +%Y%m%d-%H%M%S).jsonl}
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
PORT=$(free_port)
TLS_PORT=$(free_port)
PEER_PORT=$(free_port)
MIN_PORT=20000
MAX_PORT=29999
for tool in turnserver turnutils_uclient turnutils_peer openssl python3; do
    command -v "$tool" >/dev/null || { echo "stream-bench.sh: $tool not found (apt-get install coturn openssl python3)" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --bin uturn --bin uturn-bench --quiet
UTURN=${CARGO_TARGET_DIR:-target}/release/uturn
BENCH=${CARGO_TARGET_DIR:-target}/release/uturn-bench
WORK=$(mktemp -d)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

SERVER_PID=""
PEER_PID=""
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
    [ -n "$PEER_PID" ] && kill "$PEER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

wait_listening() {
    for _ in $(seq 100); do
        if ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; then return 0; fi
        sleep 0.1
    done
    echo "stream-bench.sh: nothing listens on TCP $1" >&2
    return 1
}

start_server() { # name
    local log="$WORK/server-$1.log"
    case "$1" in
        uturn-io-uring|uturn-portable|uturn-io-uring-epoll|uturn-io-uring-reads|uturn-b)
            local backend=${1#uturn-} bin=$UTURN
            [ "$1" = uturn-b ] && backend=io-uring && bin=${UTURN_B:?UTURN_B: the binary for uturn-b}
            # The io_uring shard with TCP/TLS through epoll, as before ring receives.
            [ "$1" = uturn-io-uring-epoll ] && backend=io-uring && export UTURN_TEST_STREAM_EPOLL=true
            # Ring receives only: accepts and writes through epoll, as before ring sends.
            [ "$1" = uturn-io-uring-reads ] && backend=io-uring && export UTURN_TEST_STREAM_RING_SENDS=false
            taskset -c "$SERVER_CORE" "$bin" --backend "$backend" --cores "$SERVER_CORE" \
                --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$PORT" \
                --tls-listening-port "$TLS_PORT" --cert "$WORK/cert.pem" --pkey "$WORK/key.pem" \
                --min-port "$MIN_PORT" --max-port "$MAX_PORT" --realm example.org \
                --user alice:secret --lt-cred-mech --allow-loopback-peers --log-level warn \
                >"$log" 2>&1 &
            ;;
        coturn)
            taskset -c "$SERVER_CORE" turnserver -n -m 1 --listening-ip 127.0.0.1 \
                --relay-ip 127.0.0.1 --listening-port "$PORT" --tls-listening-port "$TLS_PORT" \
                --cert "$WORK/cert.pem" --pkey "$WORK/key.pem" \
                --min-port "$MIN_PORT" --max-port "$MAX_PORT" --realm example.org \
                --user alice:secret --lt-cred-mech --allow-loopback-peers --no-dtls \
                --no-tcp-relay --no-cli --log-file "$log" >/dev/null 2>&1 &
            ;;
        null)
            # The floor: TCP and TLS both on $PORT (a TLS handshake's first byte tells them
            # apart), one thread on the server core.
            taskset -c "$SERVER_CORE" "$BENCH" forward --listen "127.0.0.1:$PORT" \
                --cores "$SERVER_CORE" --cert "$WORK/cert.pem" --pkey "$WORK/key.pem" \
                >"$log" 2>&1 &
            ;;
    esac
    SERVER_PID=$!
    unset UTURN_TEST_STREAM_EPOLL UTURN_TEST_STREAM_RING_SENDS
    wait_listening "$PORT"
    [ "$1" = null ] || wait_listening "$TLS_PORT"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

taskset -c "$LOAD_CORE" turnutils_peer -L 127.0.0.1 -p "$PEER_PORT" >/dev/null 2>&1 &
PEER_PID=$!
HZ=$(getconf CLK_TCK)
if [ "$LOAD" != bench ]; then
echo "| transport | server | messages | lost | server CPU ms | CPU µs per message |"
echo "| --- | --- | --- | --- | --- | --- |"
for transport in "${TRANSPORTS[@]}"; do
    flags=(-t)
    port=$PORT
    if [ "$transport" = tls ]; then flags=(-t -S); port=$TLS_PORT; fi
    for server in uturn-io-uring uturn-portable coturn; do
        start_server "$server"
        before=$(cpu_ticks "$SERVER_PID")
        out=$(timeout 300 taskset -c "$LOAD_CORE" turnutils_uclient "${flags[@]}" -m "$CLIENTS" \
            -n "$MESSAGES" -l 170 -e 127.0.0.1 -r "$PEER_PORT" -u alice -w secret \
            -p "$port" 127.0.0.1 2>&1 || true)
        after=$(cpu_ticks "$SERVER_PID")
        stop_server
        sent=$(grep -o 'tot_send_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2)
        lost=$(grep -o 'Total lost packets [0-9]*' <<<"$out" | tail -1 | awk '{print $4}')
        python3 - "$transport" "$server" "${sent:-0}" "${lost:-?}" "$before" "$after" "$HZ" <<'EOF'
import sys
t, server, sent, lost, before, after, hz = sys.argv[1:]
ms = (int(after) - int(before)) * 1000 / int(hz)
per = f"{ms * 1000 / int(sent):.1f}" if int(sent) else "–"
print(f"| {t} | {server} | {sent} | {lost} | {ms:.0f} | {per} |")
EOF
    done
done
fi

if [ "$LOAD" != uclient ]; then
    mkdir -p "$(dirname "$OUT")"
    : >"$OUT"
    echo
    echo "uturn-bench: $ALLOCS connections, 170 bytes, $RATE round trips/s offered, ${DURATION} s measured"
    for transport in "${TRANSPORTS[@]}"; do
        for server in $SERVERS; do
            port=$PORT
            [ "$transport" = tls ] && [ "$server" != null ] && port=$TLS_PORT
            mode=()
            [ "$server" = null ] && mode=(--null)
            start_server "$server"
            PERF_PID=""
            if [ "$SYSCALLS" = 1 ]; then
                # Starts after the setup and the 1 s warm-up, ends before the run does.
                (sleep 2; perf stat -e raw_syscalls:sys_enter -x, -p "$SERVER_PID" \
                    -o "$WORK/perf" -- sleep "$((DURATION - 1))" >/dev/null 2>&1) &
                PERF_PID=$!
            fi
            if ! timeout 120 taskset -c "$LOAD_CORE" "$BENCH" relay --transport "$transport" \
                "${mode[@]}" --server "127.0.0.1:$port" --allocations "$ALLOCS" --rate "$RATE" \
                --duration "$DURATION" --warmup 1 --client-ips 127.0.0.1 \
                --server-pid "$SERVER_PID" --label "$transport/$server" --json --quiet >>"$OUT"; then
                echo "stream-bench.sh: uturn-bench against $server over $transport failed" >&2
            fi
            if [ -n "$PERF_PID" ]; then
                wait "$PERF_PID" || true
                calls=$(grep sys_enter "$WORK/perf" 2>/dev/null | cut -d, -f1)
                echo "{\"syscalls_label\":\"$transport/$server\",\"syscalls\":${calls:-0},\"seconds\":$((DURATION - 1))}" >>"$OUT"
            fi
            stop_server
        done
    done
    python3 - "$OUT" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
rows = [r for r in lines if "label" in r]
calls = [r for r in lines if "syscalls_label" in r]
def per_packet(name):
    return {r["label"].split("/")[0]: r["cpu_us_per_packet"] for r in rows if r["label"].endswith("/" + name)}
coturn, floor = per_packet("coturn"), per_packet("null")
def ratio(cpu, base):
    return f"{cpu / base:.2f}x" if cpu is not None and base else "–"
print("| transport | server | relayed pkt/s | loss % | p50 µs | p99 µs | CPU µs per relayed packet | vs coturn | vs null |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    t, server = r["label"].split("/")
    cpu = r["cpu_us_per_packet"]
    vs_coturn, vs_null = ratio(cpu, coturn.get(t)), ratio(cpu, floor.get(t))
    cpu = f"{cpu:.2f}" if cpu is not None else "–"
    print(f"| {t} | {server} | {r['relayed_pps']:.0f} | {r['loss_pct']:.3f} | {r['p50_us']} | {r['p99_us']} | {cpu} | {vs_coturn} | {vs_null} |")
if calls:
    print()
    print("| transport | server | system calls per relayed packet |")
    print("| --- | --- | --- |")
    for r, c in zip(rows, calls):
        per = c["syscalls"] / (r["relayed_pps"] * c["seconds"]) if r["relayed_pps"] else 0
        t, server = c["syscalls_label"].split("/")
        print(f"| {t} | {server} | {per:.2f} |")
EOF
fi

[ "$LOAD" = bench ] && exit 0
echo
echo "| server | idle TLS connections | RSS before KiB | RSS after KiB | bytes per connection |"
echo "| --- | --- | --- | --- | --- |"
for server in uturn-io-uring coturn; do
    start_server "$server"
    before=$(rss_kib "$SERVER_PID")
    python3 - "$TLS_PORT" "$CONNS" "$SERVER_PID" "$server" "$before" <<'EOF'
import socket, ssl, sys, time
port, n, pid, server, before = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    held.append(ctx.wrap_socket(s))
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
# Until the server's memory stops moving.
last, still = rss(), 0
while still < 5:
    time.sleep(0.1)
    now = rss()
    still = still + 1 if now == last else 0
    last = now
print(f"| {server} | {n} | {before} | {last} | {(last - before) * 1024 // n} |")
EOF
    stop_server
done
