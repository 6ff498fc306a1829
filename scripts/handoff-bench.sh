#!/usr/bin/env bash
# Relay to relay between shards, A/B on one binary: coturn's turnutils_uclient -y (client to
# client: every client's peer is another client's relay address) against uturn at its
# defaults (one shard per core), interleaved rounds of
#   ring      handoff between shards, wakes through IORING_OP_MSG_RING (the default)
#   eventfd   handoff between shards, wakes through the target's eventfd
#   off       no handoff between shards (pairs on two shards go through the kernel)
#   one       uturn on one shard (--cores 0: every pair handed over on that shard)
# Per run: server CPU ticks (utime+stime, 10 ms), and from `perf stat` on the server its
# task clock (µs per message), system calls, context switches, IORING_OP_MSG_RING
# submissions (the wakes of another shard) and wakeups it made of other threads (less
# sensitive to a loaded machine than ticks), all per message; the datagrams handed over
# between shards (from the stop log); the load average before and after; uclient's totals,
# losses and average round trip.
#
# usage: scripts/handoff-bench.sh [ROUNDS (2)] [MODES ("ring eventfd off one")]
# env: UCLIENT ("-m 50 -n 2000 -l 170 -z 1 -y"), OUT (target/handoff-bench-DATE.txt),
#      RECORD=1: also `perf record -g` the server, into target/handoff-bench-MODE-ROUND.data,
#      UTURN_B=path: a second build; a mode ending in -b (e.g. ring-b) runs it
# Modes also: waitN (--batch-wait-us N), coresLIST (--cores LIST), turn-rs (turn-rs at its
# defaults, as scripts/bench.sh runs it; its own drops show in lost).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
MODES=${2:-ring eventfd off one}
UCLIENT=${UCLIENT:--m 50 -n 2000 -l 170 -z 1 -y}
OUT=${OUT:-target/handoff-bench-$(date +%Y%m%d-%H%M%S).txt}
for tool in turnutils_uclient turnutils_peer perf python3; do
    command -v "$tool" >/dev/null || { echo "handoff-bench.sh: $tool not found" >&2; exit 1; }
done
cargo build --release --bins --quiet
mkdir -p "$(dirname "$OUT")"

SRV="" PEER="" PERF=""
cleanup() {
    for pid in $PERF $PEER $SRV; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $PERF $PEER $SRV; do wait "$pid" 2>/dev/null || true; done
    SRV="" PEER="" PERF=""
}
trap cleanup EXIT INT TERM

ticks() { awk '{sub(/.*\) /, ""); print $12+$13}' "/proc/$1/stat"; }

run() { # mode round
    local mode=$1 round=$2 extra=() env=() bin=target/release/uturn label=$1
    if [[ "$mode" == *-b ]]; then
        bin=${UTURN_B:?a -b mode needs UTURN_B}
        mode=${mode%-b}
    fi
    case "$mode" in
        ring) ;;
        eventfd) env=(UTURN_TEST_HANDOFF_EVENTFD=true) ;;
        off) env=(UTURN_TEST_HANDOFF_SLOTS=0) ;;
        one) extra=(--cores 0) ;;
        wait*) extra=(--batch-wait-us "${mode#wait}") ;;
        cores*) extra=(--cores "${mode#cores}") ;;
        turn-rs) bin=${TURN_RS:-target/turn-rs/bin/turn-server} ;;
        *) echo "handoff-bench.sh: unknown mode $mode" >&2; exit 2 ;;
    esac
    local port
    port=$(python3 -c "
import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', 0)); p = u.getsockname()[1]
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(('127.0.0.1', p + 1)); print(p); break
    except OSError:
        pass
")
    local log="target/handoff-bench-server-$label-$round.log" stat="target/handoff-bench-perf-$label-$round.txt"
    if [ "$mode" = turn-rs ]; then
        [ -x "$bin" ] || { echo "handoff-bench.sh: turn-rs NOT RUN: $bin not found (see scripts/bench.sh --help)" >&2; return 0; }
        # As scripts/bench.sh runs it: its defaults, one worker per core.
        printf '[server]\nrealm = "example.org"\nport-range = "49152..65535"\nmax-threads = %s\n[[server.interfaces]]\ntransport = "udp"\nlisten = "127.0.0.1:%s"\nexternal = "127.0.0.1:%s"\n[log]\nlevel = "warn"\nstdout = true\n[auth]\nenable-hooks-auth = false\n[auth.static-credentials]\nalice = "secret"\n' \
            "$(nproc)" "$port" "$port" >target/handoff-bench-turn-rs.toml
        "$bin" --config target/handoff-bench-turn-rs.toml >"$log" 2>&1 &
    else
        env "${env[@]}" "$bin" --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 \
            --listening-port "$port" --min-port 20000 --max-port 39999 --realm example.org \
            --user alice:secret --lt-cred-mech --allow-loopback-peers --no-tcp --no-tls \
            --log-level info "${extra[@]}" >"$log" 2>&1 &
    fi
    SRV=$!
    turnutils_peer -L 127.0.0.1 -p $((port + 1)) >/dev/null 2>&1 &
    PEER=$!
    for _ in $(seq 100); do
        ss -Hluna "sport = :$port" 2>/dev/null | grep -q . && break
        sleep 0.1
    done
    # IORING_OP_MSG_RING is opcode 40.
    perf stat -e task-clock,raw_syscalls:sys_enter,context-switches,sched:sched_wakeup \
        -e io_uring:io_uring_submit_req --filter 'opcode == 40' -p "$SRV" -o "$stat" &
    PERF=$!
    if [ "${RECORD:-0}" = 1 ]; then
        perf record -q -g -o "target/handoff-bench-$mode-$round.data" -p "$SRV" 2>/dev/null &
        PERF="$PERF $!"
    fi
    sleep 0.3
    local l0 t0 out t1 l1
    l0=$(cut -d' ' -f1-3 /proc/loadavg)
    t0=$(ticks "$SRV")
    # shellcheck disable=SC2086
    out=$(timeout 120 turnutils_uclient $UCLIENT -e 127.0.0.1 -r $((port + 1)) -u alice -w secret \
        -p "$port" 127.0.0.1 2>&1 || true)
    t1=$(ticks "$SRV")
    l1=$(cut -d' ' -f1-3 /proc/loadavg)
    for pid in $PERF; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in $PERF; do wait "$pid" 2>/dev/null || true; done
    PERF=""
    cleanup
    local sys cs clock wakeups rings sent recvd lost rtt crossed
    count() { awk -v e="$1" '$0 ~ e {gsub(",", "", $1); print $1; exit}' "$stat"; }
    sys=$(count raw_syscalls)
    cs=$(count context-switches)
    clock=$(count task-clock)
    wakeups=$(count sched_wakeup)
    rings=$(count io_uring_submit_req)
    sent=$(grep -o 'tot_send_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2)
    recvd=$(grep -o 'tot_recv_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2)
    lost=$(grep -o 'Total lost packets [0-9]*' <<<"$out" | tail -1 | awk '{print $4}')
    rtt=$(grep -o 'Average round trip delay [0-9.]*' <<<"$out" | tail -1 | awk '{print $5}')
    crossed=$( (grep -o 'relayed_cross_shard: [0-9]*' "$log" || true) | awk '{s += $2} END {print s + 0}')
    per() { awk -v a="${1:-0}" -v n="${recvd:-0}" -v k="${2:-1}" 'BEGIN { if (n > 0) printf "%.3f", a * k / n; else print "?" }'; }
    printf '%-8s %5s %6s %6s %5s %7s %5s %8s %7s %7s %7s %7s %7s  load %s -> %s\n' "$label" "$round" \
        "${sent:-0}" "${recvd:-0}" "${lost:-?}" "${rtt:-?}" "$((t1 - t0))" "$(per "$clock" 1000)" \
        "$(per "$sys")" "$(per "$cs")" "$(per "$rings")" "$(per "$wakeups")" "$(per "$crossed")" \
        "$l0" "$l1" | tee -a "$OUT"
}

echo "per message: task clock (us), system calls, context switches, MSG_RING submissions," \
    "wakeups the server made, datagrams handed over between shards" | tee -a "$OUT"
printf '%-8s %5s %6s %6s %5s %7s %5s %8s %7s %7s %7s %7s %7s\n' mode round sent recv lost rtt_ms \
    ticks clock_us syscall ctx_sw msgring wakeup crossed | tee -a "$OUT"
for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        run "$mode" "$round"
    done
done
echo "results: $OUT"
