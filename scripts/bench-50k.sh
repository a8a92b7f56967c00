#!/usr/bin/env bash
# Opens 50,000 WebSocket connections on one machine as one audience, and reports what they cost
# the gateway and how a message reaches all of them.
#
# One process may open only as many sockets as its open-file limit allows (here a hard 20,000),
# so this starts ceil(CONNS / PER_GATEWAY) gateway processes sharing one port with --reuse-port
# (SO_REUSEPORT across processes: the kernel spreads new connections over them) and sharing
# their topics through a Redis bus (--bus; a redis-server of its own on a free port, without
# persistence, unless BUS names one), then runs against that port either
#   MODE=fanout (default): loadgen --conns CONNS --scenario fanout --rate RATE --duration DURATION
#     every connection subscribes to one chat room; the publisher POSTs to one process; the bus
#     brings every message to the subscribers of all processes. Prints delivered, lost and
#     duplicated deliveries and the delivery latency (p50, p99, max);
#   MODE=connect: loadgen --conns CONNS --scenario connect --duration DURATION (memory). loadgen itself splits into worker processes for the same reason and spreads
# its sockets over source addresses 127.0.0.1, .2, ... (about 28k ephemeral ports each).
#
# It prints the gateways' resident memory (VmRSS, summed) before the ramp and with every
# connection open, the difference per connection, and the CPU time of the gateways beside
# loadgen's own (from /proc/PID/stat and getrusage), so it is plain which side was busy.
#
# Environment (defaults in brackets): MODE [fanout], RATE (fanout messages/s) [2], SIZE (fanout
# message bytes) [64], BUS (a redis:// URL; empty: start one; `none`: no bus, for a
# single-process comparison) [], CONNS [50000], PORT [9350], PER_GATEWAY [19000],
# WORKERS per gateway [1], DURATION [10s], CONNECT_RATE [10000], PER_ADDR (connections per
# loadgen source address) [5000], OUT (where the JSON and HTML reports go) [target/bench-50k],
# NO_BUILD (set: use the binaries already in target/release). Traffic stays on 127.0.0.0/8 and
# the run ends by itself.
set -euo pipefail

# Configuration is by environment only; any argument gets the header above and an exit.
if [ $# -gt 0 ]; then
  case "$1" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "$(basename "$0"): takes no arguments (configure with environment variables; see --help)" >&2; exit 2 ;;
  esac
fi

MODE=${MODE:-fanout}
RATE=${RATE:-2}
SIZE=${SIZE:-64}
BUS=${BUS:-}
CONNS=${CONNS:-50000}
PORT=${PORT:-9350}
PER_GATEWAY=${PER_GATEWAY:-19000}
WORKERS=${WORKERS:-1}
DURATION=${DURATION:-10s}
CONNECT_RATE=${CONNECT_RATE:-10000}
PER_ADDR=${PER_ADDR:-5000}
OUT=${OUT:-target/bench-50k}

cd "$(dirname "$0")/.."
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p gateway -p loadgen
mkdir -p "$OUT"

gateways=$(( (CONNS + PER_GATEWAY - 1) / PER_GATEWAY ))
pids=()
redis_pid=
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -z "$redis_pid" ] || kill "$redis_pid" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

bus_flag=(--bus "$BUS")
if [ "$BUS" = none ]; then
    bus_flag=()
elif [ -z "$BUS" ]; then
    command -v redis-server >/dev/null || { echo "bench-50k: needs redis-server (apt-get install redis-server) or BUS=redis://..." >&2; exit 1; }
    redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir /tmp \
        >"$OUT/redis.log" 2>&1 &
    redis_pid=$!
    BUS="redis://127.0.0.1:$redis_port"
    bus_flag=(--bus "$BUS")
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && break
        sleep 0.1
    done
    echo "bench-50k: redis-server on 127.0.0.1:$redis_port (no persistence)"
fi

echo "bench-50k: starting $gateways gateway process(es) on 127.0.0.1:$PORT (--reuse-port --workers $WORKERS --bus $BUS)"
for _ in $(seq "$gateways"); do
    target/release/gateway --listen "127.0.0.1:$PORT" --reuse-port --workers "$WORKERS" \
        "${bus_flag[@]}" --handshake-timeout 30s 2>>"$OUT/gateway.log" &
    pids+=("$!")
done
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
sleep 0.3

pid_list=$(IFS=,; echo "${pids[*]}")
if [ "$MODE" = fanout ]; then
    set +e
    target/release/loadgen --url "ws://127.0.0.1:$PORT/ws/chat/bench50k" --conns "$CONNS" \
        --scenario fanout --rate "$RATE" --size "$SIZE" --duration "$DURATION" \
        --connect-rate "$CONNECT_RATE" --per-addr "$PER_ADDR" --timeout 30s --target-pid "$pid_list" \
        --json "$OUT/fanout.json" --report "$OUT/fanout.html"
    status=$?
    set -e
    python3 - "$OUT/fanout.json" "$gateways" "$([ "$BUS" = none ] && echo "no bus" || echo "bus $BUS")" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
f = r["fanout"]
t = r["cpu"]["targets"]
gw_cpu = sum(x["cpu_s"] or 0 for x in t)
lat = f["latency"]
print()
print(f"bench-50k: {f['subscribers']} subscribers over {sys.argv[2]} gateway process(es) sharing one port ({sys.argv[3]})")
print(f"  published     {f['accepted']} accepted of {f['published']} sent")
print(f"  deliveries    {f['delivered']} of {f['expected']} expected: {f['lost']} lost, {f['duplicates']} duplicated")
print(f"  latency       p50 {lat['p50_us']/1e3:.2f} ms  p99 {lat['p99_us']/1e3:.2f} ms  max {lat['max_us']/1e3:.2f} ms")
print(f"  CPU time      gateways {gw_cpu:.2f} s over {r['timing']['wall_s']:.1f} s wall")
PY
    echo "  reports       $OUT/fanout.json, $OUT/fanout.html"
    exit "$status"
fi
set +e
target/release/loadgen --url "ws://127.0.0.1:$PORT/echo" --conns "$CONNS" --scenario connect \
    --duration "$DURATION" --connect-rate "$CONNECT_RATE" --per-addr "$PER_ADDR" --target-pid "$pid_list" \
    --json "$OUT/connect.json" --report "$OUT/connect.html"
status=$?
set -e

python3 - "$OUT/connect.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["cpu"]["targets"]
before = sum(x["rss_before"] or 0 for x in t)
peak = sum(x["rss_at_ramp_end"] or 0 for x in t)
after = sum(x["rss_after"] or 0 for x in t)
open_ = r["timing"]["open_at_ramp_end"]
gw_cpu = sum(x["cpu_s"] or 0 for x in t)
lg_cpu = r["cpu"]["loadgen_user_s"] + r["cpu"]["loadgen_sys_s"]
mib = lambda b: b / 1048576
print()
print(f"bench-50k: {open_} connections open at once after {r['timing']['ramp_s']:.2f} s "
      f"({r['connect']['connected']} connected, {r['connect']['failed']} failed) "
      f"over {len(t)} gateway process(es)")
print(f"  gateway RSS   {mib(before):.1f} MiB before, {mib(peak):.1f} MiB with all open, "
      f"{mib(after):.1f} MiB after closing")
if open_:
    print(f"  per connection  {(peak - before) / open_:.0f} bytes (RSS growth / open connections)")
print(f"  CPU time      gateways {gw_cpu:.2f} s, loadgen {lg_cpu:.2f} s "
      f"over {r['timing']['wall_s']:.1f} s wall ({r['cpu']['cores']} cores)")
p = r["connect"]["handshake"]
print(f"  handshake     p50 {p['p50_us']/1e3:.2f} ms  p99 {p['p99_us']/1e3:.2f} ms  max {p['max_us']/1e3:.2f} ms")
PY
echo "  reports       $OUT/connect.json, $OUT/connect.html"
exit "$status"
