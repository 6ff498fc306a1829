#!/usr/bin/env bash
# Forwarding cost with the Redis stats thread on vs off, end to end: the same uturn-bench
# load against uturn without Redis and with a redis-server of this script's own (with
# --stats-interval 1 so every allocation publishes traffic every second, far more than
# coturn's every-4096-packets), alternating ROUNDS times; prints server CPU per relayed
# packet for each and the ratio. Loopback only. (The loop: scripts/lib/onoff.sh.)
#
# usage: scripts/stats-bench.sh     env: ROUNDS (3), ALLOCS (1000), RATE (20000), DURATION (5),
#        SERVER_CORE (0), LOAD_CORE (1), SKIP_BUILD=1 to use the release binaries as they are
set -euo pipefail
cd "$(dirname "$0")/.."
ONOFF_NAME=stats
REDIS_PID=""

onoff_args() {
    if [ "$1" = on ]; then
        ONOFF_ARGS=(--redis-url "redis://127.0.0.1:$REDIS_PORT/0" --stats-interval 1)
    fi
}
onoff_cleanup() {
    if [ -n "$REDIS_PID" ]; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
}

. scripts/lib/onoff.sh
REDIS_PORT=$(free_port STREAM)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
REDIS_PID=$!
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
onoff_main
