#!/usr/bin/env bash
# Relay benchmark on one host, loopback only: the same uturn-bench load against
#   (a) uturn, io_uring backend      (b) uturn, portable backend
#   (c) coturn (Debian's turnserver) (d) the null forwarder (the floor)
#   (e) direct: the same load from the clients straight to the echo peers, no relay
# Each server is pinned to SERVER_CORE (one shard / one relay thread), the load to
# LOAD_CORE. Per run: server CPU (utime+stime from /proc) over the measured window per
# relayed packet, machine CPU (all cores, /proc/stat) per relayed packet, loss, round-trip
# latency. The relay overhead is the machine CPU per packet of a relayed run minus that of
# the direct run: what relaying costs beyond delivering the same datagrams at all.
# Then a video-like load (frames of 8-16 datagrams per allocation back to back), and the
# third-party load: coturn's turnutils_uclient through turnutils_peer against uturn and
# coturn, both at their defaults (no pinning), plain and with -y (client to client); with
# turn-rs in SERVERS, turn-rs too (with -y only: it has no real relay sockets, so it refuses
# a peer that is not one of its own clients' relay addresses; ChannelBind 403).
# Prints the tables with ratios and keeps the raw JSON lines.
#
# usage: scripts/bench.sh [--quick] [--out FILE] [--no-uclient] | --xdp [--out FILE]
#   --xdp        uturn with XDP, uturn on io_uring and coturn across veth pairs between three
#                network namespaces, against a direct link (scripts/bench-xdp.sh; needs root)
#   --quick      50 and 1,000 allocations, 170 bytes, fixed rate; bursty 50 x 1,200;
#                uclient (about 4 minutes)
#   default      50 / 1,000 / 10,000 allocations x 170 / 1,200 bytes at a fixed rate, bursty
#                50 / 1,000 x 1,200, saturation searches (highest rate with < 0.1% loss, load
#                sent SAT_BATCH datagrams per system call) for 50 x 170 and 1,000 x 1,200, the
#                generator's own ceiling (direct and null at saturation), uclient (about 25 min)
# env: SERVER_CORE (0), LOAD_CORE (1), RATE (20000 round trips/s in all), DURATION (5 s),
#      SAT_BATCH (4), BURST (8-16), UCLIENT ("-m 50 -n 2000 -l 170 -z 1"), SERVERS
#      (space-separated subset of: uturn-io-uring uturn-portable coturn null direct
#      turn-rs; turn-rs takes part in the uclient phase only, at its default of one worker
#      thread per core (TURN_RS_THREADS to change), and is skipped with a NOT RUN line
#      unless installed:
#      cargo install turn-server --locked --no-default-features --features udp \
#        --root target/turn-rs          (or TURN_RS=/path/to/turn-server)),
#      UTURN_ARGS (extra options for every uturn run, e.g. "--batch-wait-us 0"),
#      PHASES (space-separated subset of: fixed bursty saturation uclient; default all,
#      --quick: fixed bursty uclient), SAT_SCENARIOS (50x170 1000x1200: allocations x bytes),
#      ROUNDS (1: every fixed, bursty and saturation scenario runs its servers ROUNDS times,
#      each round in an order turned by one place; the tables give each server's median
#      and the range of its CPU per packet)
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
OUT=""
UCLIENT_RUNS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --out) OUT="$2"; shift ;;
        --no-uclient) UCLIENT_RUNS=0 ;;
        # The namespace topology with uturn's XDP offload: its own script.
        --xdp) shift; exec "$(dirname "$0")/bench-xdp.sh" "$@" ;;
        -h|--help) sed -n 2,37p "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
RATE=${RATE:-20000}
DURATION=${DURATION:-5}
SAT_BATCH=${SAT_BATCH:-4}
ROUNDS=${ROUNDS:-1}
BURST=${BURST:-8-16}
UCLIENT=${UCLIENT:--m 50 -n 2000 -l 170 -z 1}
# A port free for UDP and TCP (uturn and coturn listen on both at their defaults), and the
# next one for the uclient runs' peer.
PORT=${PORT:-$(python3 -c "
import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', 0))
    p = u.getsockname()[1]
    try:
        for port in (p, p + 1):
            t = socket.socket(); t.bind(('127.0.0.1', port)); t.close()
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(('127.0.0.1', p + 1))
        print(p); break
    except OSError:
        pass
")}
MIN_PORT=20000
MAX_PORT=59999
TURN_RS=${TURN_RS:-target/turn-rs/bin/turn-server}
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
                --no-tcp --no-tls --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$PORT" \
                --min-port "$MIN_PORT" --max-port "$MAX_PORT" --realm example.org \
                --user alice:secret --lt-cred-mech --allow-loopback-peers --log-level warn \
                ${UTURN_ARGS:-} >"$log" 2>&1 &
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
        direct) return 0 ;;
        # turn-rs (crates.io turn-server) at its defaults: one tokio worker per core, static
        # long-term credentials; its relay ports are virtual (no sockets), 49152-65535.
        turn-rs)
            cat >target/bench-turn-rs.toml <<CONF
[server]
realm = "example.org"
port-range = "49152..65535"
max-threads = ${TURN_RS_THREADS:-$(nproc)}
[[server.interfaces]]
transport = "udp"
listen = "127.0.0.1:$PORT"
external = "127.0.0.1:$PORT"
[log]
level = "warn"
stdout = true
[auth]
enable-hooks-auth = false
[auth.static-credentials]
alice = "secret"
CONF
            "$TURN_RS" --config target/bench-turn-rs.toml >"$log" 2>&1 &
            ;;
        # At their defaults: uturn one shard per core, coturn its default relay threads.
        default-uturn)
            "$UTURN" --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$PORT" \
                --min-port "$MIN_PORT" --max-port "$MAX_PORT" --realm example.org \
                --user alice:secret --lt-cred-mech --allow-loopback-peers --log-level warn \
                ${UTURN_ARGS:-} >"$log" 2>&1 &
            ;;
        default-coturn)
            turnserver -n --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$PORT" \
                --min-port "$MIN_PORT" --max-port "$MAX_PORT" --realm example.org \
                --user alice:secret --lt-cred-mech --allow-loopback-peers --no-cli \
                --log-file "$log" --pidfile "target/bench-coturn.pid" >/dev/null 2>&1 &
            ;;
    esac
    SERVER_PID=$!
    wait_listening "$PORT"
    sleep 0.3
}

run() { # server allocations size extra...
    local server=$1 allocs=$2 size=$3
    shift 3
    local mode=()
    [ "$server" = null ] && mode=(--null)
    [ "$server" = direct ] && mode=(--direct)
    start_server "$server"
    local pid=()
    [ -n "$SERVER_PID" ] && pid=(--server-pid "$SERVER_PID")
    echo "== $server: $allocs allocations, $size bytes $*" >&2
    if ! timeout 300 "$BENCH" relay "${mode[@]}" --server "127.0.0.1:$PORT" --user alice:secret \
        --allocations "$allocs" --size "$size" --duration "$DURATION" --warmup 1 \
        --cores "$LOAD_CORE" "${pid[@]}" --label "$server" --json --quiet "$@" >>"$OUT"; then
        echo "bench.sh: $server failed for $allocs x $size" >&2
    fi
    stop_server
}

machine_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
process_ticks() { awk '{sub(/.*\) /, ""); print $12+$13}' "/proc/$1/stat"; }

# The third-party load: turnutils_uclient through turnutils_peer, server at its defaults.
uclient_run() { # server extra-uclient-args...
    local server=$1
    shift
    local peer_port=$((PORT + 1))
    start_server "$server"
    turnutils_peer -L 127.0.0.1 -p "$peer_port" >/dev/null 2>&1 &
    local peer=$!
    sleep 0.5
    echo "== $server: turnutils_uclient $UCLIENT $*" >&2
    local m0 p0 out m1 p1
    m0=$(machine_ticks); p0=$(process_ticks "$SERVER_PID")
    # shellcheck disable=SC2086
    out=$(timeout 120 turnutils_uclient $UCLIENT "$@" -e 127.0.0.1 -r "$peer_port" \
        -u alice -w secret -p "$PORT" 127.0.0.1 2>&1 || true)
    m1=$(machine_ticks); p1=$(process_ticks "$SERVER_PID")
    kill "$peer" 2>/dev/null || true
    wait "$peer" 2>/dev/null || true
    stop_server
    local line sent recvd lost rtt
    line=$(grep -o 'tot_send_msgs=[0-9]*, tot_recv_msgs=[0-9]*' <<<"$out" | tail -1)
    sent=$(grep -o 'tot_send_msgs=[0-9]*' <<<"$line" | cut -d= -f2)
    recvd=$(grep -o 'tot_recv_msgs=[0-9]*' <<<"$line" | cut -d= -f2)
    lost=$(grep -o 'Total lost packets [0-9]*' <<<"$out" | tail -1 | awk '{print $4}')
    rtt=$(grep -o 'Average round trip delay [0-9.]*' <<<"$out" | tail -1 | awk '{print $5}')
    echo "{\"label\":\"$server\",\"kind\":\"uclient\",\"args\":\"$UCLIENT $*\",\"sent\":${sent:-0},\"received\":${recvd:-0},\"lost\":${lost:-null},\"rtt_ms\":${rtt:-null},\"server_ticks\":$((p1 - p0)),\"machine_ticks\":$((m1 - m0))}" >>"$OUT"
}

read -r -a SERVERS <<<"${SERVERS:-uturn-io-uring uturn-portable coturn null direct}"
# turn-rs only relays between its own clients: not a server of the uturn-bench phases (their
# peers are echo sockets), one of the uclient phase's with -y.
UCLIENT_TURN_RS=0
LOAD_SERVERS=()
for server in "${SERVERS[@]}"; do
    if [ "$server" = turn-rs ]; then
        if [ -x "$TURN_RS" ]; then
            UCLIENT_TURN_RS=1
        else
            echo "bench.sh: turn-rs NOT RUN: $TURN_RS not found; install it with" >&2
            echo "  cargo install turn-server --locked --no-default-features --features udp --root target/turn-rs" >&2
        fi
    else
        LOAD_SERVERS+=("$server")
    fi
done
SERVERS=("${LOAD_SERVERS[@]}")
if [ "$QUICK" -eq 1 ]; then
    ALLOCS=(50 1000); SIZES=(170); BURSTY=(50)
    PHASES=${PHASES:-fixed bursty uclient}
else
    ALLOCS=(50 1000 10000); SIZES=(170 1200); BURSTY=(50 1000)
    PHASES=${PHASES:-fixed bursty saturation uclient}
fi
[ "$UCLIENT_RUNS" -eq 0 ] && PHASES=${PHASES//uclient/}
phase() { [[ " $PHASES " == *" $1 "* ]]; }
phase fixed || ALLOCS=()
phase bursty || BURSTY=()
# The servers of one scenario in round r, the list turned by r - 1 places: over ROUNDS
# rounds each server runs first once (the first run of a scenario can differ from the
# others), and the table gives each server's median.
order() { # round
    local n=${#SERVERS[@]} i
    for ((i = 0; i < n; i++)); do echo "${SERVERS[(i + $1 - 1) % n]}"; done
}
for allocs in "${ALLOCS[@]}"; do
    for size in "${SIZES[@]}"; do
        for round in $(seq "$ROUNDS"); do
            for server in $(order "$round"); do
                run "$server" "$allocs" "$size" --rate "$RATE"
            done
        done
    done
done
# Video-like: each allocation sends a frame of BURST datagrams back to back (one sendmmsg).
for allocs in "${BURSTY[@]}"; do
    for round in $(seq "$ROUNDS"); do
        for server in $(order "$round"); do
            run "$server" "$allocs" 1200 --rate "$RATE" --burst "$BURST"
        done
    done
done
if phase saturation; then
    for scenario in ${SAT_SCENARIOS:-50x170 1000x1200}; do
        IFS=x read -r allocs size <<<"$scenario"
        for round in $(seq "$ROUNDS"); do
            for server in $(order "$round"); do
                run "$server" "$allocs" "$size" --rate "$RATE" --find-max --search-budget 45 \
                    --send-batch "$SAT_BATCH"
            done
        done
    done
fi
if phase uclient; then
    command -v turnutils_uclient >/dev/null || { echo "bench.sh: turnutils_uclient not found" >&2; exit 1; }
    for extra in "" "-y"; do
        servers=(default-uturn default-coturn)
        if [ "$UCLIENT_TURN_RS" -eq 1 ]; then
            if [ -n "$extra" ]; then
                servers+=(turn-rs)
            else
                echo "bench.sh: turn-rs skipped for plain uclient: it refuses peers that are not its own relay addresses" >&2
            fi
        fi
        for server in "${servers[@]}"; do
            # shellcheck disable=SC2086
            uclient_run "$server" $extra
        done
    done
fi

python3 - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ORDER = ["uturn-io-uring", "uturn-portable", "coturn", "null", "direct"]

def f(v, d=2):
    return "-" if v is None else f"{v:.{d}f}"

def median_row(rs):
    """One server's runs of a scenario: the median of every number (the upper median of
    an even count), with the range of its CPU per packet when it ran more than once."""
    out = dict(rs[0])
    for k, v in rs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = sorted(r[k] for r in rs if r.get(k) is not None)
            out[k] = vals[len(vals) // 2] if vals else None
    cpus = sorted(r["cpu_us_per_packet"] for r in rs if r.get("cpu_us_per_packet") is not None)
    out["runs"] = len(rs)
    out["cpu_range"] = f"{cpus[0]:.2f}-{cpus[-1]:.2f}" if len(cpus) > 1 else ""
    return out

def table(title, pick):
    picked = [r for r in rows if pick(r)]
    if not picked:
        return
    print(f"\n{title}")
    hdr = (f'{"allocs":>6} {"size":>5} {"frames":>10} {"server":<15} {"rt/s":>9} {"loss%":>7} {"p50us":>6} '
           f'{"p99us":>6} {"cpu us/pkt":>10} {"x coturn":>8} {"x floor":>7} {"machine":>7} '
           f'{"overhead":>8} {"x coturn":>8} {"runs":>4} {"cpu range":>11}')
    print(hdr)
    print("-" * len(hdr))
    for key in sorted({(r["allocations"], r["size"], r.get("frames", "1xmmsg")) for r in picked}):
        runs = {}
        for r in picked:
            if (r["allocations"], r["size"], r.get("frames", "1xmmsg")) == key:
                runs.setdefault(r["label"], []).append(r)
        group = {label: median_row(rs) for label, rs in runs.items()}
        def get(label, field):
            return group.get(label, {}).get(field)
        direct = get("direct", "machine_us_per_packet")
        def overhead(label):
            m = get(label, "machine_us_per_packet")
            return m - direct if m is not None and direct is not None else None
        for label in ORDER:
            r = group.get(label)
            if not r:
                continue
            c = r["cpu_us_per_packet"]
            xc = f'{c / get("coturn", "cpu_us_per_packet"):.2f}' if c and get("coturn", "cpu_us_per_packet") else "-"
            xf = f'{c / get("null", "cpu_us_per_packet"):.2f}' if c and get("null", "cpu_us_per_packet") else "-"
            o, oc = overhead(label), overhead("coturn")
            xo = f"{o / oc:.2f}" if o is not None and oc and label != "direct" else "-"
            allocs, size, frames = key
            print(f'{allocs:>6} {size:>5} {frames:>10} {label:<15} {r["round_trips_per_s"]:>9.0f} {r["loss_pct"]:>7.3f} '
                  f'{r["p50_us"]:>6} {r["p99_us"]:>6} {f(c, 3):>10} {xc:>8} {xf:>7} '
                  f'{f(r.get("machine_us_per_packet")):>7} {f(o if label != "direct" else None):>8} {xo:>8} '
                  f'{r["runs"]:>4} {r["cpu_range"]:>11}')

print("cpu: server utime+stime per relayed packet (µs); machine: all cores' busy time per relayed")
print("packet (µs, /proc/stat); overhead: machine minus the direct run's machine figure (what the")
print("relay adds beyond delivering the same datagrams); rt/s: round trips/s, each 2 relayed packets;")
print("with ROUNDS > 1 every figure is the server's median over its runs (cpu range: lowest-highest)")
table("Fixed rate", lambda r: r["kind"] == "fixed" and r.get("frames", "1xmmsg") == "1xmmsg")
table("Video-like bursts (frames of datagrams per allocation back to back)",
      lambda r: r["kind"] == "fixed" and r.get("frames", "1xmmsg") != "1xmmsg")
table("Saturation: highest rate found with < 0.1% loss (steps of about 3 s; direct and null "
      "are the generator's own ceiling)", lambda r: r["kind"] == "best")
uc = [r for r in rows if r["kind"] == "uclient"]
if uc:
    print("\nturnutils_uclient through turnutils_peer, servers at their defaults (ticks of 10 ms);")
    print("coturn/row and turn-rs/row: that server's ticks over the row's (above 1: the row uses less)")
    print(f'{"args":<28} {"server":<15} {"sent":>7} {"recv":>7} {"lost":>5} {"rtt ms":>7} '
          f'{"srv ticks":>9} {"mach ticks":>10} {"srv us/msg":>10} {"coturn/row":>10} {"turn-rs/row":>11}')
    by = {(r["args"], r["label"]): r for r in uc}
    def ratio(args, label, r):
        other = by.get((args, label))
        if not other or label == r["label"] or not r["server_ticks"]:
            return "-"
        return f'{other["server_ticks"] / r["server_ticks"]:.2f}'
    for (args, label), r in sorted(by.items()):
        per = r["server_ticks"] * 1e4 / r["received"] if r["received"] else None
        print(f'{args:<28} {label:<15} {r["sent"]:>7} {r["received"]:>7} {str(r["lost"]):>5} '
              f'{str(r["rtt_ms"]):>7} {r["server_ticks"]:>9} {r["machine_ticks"]:>10} {f(per):>10} '
              f'{ratio(args, "default-coturn", r):>10} {ratio(args, "turn-rs", r):>11}')
print(f"\nraw results: {sys.argv[1]}")
EOF
