#!/usr/bin/env bash
# Side-by-side benchmark of gateway builds and reference peers, one fresh server process per
# run, servers alternated inside every round (A B C A B C ...), medians over the rounds, every
# row also given as a ratio to uWebSockets (when it is in SERVERS).
#
# Scenarios (SCENARIOS, in this order; loadgen flags in brackets):
#   hifan    high-rate fan-out, HTTP publisher [--scenario fanout --conns 1000 --rate 1000
#            --size 64 --duration 10s]: delivered/expected, deliveries/s as a share of the
#            offered conns x rate, accepted/scheduled publishes, p50/p99 (corrected for coordinated omission, as loadgen
#            reports them), deliveries per server CPU-second
#   echo20   [--scenario echo --conns 100 --pipeline 1 --size 20 --duration 5s]
#   echo512  [... --size 512]
#   echo20p8 [... --size 20 --pipeline 8]: messages per server CPU-second, msgs/s, p99
#   fan10k   [--scenario fanout --conns 10000 --rate 10 --size 256 --duration 10s], HTTP
#            publisher: deliveries per server CPU-second (the 10k handshakes included), p50/p99
#   conn10k  [--scenario connect --conns 10000 --connect-rate 0 --max-pending 500
#            --duration 2s]: bytes of RSS per open connection (RSS at ramp end - RSS before,
#            / open), handshake p50/p99 with 500 in flight, handshakes per server CPU-second
#            (the server's CPU over the whole run: handshakes, 2 s idle hold, close handshakes)
#
# SERVERS: space-separated NAME=KIND:BINARY[:WORKERS]; KIND is gw (BINARY --listen ADDR
# --workers WORKERS), uws (BINARY PORT WORKERS: threads, default 1) or rust (BINARY ADDR, the fastwebsockets and
# tokio-tungstenite peers of scripts/peers/). Default: this tree's gateway with 1 and 2 workers,
# the uWebSockets peer (target/peers/uws-peer, see scripts/peers/uws/build.sh) and the Rust peers
# in target/peers/release. A server named uWebSockets is the ratio reference.
#
# Environment: SERVERS, SCENARIOS [hifan echo20 echo512 echo20p8 fan10k conn10k], ROUNDS [2],
# LOADGEN [target/release/loadgen], OUT [target/bench-peers], PORT_BASE [9600], plus per
# scenario overrides HIFAN_DURATION [10s], ECHO_DURATION [5s], FAN10K_DURATION [10s].
# Binaries are not built here: copy them somewhere stable first if others edit the tree.
# Output: OUT/<round>-<scenario>-<server>.json (loadgen --json), OUT/runs.tsv (one line per
# run with /proc/loadavg at its start), and a markdown table of medians on stdout
# (OUT/table.md). Only loopback; every run ends by itself.
set -euo pipefail

if [ $# -gt 0 ]; then
  case "$1" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-peers: configure with environment variables (see --help)" >&2; exit 2 ;;
  esac
fi

cd "$(dirname "$0")/.."
root=$(pwd)
SERVERS=${SERVERS:-"gw-w1=gw:$root/target/release/gateway:1 gw-w2=gw:$root/target/release/gateway:2 uWebSockets=uws:$root/target/peers/uws-peer fastwebsockets=rust:$root/target/peers/release/peer-fastwebsockets tokio-tungstenite=rust:$root/target/peers/release/peer-tokio-tungstenite"}
SCENARIOS=${SCENARIOS:-"hifan echo20 echo512 echo20p8 fan10k conn10k"}
ROUNDS=${ROUNDS:-2}
LOADGEN=${LOADGEN:-$root/target/release/loadgen}
OUT=${OUT:-$root/target/bench-peers}
PORT_BASE=${PORT_BASE:-9600}
HIFAN_DURATION=${HIFAN_DURATION:-10s}
ECHO_DURATION=${ECHO_DURATION:-5s}
FAN10K_DURATION=${FAN10K_DURATION:-10s}
mkdir -p "$OUT"
[ -x "$LOADGEN" ] || { echo "bench-peers: no loadgen at $LOADGEN" >&2; exit 1; }

PROG=bench-peers
# shellcheck source=scripts/lib/servers.sh
. "$root/scripts/lib/servers.sh"

scenario_args() { # scenario port
  local ws="ws://127.0.0.1:$2"
  case "$1" in
    hifan) echo "--url $ws/ws/chat/bench --scenario fanout --conns 1000 --rate 1000 --size 64 --duration $HIFAN_DURATION" ;;
    echo20) echo "--url $ws/echo --scenario echo --conns 100 --pipeline 1 --size 20 --duration $ECHO_DURATION" ;;
    echo512) echo "--url $ws/echo --scenario echo --conns 100 --pipeline 1 --size 512 --duration $ECHO_DURATION" ;;
    echo20p8) echo "--url $ws/echo --scenario echo --conns 100 --pipeline 8 --size 20 --duration $ECHO_DURATION" ;;
    fan10k) echo "--url $ws/ws/chat/bench --scenario fanout --conns 10000 --rate 10 --size 256 --duration $FAN10K_DURATION" ;;
    conn10k) echo "--url $ws/echo --scenario connect --conns 10000 --connect-rate 0 --max-pending 500 --duration 2s" ;;
    *) echo "bench-peers: unknown scenario $1" >&2; exit 2 ;;
  esac
}

names=()
for s in $SERVERS; do names+=("${s%%=*}"); done
printf 'round\tscenario\tserver\tport\tloadavg\tcommand\n' >"$OUT/runs.tsv"
n=0
for round in $(seq "$ROUNDS"); do
  for sc in $SCENARIOS; do
    for s in $SERVERS; do
      name=${s%%=*}; spec=${s#*=}
      IFS=: read -r kind bin workers <<<"$spec"
      port=$((PORT_BASE + n % 300)); n=$((n + 1))
      server_cmd "$kind" "$bin" "$workers" "$port"
      "${cmd[@]}" >>"$OUT/$name.log" 2>&1 &
      server_pid=$!
      wait_port "$port"
      sleep 0.5
      load=$(cat /proc/loadavg)
      # shellcheck disable=SC2046
      args=$(scenario_args "$sc" "$port")
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$sc" "$name" "$port" "$load" "${cmd[*]} | loadgen $args" >>"$OUT/runs.tsv"
      echo "bench-peers: round $round $sc $name (load $load)" >&2
      # shellcheck disable=SC2086
      "$LOADGEN" -q --target-pid "$server_pid" $args --json "$OUT/$round-$sc-$name.json" \
        >"$OUT/$round-$sc-$name.txt" 2>&1 || true
      kill "$server_pid" 2>/dev/null || true
      wait "$server_pid" 2>/dev/null || true
      server_pid=
      sleep 0.5
    done
  done
done

python3 - "$OUT" "$ROUNDS" "$SCENARIOS" "${names[@]}" <<'PY' | tee "$OUT/table.md"
import json, os, statistics, sys
out, rounds, scenarios = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
names = sys.argv[4:]

def load(r, sc, name):
    try:
        return json.load(open(os.path.join(out, f"{r}-{sc}-{name}.json")))
    except (OSError, ValueError):
        return None

def g(r, *path):
    for p in path:
        if r is None:
            return None
        r = r[p] if isinstance(r, dict) and p in r else (r[p] if isinstance(r, list) and isinstance(p, int) and p < len(r) else None)
    return r

def cpu(r):
    return g(r, "cpu", "targets", 0, "cpu_s")

def per_cpu(n, r):
    c = cpu(r)
    return n / c if n and c else None

def mem(r):
    t = g(r, "cpu", "targets", 0); o = g(r, "timing", "open_at_ramp_end")
    if not t or not o or t["rss_before"] is None or t["rss_at_ramp_end"] is None:
        return None
    return (t["rss_at_ramp_end"] - t["rss_before"]) / o

def us(v):
    return None if v is None else v

# (scenario, label, function, unit, higher_is_better)
rows = {
    "hifan": [
        ("accepted / scheduled (rate x duration)", lambda r: g(r, "fanout", "accepted") / (g(r, "fanout", "rate") * g(r, "duration_s")) if g(r, "fanout", "rate") and g(r, "duration_s") else None, "%", True),
        ("delivered / expected", lambda r: g(r, "fanout", "delivered") / g(r, "fanout", "expected") if g(r, "fanout", "expected") else None, "%", True),
        ("deliveries/s / offered (1000 x 1000/s)", lambda r: g(r, "fanout", "deliveries_per_s") / (g(r, "conns") * g(r, "fanout", "rate")) if g(r, "fanout", "rate") else None, "%", True),
        ("delivery p50 (CO-corrected)", lambda r: g(r, "fanout", "latency", "p50_us"), "us", False),
        ("delivery p99 (CO-corrected)", lambda r: g(r, "fanout", "latency", "p99_us"), "us", False),
        ("delivery p99 (uncorrected)", lambda r: g(r, "fanout", "latency_uncorrected", "p99_us"), "us", False),
        ("deliveries per server CPU-s", lambda r: per_cpu(g(r, "fanout", "deliveries"), r), "", True),
        ("server CPU, % of one core", lambda r: g(r, "cpu", "targets_pct"), "pct", None),
        ("publisher's worst lag behind schedule", lambda r: g(r, "fanout", "publisher_max_lag_us"), "us", False),
    ],
    "echo20": [
        ("msgs per server CPU-s", lambda r: per_cpu(g(r, "echo", "verified"), r), "", True),
        ("msgs/s", lambda r: g(r, "echo", "msgs_per_s"), "", True),
        ("round trip p99", lambda r: g(r, "echo", "rtt", "p99_us"), "us", False),
    ],
    "fan10k": [
        ("deliveries per server CPU-s", lambda r: per_cpu(g(r, "fanout", "deliveries"), r), "", True),
        ("delivery p50", lambda r: g(r, "fanout", "latency", "p50_us"), "us", False),
        ("delivery p99", lambda r: g(r, "fanout", "latency", "p99_us"), "us", False),
        ("lost", lambda r: g(r, "fanout", "lost"), "", None),
    ],
    "conn10k": [
        ("RSS per open connection", mem, "B", False),
        ("handshake p50 (500 in flight)", lambda r: g(r, "connect", "handshake", "p50_us"), "us", False),
        ("handshake p99 (500 in flight)", lambda r: g(r, "connect", "handshake", "p99_us"), "us", False),
        ("handshakes per server CPU-s (incl. hold, close)", lambda r: per_cpu(g(r, "connect", "connected"), r), "", True),
    ],
}
rows["echo512"] = rows["echo20"]
rows["echo20p8"] = rows["echo20"]
titles = {"hifan": "fan-out 1000 subs x 1000/s x 64 B", "echo20": "echo 20 B, 100 x 1", "echo512": "echo 512 B, 100 x 1",
          "echo20p8": "echo 20 B, 100 x 8 pipelined", "fan10k": "fan-out 10k x 10/s x 256 B", "conn10k": "connect 10k"}

def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "us":
        if v >= 1e6: return f"{v/1e6:.2f} s"
        return f"{v/1000:.2f} ms" if v >= 1000 else f"{v:.0f} us"
    if unit == "B":
        return f"{v/1024:.1f} KiB" if v >= 1024 else f"{v:.0f} B"
    if unit == "%":
        return f"{100*v:.1f} %"
    if unit == "pct":
        return f"{v:.0f} %"
    return f"{v:,.0f}"

ref = "uWebSockets" if "uWebSockets" in names else None
print("| scenario | measure | " + " | ".join(names) + " |")
print("| --- | --- |" + " ---: |" * len(names))
for sc in scenarios:
    for label, f, unit, hib in rows.get(sc, []):
        med = {}
        for name in names:
            vals = []
            for r in range(1, rounds + 1):
                rep = load(r, sc, name)
                try:
                    v = f(rep) if rep else None
                except (TypeError, ZeroDivisionError):
                    v = None
                if v is not None:
                    vals.append(v)
            med[name] = statistics.median(vals) if vals else None
        cells = []
        for name in names:
            c = fmt(med[name], unit)
            if ref and name != ref and hib is not None and med[name] and med.get(ref):
                c += f" ({med[name] / med[ref]:.2f}x)"
            cells.append(c)
        print(f"| {titles.get(sc, sc)} | {label} | " + " | ".join(cells) + " |")
print()
print("Medians of %d rounds. (x): the figure divided by uWebSockets' (higher is better for rates and" % rounds)
print("per-CPU figures, lower is better for latencies and memory).")
for sc in scenarios:
    for name in names:
        for r in range(1, rounds + 1):
            rep = load(r, sc, name)
            if rep is None:
                print(f"note: round {r} {sc} {name}: no report ({out}/{r}-{sc}-{name}.txt)")
            elif not rep.get("ok", True):
                print(f"note: round {r} {sc} {name}: NOT OK: {rep.get('failures')}")
PY
