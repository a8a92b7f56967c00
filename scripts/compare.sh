#!/usr/bin/env bash
# Runs the same loadgen scenarios against the gateway and against reference peers, and prints a
# side-by-side table:
#
#   memory per idle connection   loadgen --scenario connect, RSS growth / open connections
#   echo msgs/s and round trip   loadgen --scenario echo
#   fan-out p99 to N subscribers loadgen --scenario fanout --publisher ws (a chat client
#                                publishes; every server delivers it to the whole room)
#
# The peers, each serving /echo and /ws/chat/{room} with the same contract:
#   tokio-tungstenite  scripts/peers/tokio-tungstenite, the way a typical Rust user writes it
#   fastwebsockets     scripts/peers/fastwebsockets, hyper + fastwebsockets as in its examples
#   uWebSockets        scripts/peers/uws (C++), only with UWS_DIR: a uWebSockets checkout with
#                      uSockets in its uSockets/ folder, kept outside this repository; built by
#                      scripts/peers/uws/build.sh into target/peers/uws-peer
#
# The gateway runs --workers GATEWAY_WORKERS (2), the Rust peers on tokio's default of one
# worker thread per CPU (here 2), uWebSockets on one thread, as it is normally run: compare
# its CPU-normalised rows (CPU per message) rather than raw rates. All run on the same machine as
# loadgen, whose own CPU use is shown beside theirs. Each server is one fresh process for all
# three scenarios; memory is measured first, on the fresh process. Each peer cell also shows the
# gateway's advantage over that peer (see the note under the table).
#
# Environment (defaults in brackets): IDLE_CONNS [10000], ECHO_CONNS [1000], PIPELINE [1],
# SIZE [64], FANOUT_SUBS [10000], FANOUT_RATE [10], DURATION [5s], GATEWAY_WORKERS [2],
# GATEWAY_PORT [9450], PEER_PORT [9460] (tokio-tungstenite), FWS_PORT [9470], UWS_PORT [9480],
# PEERS ["tokio-tungstenite fastwebsockets"] (which Rust peers to run; empty for none),
# UWS_DIR [unset: no uWebSockets run], OUT [target/compare], NO_BUILD (set: use binaries
# already built, target/peers/uws-peer for uWebSockets).
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
GATEWAY_WORKERS=${GATEWAY_WORKERS:-2}
PEER_PORT=${PEER_PORT:-9460}
FWS_PORT=${FWS_PORT:-9470}
UWS_PORT=${UWS_PORT:-9480}
PEERS=${PEERS-tokio-tungstenite fastwebsockets}
UWS_DIR=${UWS_DIR:-}
OUT=${OUT:-target/compare}
for p in $PEERS; do
    case "$p" in
        tokio-tungstenite|fastwebsockets) ;;
        *) echo "compare: unknown peer '$p' in PEERS (tokio-tungstenite, fastwebsockets; uWebSockets comes with UWS_DIR)" >&2; exit 2 ;;
    esac
done
if [ -n "$UWS_DIR" ] && [ ! -d "$UWS_DIR" ]; then
    echo "compare: UWS_DIR=$UWS_DIR is not a directory (want a uWebSockets checkout)" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
root=$(pwd)
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release -q -p gateway -p loadgen
    for p in $PEERS; do
        cargo build --release -q --manifest-path "scripts/peers/$p/Cargo.toml" \
            --target-dir "$root/target/peers"
    done
    if [ -n "$UWS_DIR" ]; then
        scripts/peers/uws/build.sh "$UWS_DIR" "$root/target/peers/uws-peer"
    fi
fi
if [ -n "$UWS_DIR" ] && [ ! -x "$root/target/peers/uws-peer" ]; then
    echo "compare: no target/peers/uws-peer: run without NO_BUILD, or scripts/peers/uws/build.sh \"$UWS_DIR\" target/peers/uws-peer" >&2
    exit 1
fi
mkdir -p "$OUT"
loadgen="$root/target/release/loadgen"

PROG=compare
# shellcheck source=scripts/lib/servers.sh
. "$root/scripts/lib/servers.sh"

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

names=(gateway)
run gateway "$GATEWAY_PORT" "$root/target/release/gateway" --listen "127.0.0.1:$GATEWAY_PORT" \
    --workers "$GATEWAY_WORKERS"
for p in $PEERS; do
    case "$p" in
        tokio-tungstenite)
            run tokio-tungstenite "$PEER_PORT" "$root/target/peers/release/peer-tokio-tungstenite" "127.0.0.1:$PEER_PORT" ;;
        fastwebsockets)
            run fastwebsockets "$FWS_PORT" "$root/target/peers/release/peer-fastwebsockets" "127.0.0.1:$FWS_PORT" ;;
    esac
    names+=("$p")
done
if [ -n "$UWS_DIR" ]; then
    run uWebSockets "$UWS_PORT" "$root/target/peers/uws-peer" "$UWS_PORT"
    names+=(uWebSockets)
fi

python3 - "$OUT" "$IDLE_CONNS" "$ECHO_CONNS" "$PIPELINE" "$SIZE" "$FANOUT_SUBS" "$FANOUT_RATE" "${names[@]}" <<'PY'
import json, os, sys
out, idle, echo_conns, pipeline, size, subs, rate = sys.argv[1:8]
names = sys.argv[8:]  # gateway first, then the peers

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

def cpu_per_msg(r):
    t = get(r, "cpu", "targets")
    n = get(r, "echo", "verified")
    if not t or t[0]["cpu_s"] is None or not n:
        return None
    return t[0]["cpu_s"] / n * 1e6

def cpu_per_delivery(r):
    t = get(r, "cpu", "targets")
    n = get(r, "fanout", "deliveries")
    if not t or t[0]["cpu_s"] is None or not n:
        return None
    return t[0]["cpu_s"] / n * 1e6

# (label, scenario, figure, unit, lower_is_better)
measures = [
    (f"memory per idle connection ({idle} open)", "idle", mem_per_conn, "B", True),
    (f"echo msgs/s ({echo_conns} conns x {pipeline} x {size} B)", "echo", lambda r: get(r, "echo", "msgs_per_s"), "/s", False),
    ("echo round trip p99", "echo", lambda r: get(r, "echo", "rtt", "p99_us"), "us", True),
    ("echo server CPU per message", "echo", cpu_per_msg, "us", True),
    ("echo server CPU (share of one core)", "echo", lambda r: get(r, "cpu", "targets_pct"), "% core", None),
    ("echo loadgen CPU (share of one core)", "echo", lambda r: get(r, "cpu", "loadgen_pct"), "% core", None),
    (f"fan-out p99 to {subs} subscribers ({rate} msg/s)", "fanout", lambda r: get(r, "fanout", "latency", "p99_us"), "us", True),
    ("fan-out p50", "fanout", lambda r: get(r, "fanout", "latency", "p50_us"), "us", True),
    ("fan-out deliveries/s", "fanout", lambda r: get(r, "fanout", "deliveries_per_s"), "/s", False),
    ("fan-out server CPU per delivery (incl. handshakes)", "fanout", cpu_per_delivery, "us", True),
    ("fan-out lost deliveries", "fanout", lambda r: get(r, "fanout", "lost"), "", True),
    ("fan-out server CPU (share of one core)", "fanout", lambda r: get(r, "cpu", "targets_pct"), "% core", None),
    ("fan-out loadgen CPU (share of one core)", "fanout", lambda r: get(r, "cpu", "loadgen_pct"), "% core", None),
]

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
    return f" ({x:.1f}x)"

print()
print("| measure | " + " | ".join(names) + " |")
print("| --- |" + " ---: |" * len(names))
for label, scenario, figure, unit, lower in measures:
    values = [figure(load(n, scenario)) for n in names]
    cells = [fmt(values[0], unit)]
    cells += [fmt(v, unit) + ratio(values[0], v, lower) for v in values[1:]]
    print(f"| {label} | " + " | ".join(cells) + " |")
print()
print("(Nx) beside a peer's figure: how many times better the gateway is than that peer")
print("(peer/gateway for costs and latencies, gateway/peer for rates); below 1.0x the peer is")
print("better. CPU shares are context: on a small machine loadgen and the servers share the cores.")
if "uWebSockets" in names:
    print("uWebSockets runs on one thread; compare its CPU per message/delivery, not raw rates.")
for name in names:
    for sc in ("idle", "echo", "fanout"):
        r = load(name, sc)
        if r is None:
            print(f"note: {name} {sc} run left no report (see {out}/{name}.log, {out}/{name}-{sc}.txt)")
        elif not r["ok"]:
            print(f"note: {name} {sc} run was NOT OK: {r['failures']}")
PY
echo "compare: reports in $OUT/"
