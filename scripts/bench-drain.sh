#!/usr/bin/env bash
# scripts/bench-drain.sh - how long a graceful drain of N open WebSocket connections takes.
#
# Starts `target/release/gateway --listen 127.0.0.1:0 --drain DRAIN`, opens N idle connections
# to /echo with `loadgen --scenario connect --hold-stdin` (spread over 127.0.0.x), sends SIGTERM
# once all are open, and measures the time until the gateway exits (it sends close 1001 to each
# connection at a random moment within DRAIN, waits for the close handshakes, exits 0). The
# holder's summary then says how the connections ended.
#
# Usage: scripts/bench-drain.sh [--conns N] [--drain DURATION] [--workers W]
# Exit codes: 0 measured; 1 the gateway did not drain or exit 0; 2 usage.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
CONNS=10000
DRAIN=10s
WORKERS=2
while [[ $# -gt 0 ]]; do
  case $1 in
    --conns) CONNS=$2; shift 2 ;;
    --drain) DRAIN=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    -h|--help) sed -n 2,11p "$0"; exit 0 ;;
    *) echo "bench-drain: unknown argument $1" >&2; exit 2 ;;
  esac
done

cd "$REPO_ROOT"
cargo build --release -q -p gateway -p loadgen
TARGET=${CARGO_TARGET_DIR:-target}/release
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

"$TARGET/gateway" --listen 127.0.0.1:0 --workers "$WORKERS" --drain "$DRAIN" 2>"$OUT/gateway.log" &
GW=$!
until port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\) .*/\1/p' "$OUT/gateway.log") && [[ -n $port ]]; do
  kill -0 $GW 2>/dev/null || { cat "$OUT/gateway.log"; exit 1; }
  sleep 0.1
done

mkfifo "$OUT/hold"
"$TARGET/loadgen" --scenario connect --conns "$CONNS" --hold-stdin --timeout 30s \
  --url "ws://127.0.0.1:$port/echo" <"$OUT/hold" >"$OUT/loadgen.out" 2>"$OUT/loadgen.err" &
HOLDER=$!
exec 3>"$OUT/hold"
until grep -q '^open' "$OUT/loadgen.out" 2>/dev/null; do
  kill -0 $HOLDER 2>/dev/null || { cat "$OUT/loadgen.err"; exit 1; }
  sleep 0.2
done
echo "bench-drain: $(cat "$OUT/loadgen.out") connections open; SIGTERM"

start=$(date +%s.%N)
kill -TERM $GW
status=0
wait $GW || status=$?
end=$(date +%s.%N)
echo 1 >&3
exec 3>&-
wait $HOLDER || true

echo "bench-drain: gateway exit status $status after $(echo "$end - $start" | bc) s (--drain $DRAIN, $CONNS connections)"
grep -E 'drain' "$OUT/gateway.log" || true
grep -iE 'closed|1001|fail' "$OUT/loadgen.err" "$OUT/loadgen.out" | head -20 || true
[[ $status -eq 0 ]]
