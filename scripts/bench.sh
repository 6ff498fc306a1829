#!/usr/bin/env bash
# Relay benchmark on one host, loopback only: the same uturn-bench load against
#   (a) uturn, io_uring backend      (b) uturn, portable backend
#   (c) coturn (Debian's turnserver) (d) the null forwarder (the floor)
# Each server is pinned to SERVER_CORE (one shard / one relay thread), the load to
# LOAD_CORE. Per run: server CPU (utime+stime from /proc) over the measured window per
# relayed packet, loss, round-trip latency. Prints one table with ratios against coturn
# and against the floor, and keeps the raw JSON lines.
#
# usage: scripts/bench.sh [--quick] [--out FILE]
#   --quick      50 and 1,000 allocations, 170 bytes, fixed rate only (about 2 minutes)
#   default      50 / 1,000 / 10,000 allocations x 170 / 1,200 bytes at a fixed rate, plus a
#                saturation search (highest rate with < 0.1% loss) for 50 x 170 and
#                1,000 x 1,200 (about 12 minutes)
# env: SERVER_CORE (0), LOAD_CORE (1), RATE (20000 round trips/s in all), DURATION (5 s)
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n 2,16p "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
RATE=${RATE:-20000}
DURATION=${DURATION:-5}
PORT=${PORT:-$(python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")}
MIN_PORT=20000
MAX_PORT=59999
OUT=${OUT:-target/bench-$(date +%Y%m%d-%H%M%S).jsonl}

command -v turnserver >/dev/null || { echo "bench.sh: turnserver not found: apt-get install coturn" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench.sh: python3 is needed for the table" >&2; exit 1; }
if [ "$(nproc)" -lt 2 ]; then
    echo "bench.sh: WARNING: one CPU only: server and load share it, ratios are not meaningful" >&2
fi
# One socket per allocation on each side: raise the soft descriptor limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" -lt 10300 ]; then
    echo "bench.sh: WARNING: ulimit -n is $(ulimit -n); 10,000 allocations need about 10,300 per process (see tuning/)" >&2
fi

cargo build --release --bins --quiet
UTURN=target/release/uturn
BENCH=target/release/uturn-bench
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

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
trap stop_server EXIT INT TERM

wait_listening() {
    for _ in $(seq 100); do
        if ss -Hluna "sport = :$1" 2>/dev/null | grep -q .; then return 0; fi
        sleep 0.1
    done
    echo "bench.sh: nothing listens on $1" >&2
    return 1
}

start_server() { # name
    local log="target/bench-server-$1.log"
    case "$1" in
        uturn-io-uring|uturn-portable)
            local backend=${1#uturn-}
            taskset -c "$SERVER_CORE" "$UTURN" --backend "$backend" --cores "$SERVER_CORE" \
                --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$PORT" \
                --min-port "$MIN_PORT" --max-port "$MAX_PORT" --realm example.org \
                --user alice:secret --lt-cred-mech --allow-loopback-peers --log-level warn \
                >"$log" 2>&1 &
            ;;
        coturn)
            taskset -c "$SERVER_CORE" turnserver -n -m 1 --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 \
                --listening-port "$PORT" --min-port "$MIN_PORT" --max-port "$MAX_PORT" \
                --realm example.org --user alice:secret --lt-cred-mech --allow-loopback-peers \
                --no-tcp --no-tls --no-dtls --no-tcp-relay --no-cli --log-file "$log" \
                --pidfile "target/bench-coturn.pid" >/dev/null 2>&1 &
            ;;
        null)
            taskset -c "$SERVER_CORE" "$BENCH" forward --listen "127.0.0.1:$PORT" --cores "$SERVER_CORE" >"$log" 2>&1 &
            ;;
    esac
    SERVER_PID=$!
    wait_listening "$PORT"
    sleep 0.3
}

run() { # server allocations size extra...
    local server=$1 allocs=$2 size=$3
    shift 3
    local null=()
    [ "$server" = null ] && null=(--null)
    start_server "$server"
    echo "== $server: $allocs allocations, $size bytes $*" >&2
    if ! timeout 300 "$BENCH" relay "${null[@]}" --server "127.0.0.1:$PORT" --user alice:secret \
        --allocations "$allocs" --size "$size" --duration "$DURATION" --warmup 1 \
        --cores "$LOAD_CORE" --server-pid "$SERVER_PID" --label "$server" --json --quiet "$@" >>"$OUT"; then
        echo "bench.sh: $server failed for $allocs x $size" >&2
    fi
    stop_server
}

SERVERS=(uturn-io-uring uturn-portable coturn null)
if [ "$QUICK" -eq 1 ]; then
    ALLOCS=(50 1000); SIZES=(170)
else
    ALLOCS=(50 1000 10000); SIZES=(170 1200)
fi
for allocs in "${ALLOCS[@]}"; do
    for size in "${SIZES[@]}"; do
        for server in "${SERVERS[@]}"; do
            run "$server" "$allocs" "$size" --rate "$RATE"
        done
    done
done
if [ "$QUICK" -eq 0 ]; then
    for scenario in "50 170" "1000 1200"; do
        read -r allocs size <<<"$scenario"
        for server in "${SERVERS[@]}"; do
            run "$server" "$allocs" "$size" --rate "$RATE" --find-max --search-budget 45
        done
    done
fi

python3 - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ORDER = ["uturn-io-uring", "uturn-portable", "coturn", "null"]

def table(title, kind):
    picked = [r for r in rows if r["kind"] == kind]
    if not picked:
        return
    print(f"\n{title}")
    hdr = (f'{"allocs":>6} {"size":>5} {"server":<15} {"rt/s":>9} {"loss%":>7} {"p50us":>6} '
           f'{"p99us":>6} {"p99.9us":>7} {"cpu us/pkt":>10} {"x coturn":>8} {"x floor":>7}')
    print(hdr)
    print("-" * len(hdr))
    for allocs, size in sorted({(r["allocations"], r["size"]) for r in picked}):
        group = {r["label"]: r for r in picked if (r["allocations"], r["size"]) == (allocs, size)}
        def cpu(label):
            return group.get(label, {}).get("cpu_us_per_packet")
        for label in ORDER:
            r = group.get(label)
            if not r:
                continue
            c = r["cpu_us_per_packet"]
            xc = f'{c / cpu("coturn"):.2f}' if c and cpu("coturn") else "-"
            xf = f'{c / cpu("null"):.2f}' if c and cpu("null") else "-"
            cs = f"{c:.3f}" if c is not None else "-"
            print(f'{allocs:>6} {size:>5} {label:<15} {r["round_trips_per_s"]:>9.0f} {r["loss_pct"]:>7.3f} '
                  f'{r["p50_us"]:>6} {r["p99_us"]:>6} {r["p999_us"]:>7} {cs:>10} {xc:>8} {xf:>7}')

table("Fixed rate (rt/s: round trips per second in all, each is 2 relayed packets; "
      "cpu: server utime+stime per relayed packet)", "fixed")
table("Saturation: highest rate found with < 0.1% loss (steps of about 3 s)", "best")
print(f"\nraw results: {sys.argv[1]}")
EOF
