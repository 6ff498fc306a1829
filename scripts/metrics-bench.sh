#!/usr/bin/env bash
# Forwarding cost with the Prometheus endpoint off vs on and scraped every second, end to
# end: the same uturn-bench load against uturn without --prometheus and with it (a scraper
# GETs /metrics once a second for the whole run), alternating ROUNDS times; prints server
# CPU per relayed packet for each and the ratio. Loopback only. (The loop: scripts/lib/onoff.sh.)
#
# usage: scripts/metrics-bench.sh   env: ROUNDS (3), ALLOCS (1000), RATE (20000), DURATION (5),
#        SERVER_CORE (0), LOAD_CORE (1), SKIP_BUILD=1 to use the release binaries as they are
set -euo pipefail
cd "$(dirname "$0")/.."
ONOFF_NAME=metrics
PROM_PORT=""
SCRAPER=""

onoff_args() {
    if [ "$1" = on ]; then
        PROM_PORT=$(free_port STREAM)
        ONOFF_ARGS=(--prometheus --prometheus-port "$PROM_PORT")
    fi
}
onoff_up() {
    if [ "$1" = on ]; then
        (while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$PROM_PORT/metrics"; done) &
        SCRAPER=$!
    fi
}
onoff_down() {
    if [ -n "$SCRAPER" ]; then kill "$SCRAPER" 2>/dev/null || true; wait "$SCRAPER" 2>/dev/null || true; fi
    SCRAPER=""
}
onoff_cleanup() { onoff_down; }

. scripts/lib/onoff.sh
onoff_main
