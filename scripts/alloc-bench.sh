#!/usr/bin/env bash
# Allocation benchmark, loopback only: allocations per second with long-term
# authentication (each allocation: 401 challenge, Allocate, ChannelBind), and the server's
# resident memory per held allocation at 1k / 10k / 50k allocations, for uturn (and coturn
# for comparison with --coturn).
#
# usage: scripts/alloc-bench.sh [--coturn] [COUNTS...]      (default counts: 1000 10000 50000)
# A count may be `max`: as many as the descriptor limit allows.
# Each process needs a descriptor per allocation (the server a relay socket, the load a
# client socket) plus ~200: the script raises the hard limit (as root with CAP_SYS_RESOURCE)
# and the soft one to what the largest count needs; a count the limit cannot hold is
# SKIPPED with the reason (see tuning/README.md). Client sockets spread over 127.0.0.2-9 so
# their ephemeral ports do not run out; the relay range is 10000-65000 on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_COTURN=0
COUNTS=()
for a in "$@"; do
    case "$a" in
        --coturn) WITH_COTURN=1 ;;
        -h|--help) sed -n 2,13p "$0"; exit 0 ;;
        *) COUNTS+=("$a") ;;
    esac
done
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1000 10000 50000)
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
PORT=${PORT:-$(python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")}

# The server and the load inherit this shell's limit.
need=0
for n in "${COUNTS[@]}"; do
    [ "$n" != max ] && [ $((n + 200)) -gt "$need" ] && need=$((n + 200))
done
if [ "$(ulimit -Hn)" != unlimited ] && [ "$need" -gt "$(ulimit -Hn)" ]; then
    nr_open=$(cat /proc/sys/fs/nr_open)
    [ "$need" -gt "$nr_open" ] && { sysctl -qw fs.nr_open="$need" 2>/dev/null || true; }
    ulimit -Hn "$need" 2>/dev/null ||
        echo "alloc-bench: cannot raise the hard descriptor limit from $(ulimit -Hn) to $need (needs root with CAP_SYS_RESOURCE)" >&2
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "alloc-bench: file descriptor limit $(ulimit -n)"
cargo build --release --bins --quiet
BENCH=target/release/uturn-bench
CLIENT_IPS=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9

PID=""
stop() {
    if [ -n "$PID" ]; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
        PID=""
    fi
}
trap stop EXIT INT TERM

start() { # uturn|coturn
    if [ "$1" = uturn ]; then
        taskset -c "$SERVER_CORE" target/release/uturn --cores "$SERVER_CORE" --listening-ip 127.0.0.1 \
            --relay-ip 127.0.0.1 --listening-port "$PORT" --min-port 10000 --max-port 65000 \
            --realm example.org --user alice:secret --allow-loopback-peers --log-level warn \
            >target/alloc-bench-uturn.log 2>&1 &
    else
        taskset -c "$SERVER_CORE" turnserver -n -m 1 --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 \
            --listening-port "$PORT" --min-port 10000 --max-port 65000 --realm example.org \
            --user alice:secret --lt-cred-mech --allow-loopback-peers --no-tcp --no-tls --no-dtls \
            --no-tcp-relay --no-cli --log-file target/alloc-bench-coturn.log \
            --pidfile target/alloc-bench-coturn.pid >/dev/null 2>&1 &
    fi
    PID=$!
    for _ in $(seq 100); do
        ss -Hluna "sport = :$PORT" | grep -q . && break
        sleep 0.1
    done
    sleep 0.3
}

SERVERS=(uturn)
[ "$WITH_COTURN" -eq 1 ] && SERVERS+=(coturn)
# marginal: the growth from the previous count of the same server to this one, per added
# allocation: what an allocation costs once the fixed parts (the provided buffers a shard
# touches as its first few thousand requests arrive, the rings) are paid.
printf '%-7s %8s %12s %14s %14s %12s %14s\n' server allocs "allocs/s" "RSS before KiB" "RSS after KiB" \
    "bytes/alloc" "marginal B/al"
for server in "${SERVERS[@]}"; do
    prev=""
    for n in "${COUNTS[@]}"; do
        [ "$n" = max ] && n=$(($(ulimit -n) - 300))
        # The server holds one relay socket per allocation, the load one client socket.
        if [ $((n + 200)) -gt "$(ulimit -n)" ]; then
            echo "alloc-bench: SKIPPED $n allocations: each process needs ulimit -n >= $((n + 200)), the hard limit here is $(ulimit -Hn) (see tuning/)" >&2
            continue
        fi
        start "$server"
        line=$(taskset -c "$LOAD_CORE" "$BENCH" alloc --server "127.0.0.1:$PORT" --allocations "$n" \
            --client-ips "$CLIENT_IPS" --setup-threads 16 --server-pid "$PID" --json) || line=""
        stop
        if [ -z "$line" ]; then
            echo "alloc-bench: $server failed at $n allocations" >&2
            continue
        fi
        python3 -c '
import json, sys
r = json.loads(sys.argv[2])
marginal = "-"
if sys.argv[3]:
    p = json.loads(sys.argv[3])
    grew = (r["rss_after_kib"] - r["rss_before_kib"]) - (p["rss_after_kib"] - p["rss_before_kib"])
    if r["allocations"] > p["allocations"]:
        marginal = round(grew * 1024 / (r["allocations"] - p["allocations"]))
cols = [sys.argv[1], r["allocations"], round(r["allocs_per_s"]), r["rss_before_kib"], r["rss_after_kib"],
        r["bytes_per_allocation"], marginal]
print("%-7s %8s %12s %14s %14s %12s %14s" % tuple(cols))
' "$server" "$line" "$prev"
        prev=$line
    done
done
