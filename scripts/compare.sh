#!/usr/bin/env bash
# Runs the same loadgen scenarios against the gateway and against a reference peer (a
# tokio-tungstenite echo + broadcast server written the way a typical Rust user would, kept in
# scripts/peers/tokio-tungstenite as its own cargo project), and prints a side-by-side table:
#
#   memory per idle connection   loadgen --scenario connect, RSS growth / open connections
#   echo msgs/s and round trip   loadgen --scenario echo
#   fan-out p99 to N subscribers loadgen --scenario fanout --publisher ws (a chat client
#                                publishes; both servers deliver it to the whole room)
#
# Both servers run with two worker threads (the gateway with --workers 2, the peer on tokio's
# default of one per CPU, here 2) on the same machine as loadgen, whose own CPU use is shown
# beside theirs. Each server is one fresh process for all three scenarios; memory is measured
# first, on the fresh process.
#
# Environment (defaults in brackets): IDLE_CONNS [10000], ECHO_CONNS [1000], PIPELINE [1],
# SIZE [64], FANOUT_SUBS [10000], FANOUT_RATE [10], DURATION [5s], GATEWAY_PORT [9450],
# PEER_PORT [9460], OUT [target/compare], NO_BUILD (set: use binaries already built).
# Traffic stays on 127.0.0.0/8 and every run ends by itself.
set -euo pipefail

# Configuration is by environment only; any argument gets the header above and an exit.
if [ $# -gt 0 ]; then
  case "$1" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "$(basename "$0"): takes no arguments (configure with environment variables; see --help)" >&2; exit 2 ;;
  esac
fi

IDLE_CONNS=${IDLE_CONNS:-10000}
ECHO_CONNS=${ECHO_CONNS:-1000}
PIPELINE=${PIPELINE:-1}
SIZE=${SIZE:-64}
FANOUT_SUBS=${FANOUT_SUBS:-10000}
FANOUT_RATE=${FANOUT_RATE:-10}
DURATION=${DURATION:-5s}
GATEWAY_PORT=${GATEWAY_PORT:-9450}
PEER_PORT=${PEER_PORT:-9460}
OUT=${OUT:-target/compare}

cd "$(dirname "$0")/.."
root=$(pwd)
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release -q -p gateway -p loadgen
    cargo build --release -q --manifest-path scripts/peers/tokio-tungstenite/Cargo.toml \
        --target-dir "$root/target/peers"
fi
mkdir -p "$OUT"
loadgen="$root/target/release/loadgen"

server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "compare: nothing listens on 127.0.0.1:$1" >&2
    return 1
}

# run NAME PORT COMMAND...: starts the server, runs the three scenarios, stops it.
run() {
    local name=$1 port=$2
    shift 2
    echo "compare: $name"
    "$@" 2>>"$OUT/$name.log" &
    server_pid=$!
    wait_port "$port"
    sleep 0.5
    local common=(-q --target-pid "$server_pid" --duration "$DURATION")
    "$loadgen" "${common[@]}" --url "ws://127.0.0.1:$port/echo" --scenario connect \
        --conns "$IDLE_CONNS" --json "$OUT/$name-idle.json" >"$OUT/$name-idle.txt" || true
    "$loadgen" "${common[@]}" --url "ws://127.0.0.1:$port/echo" --scenario echo \
        --conns "$ECHO_CONNS" --pipeline "$PIPELINE" --size "$SIZE" \
        --json "$OUT/$name-echo.json" --report "$OUT/$name-echo.html" >"$OUT/$name-echo.txt" || true
    "$loadgen" "${common[@]}" --url "ws://127.0.0.1:$port/ws/chat/compare" --scenario fanout \
        --publisher ws --conns "$FANOUT_SUBS" --rate "$FANOUT_RATE" --size "$SIZE" \
        --json "$OUT/$name-fanout.json" --report "$OUT/$name-fanout.html" >"$OUT/$name-fanout.txt" || true
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

run gateway "$GATEWAY_PORT" "$root/target/release/gateway" --listen "127.0.0.1:$GATEWAY_PORT" --workers 2
run peer "$PEER_PORT" "$root/target/peers/release/peer-tokio-tungstenite" "127.0.0.1:$PEER_PORT"

python3 - "$OUT" "$IDLE_CONNS" "$ECHO_CONNS" "$PIPELINE" "$SIZE" "$FANOUT_SUBS" "$FANOUT_RATE" <<'PY'
import json, os, sys
out, idle, echo_conns, pipeline, size, subs, rate = sys.argv[1:]

def load(name, scenario):
    try:
        return json.load(open(os.path.join(out, f"{name}-{scenario}.json")))
    except (OSError, ValueError):
        return None

def mem_per_conn(r):
    if not r or not r["timing"]["open_at_ramp_end"]:
        return None
    t = r["cpu"]["targets"][0]
    if t["rss_before"] is None or t["rss_at_ramp_end"] is None:
        return None
    return (t["rss_at_ramp_end"] - t["rss_before"]) / r["timing"]["open_at_ramp_end"]

def get(r, *path):
    for p in path:
        if r is None:
            return None
        r = r.get(p) if isinstance(r, dict) else None
    return r

rows = []  # (label, gateway, peer, unit, lower_is_better)
g, p = load("gateway", "idle"), load("peer", "idle")
rows.append((f"memory per idle connection ({idle} open)", mem_per_conn(g), mem_per_conn(p), "B", True))
g, p = load("gateway", "echo"), load("peer", "echo")
rows.append((f"echo msgs/s ({echo_conns} conns x {pipeline} x {size} B)", get(g, "echo", "msgs_per_s"), get(p, "echo", "msgs_per_s"), "/s", False))
rows.append(("echo round trip p99", get(g, "echo", "rtt", "p99_us"), get(p, "echo", "rtt", "p99_us"), "us", True))
def cpu_per_msg(r):
    t = get(r, "cpu", "targets")
    n = get(r, "echo", "verified")
    if not t or t[0]["cpu_s"] is None or not n:
        return None
    return t[0]["cpu_s"] / n * 1e6
rows.append(("echo server CPU per message", cpu_per_msg(g), cpu_per_msg(p), "us", True))
rows.append(("echo server CPU (share of one core)", get(g, "cpu", "targets_pct"), get(p, "cpu", "targets_pct"), "% core", None))
rows.append(("echo loadgen CPU (share of one core)", get(g, "cpu", "loadgen_pct"), get(p, "cpu", "loadgen_pct"), "% core", None))
g, p = load("gateway", "fanout"), load("peer", "fanout")
rows.append((f"fan-out p99 to {subs} subscribers ({rate} msg/s)", get(g, "fanout", "latency", "p99_us"), get(p, "fanout", "latency", "p99_us"), "us", True))
rows.append(("fan-out p50", get(g, "fanout", "latency", "p50_us"), get(p, "fanout", "latency", "p50_us"), "us", True))
rows.append(("fan-out deliveries/s", get(g, "fanout", "deliveries_per_s"), get(p, "fanout", "deliveries_per_s"), "/s", False))
rows.append(("fan-out lost deliveries", get(g, "fanout", "lost"), get(p, "fanout", "lost"), "", True))
rows.append(("fan-out server CPU (share of one core)", get(g, "cpu", "targets_pct"), get(p, "cpu", "targets_pct"), "% core", None))
rows.append(("fan-out loadgen CPU (share of one core)", get(g, "cpu", "loadgen_pct"), get(p, "cpu", "loadgen_pct"), "% core", None))

def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "us":
        return f"{v/1000:.2f} ms" if v >= 1000 else (f"{v:.0f} us" if v >= 10 else f"{v:.2f} us")
    if unit == "B":
        return f"{v/1024:.1f} KiB" if v >= 1024 else f"{v:.0f} B"
    return f"{v:,.0f}{(' ' + unit) if unit else ''}"

def ratio(gv, pv, lower):
    if lower is None or gv is None or pv is None or gv == 0 or pv == 0:
        return ""
    x = pv / gv if lower else gv / pv
    return f"{x:.1f}x"

print()
print("| measure | gateway | tokio-tungstenite | gateway advantage |")
print("| --- | ---: | ---: | ---: |")
for label, gv, pv, unit, lower in rows:
    print(f"| {label} | {fmt(gv, unit)} | {fmt(pv, unit)} | {ratio(gv, pv, lower)} |")
print()
print("gateway advantage: how many times better the gateway is (peer/gateway for costs and")
print("latencies, gateway/peer for rates); below 1.0x the peer is better. CPU shares are")
print("context: on a small machine loadgen and the server share the cores.")
for name in ("gateway", "peer"):
    for sc in ("idle", "echo", "fanout"):
        r = load(name, sc)
        if r is not None and not r["ok"]:
            print(f"note: {name} {sc} run was NOT OK: {r['failures']}")
PY
echo "compare: reports in $OUT/"
