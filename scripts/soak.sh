#!/usr/bin/env bash
# scripts/soak.sh - a long run of everything at once against one gateway, sampled, with a verdict.
#
# Starts `target/release/gateway --listen 127.0.0.1:0 --workers 2` with small bounds
# (--max-backlog 1 MiB, --max-queued 256 KiB, so pushback and slow-consumer closes happen), then
# until --duration is over runs four loads side by side, each a loop of loadgen runs:
#   churn   connect 2,000 clients to /echo, hold 5 s, close (again and again);
#   fanout  500 subscribers of chat/soak, 200 msg/s over HTTP, 60 s per run: no subscriber may
#           miss an accepted message (publishes refused 503 under the flood are pushback);
#   flood   50 subscribers of chat/flood, a 10 s publish flood of 4 KiB messages, then 20 s rest;
#   slow    10 subscribers of chat/soak that never read (held 30 s, then dropped), so the
#           gateway closes them as slow consumers while the fan-out goes on.
# Every --interval it samples the gateway: RSS, open descriptors, CPU share over the interval,
# connections, and the p99 publish-to-write latency of the interval (from /metrics). After the
# loads stop and 15 s of quiet, a last sample.
#
# Fails (exit 1) if a fan-out run lost or duplicated a message, a churn run failed, the gateway died, the
# descriptors did not come back (final > first + 16), or RSS trended upward (median of the
# last quarter of the samples above 1.25 x the second quarter's + 8 MiB). Writes samples.tsv,
# the loadgen logs and soak.svg (scripts/soak-plot.py) to --out.
#
# Usage: scripts/soak.sh [--duration 1h] [--interval 10s] [--out DIR] [--no-build]
# Exit codes: 0 passed; 1 failed (see above); 2 usage. Loopback only; it stops by itself.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
DURATION=1h
INTERVAL=10s
OUT=$REPO_ROOT/target/soak
BUILD=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --duration) DURATION=$2; shift 2 ;;
    --interval) INTERVAL=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "soak: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# Seconds from 90s, 10m, 1h or a plain number.
seconds() {
  local v=$1
  case $v in
    *h) echo $(( ${v%h} * 3600 )) ;;
    *m) echo $(( ${v%m} * 60 )) ;;
    *s) echo "${v%s}" ;;
    *) echo "$v" ;;
  esac
}
TOTAL=$(seconds "$DURATION")
EVERY=$(seconds "$INTERVAL")
[[ $TOTAL =~ ^[0-9]+$ && $EVERY =~ ^[0-9]+$ && $EVERY -gt 0 ]] || { echo "soak: bad duration" >&2; exit 2; }

cd "$REPO_ROOT"
[[ $BUILD -eq 1 ]] && cargo build --release -q -p gateway -p loadgen
BIN=${CARGO_TARGET_DIR:-target}/release
mkdir -p "$OUT"
rm -f "$OUT"/*.log "$OUT"/failures "$OUT"/samples.tsv
touch "$OUT/failures"

"$BIN/gateway" --listen 127.0.0.1:0 --workers 2 --max-backlog 1048576 --max-queued 262144 \
  2>"$OUT/gateway.log" &
GW=$!
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
until PORT=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\) .*/\1/p' "$OUT/gateway.log") && [[ -n $PORT ]]; do
  kill -0 $GW 2>/dev/null || { echo "soak: the gateway did not start" >&2; cat "$OUT/gateway.log"; exit 1; }
  sleep 0.1
done
BASE=ws://127.0.0.1:$PORT
END=$(( $(date +%s) + TOTAL ))
echo "soak: gateway pid $GW on port $PORT for ${TOTAL}s, sampling every ${EVERY}s into $OUT"

# Runs "$@" until END; a non-zero status is written to failures when $1 (the name) is fatal.
loop() {
  local name=$1 fatal=$2 rest=$3; shift 3
  local n=0
  local status
  while (( $(date +%s) < END )); do
    n=$((n + 1))
    status=0
    "$@" >>"$OUT/$name.log" 2>&1 || status=$?
    if [[ $fatal == yes && $status -ne 0 ]]; then
      echo "$name run $n failed (status $status; see $name.log)" >>"$OUT/failures"
    fi
    sleep "$rest"
  done
}

# One fan-out run. Publishes the gateway refuses (503 while the flood fills the backlog) are
# pushback, not loss: the run fails only if a subscriber missed or got twice an accepted
# message, or a connection failed.
fanout_run() {
  local out
  out=$("$BIN/loadgen" "$@" 2>&1) || true
  printf '%s\n' "$out"
  grep -q 'missing at the end 0 over 0 messages, 0 duplicated, 0 malformed' <<<"$out" &&
    grep -q ', 0 failed,' <<<"$out"
}

loop churn yes 1 "$BIN/loadgen" --url "$BASE/echo" --scenario connect --conns 2000 \
  --connect-rate 2000 --duration 5s -q &
loop fanout yes 1 fanout_run --url "$BASE/ws/chat/soak" --scenario fanout --conns 500 \
  --rate 200 --duration 60s &
loop flood no 20 "$BIN/loadgen" --url "$BASE/ws/chat/flood" --scenario flood --conns 50 \
  --size 4096 --duration 10s -q &
cat >"$OUT/slow.py" <<'EOF'
import base64, os, socket, sys, time
port = int(sys.argv[1])
socks = []
for _ in range(10):
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /ws/chat/soak HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
               % key).encode())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    socks.append(s)
time.sleep(30)  # never read: the gateway closes these as slow consumers
EOF
loop slow no 1 python3 "$OUT/slow.py" "$PORT" &

# One sample: time, RSS KiB, descriptors, CPU % over the interval, connections, p99 ms.
CLK=$(getconf CLK_TCK)
prev_ticks=0 prev_t=0 prev_buckets=""
sample() {
  local t rss fds ticks cpu metrics conns buckets p99
  t=$(date +%s)
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$GW/status")
  fds=$(ls "/proc/$GW/fd" | wc -l)
  ticks=$(awk '{print $14 + $15}' "/proc/$GW/stat")
  cpu=0
  if (( prev_t > 0 && t > prev_t )); then
    cpu=$(( (ticks - prev_ticks) * 100 / CLK / (t - prev_t) ))
  fi
  metrics=$(python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://127.0.0.1:$PORT/metrics', timeout=5).read().decode())")
  conns=$(awk '$1 == "gateway_open_connections" {print $2}' <<<"$metrics")
  buckets=$(grep '^gateway_delivery_latency_seconds_bucket' <<<"$metrics" | tr '\n' ';')
  p99=$(python3 - "$prev_buckets" "$buckets" <<'PY'
import re, sys
def parse(s):
    out = []
    for line in filter(None, s.split(";")):
        m = re.search(r'le="([^"]+)"\} (\d+)', line)
        if m:
            out.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), int(m.group(2))))
    return out
before, now = dict(parse(sys.argv[1])), parse(sys.argv[2])
delta = [(le, n - before.get(le, 0)) for le, n in now]
total = delta[-1][1] if delta else 0
if total <= 0:
    print("-")
else:
    for le, n in delta:
        if n >= 0.99 * total:
            print("%.1f" % (le * 1000) if le != float("inf") else "inf")
            break
PY
)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$rss" "$fds" "$cpu" "$conns" "$p99" >>"$OUT/samples.tsv"
  prev_ticks=$ticks prev_t=$t prev_buckets=$buckets
}

printf 'time\trss_kib\tfds\tcpu_pct\tconns\tp99_ms\n' >"$OUT/samples.tsv"
while (( $(date +%s) < END )); do
  kill -0 $GW 2>/dev/null || { echo "the gateway died" >>"$OUT/failures"; break; }
  sample
  sleep "$EVERY"
done
wait $(jobs -p | grep -v "^$GW\$") 2>/dev/null || true
sleep 15
kill -0 $GW 2>/dev/null && sample

python3 "$SCRIPT_DIR/soak-plot.py" "$OUT/samples.tsv" "$OUT/soak.svg" || true
verdict=$(python3 - "$OUT/samples.tsv" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n")[1:] if l]
rss = [int(r[1]) for r in rows]
fds = [int(r[2]) for r in rows]
bad = []
if len(rss) >= 8:
    q = len(rss) // 4
    second, last = statistics.median(rss[q:2 * q]), statistics.median(rss[-q:])
    if last > second * 1.25 + 8 * 1024:
        bad.append("RSS trends upward: %d KiB -> %d KiB" % (second, last))
if fds and fds[-1] > fds[0] + 16:
    bad.append("descriptors did not come back: %d at first, %d at the end" % (fds[0], fds[-1]))
print("; ".join(bad))
PY
)
[[ -n $verdict ]] && echo "$verdict" >>"$OUT/failures"
echo "soak: $(($(wc -l <"$OUT/samples.tsv") - 1)) samples; fanout runs: $(grep -c '^loadgen: Fanout' "$OUT/fanout.log" || true)"
if [[ -s $OUT/failures ]]; then
  echo "soak: FAILED:" >&2
  cat "$OUT/failures" >&2
  exit 1
fi
echo "soak: passed (samples: $OUT/samples.tsv, plot: $OUT/soak.svg)"
