#!/usr/bin/env bash
# Handshakes per server CPU-second, measured long enough to mean something: bench-peers.sh's
# conn10k run costs a server 0.2-0.4 s of CPU, read in 10 ms ticks; here each server (fresh per
# run) takes REPS back-to-back loadgen runs of 10,000 connections (500 in flight, open as fast as
# they can, 1 s hold, clean close), and its CPU is read in nanoseconds from
# /proc/PID/task/*/schedstat (every thread, summed) before the first and after the last.
#
#   for each round, for each server (alternated):
#     start the server; REPS x loadgen --scenario connect --conns 10000 --connect-rate 0
#       --max-pending 500 --duration 1s; stop it
#     handshakes per CPU-s = REPS x 10000 / (server CPU over the REPS runs)
#     handshake p50/p99 = medians over the REPS runs of loadgen's figures
#
# SERVERS: as in scripts/bench-peers.sh (NAME=KIND:BINARY[:WORKERS]; KIND gw, uws or rust).
# Environment: SERVERS, ROUNDS [3], REPS [4], LOADGEN [target/release/loadgen],
# OUT [target/bench-handshakes], PORT_BASE [9900]. Only loopback; every run ends by itself.
# Output: one line per run, OUT/runs.tsv, and a markdown table of medians (OUT/table.md);
# a server named uWebSockets is the ratio reference.
set -euo pipefail

if [ $# -gt 0 ]; then
  case "$1" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-handshakes: configure with environment variables (see --help)" >&2; exit 2 ;;
  esac
fi

cd "$(dirname "$0")/.."
root=$(pwd)
SERVERS=${SERVERS:-"gw-w1=gw:$root/target/release/gateway:1 gw-w2=gw:$root/target/release/gateway:2 uWebSockets=uws:$root/target/peers/uws-peer:1"}
ROUNDS=${ROUNDS:-3}
REPS=${REPS:-4}
LOADGEN=${LOADGEN:-$root/target/release/loadgen}
OUT=${OUT:-$root/target/bench-handshakes}
PORT_BASE=${PORT_BASE:-9900}
mkdir -p "$OUT"
[ -x "$LOADGEN" ] || { echo "bench-handshakes: no loadgen at $LOADGEN" >&2; exit 1; }

PROG=bench-handshakes
# shellcheck source=scripts/lib/servers.sh
. "$root/scripts/lib/servers.sh"

# CPU time of every thread of the server so far, in nanoseconds.
cpu_ns() {
  local sum=0 ns
  for f in /proc/"$server_pid"/task/*/schedstat; do
    read -r ns _ <"$f" 2>/dev/null || continue
    sum=$((sum + ns))
  done
  echo "$sum"
}

printf 'round\tserver\tconnections\tcpu_ns\tloadavg\n' >"$OUT/runs.tsv"
n=0
for round in $(seq "$ROUNDS"); do
  for s in $SERVERS; do
    name=${s%%=*}; spec=${s#*=}
    IFS=: read -r kind bin workers <<<"$spec"
    port=$((PORT_BASE + n % 90)); n=$((n + 1))
    server_cmd "$kind" "$bin" "$workers" "$port"
    "${cmd[@]}" >>"$OUT/$name.log" 2>&1 &
    server_pid=$!
    wait_port "$port"
    sleep 0.5
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    before=$(cpu_ns)
    for rep in $(seq "$REPS"); do
      "$LOADGEN" -q --url "ws://127.0.0.1:$port/echo" --scenario connect --conns 10000 \
        --connect-rate 0 --max-pending 500 --duration 1s \
        --json "$OUT/$round-$name-$rep.json" >/dev/null 2>&1 || true
    done
    after=$(cpu_ns)
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$((REPS * 10000))" "$((after - before))" "$load" >>"$OUT/runs.tsv"
    echo "bench-handshakes: round $round $name: $(( REPS * 10000 * 1000000000 / (after - before + 1) )) handshakes per CPU-s (load $load)" >&2
    sleep 0.5
  done
done

python3 - "$OUT" "$ROUNDS" "$REPS" $SERVERS <<'PY' | tee "$OUT/table.md"
import csv, json, statistics, sys
out, rounds, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
names = [s.split("=", 1)[0] for s in sys.argv[4:]]
rate, p50, p99, clean = {}, {}, {}, {}
with open(f"{out}/runs.tsv") as f:
    for row in csv.DictReader(f, delimiter="\t"):
        rate.setdefault(row["server"], []).append(int(row["connections"]) / (int(row["cpu_ns"]) / 1e9))
for name in names:
    for r in range(1, rounds + 1):
        for k in range(1, reps + 1):
            try:
                c = json.load(open(f"{out}/{r}-{name}-{k}.json"))["connect"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            p50.setdefault(name, []).append(c["handshake"]["p50_us"] / 1000)
            p99.setdefault(name, []).append(c["handshake"]["p99_us"] / 1000)
            clean.setdefault(name, [0, 0])
            clean[name][0] += c["closed_clean"]
            clean[name][1] += c["attempted"]
ref = "uWebSockets" if "uWebSockets" in names else None

def cell(name, table, fmt):
    v = table.get(name)
    if not v:
        return "-"
    m = statistics.median(v)
    text = fmt(m)
    if ref and name != ref and table.get(ref):
        text += f" ({m / statistics.median(table[ref]):.2f}x)"
    return text

print("| measure | " + " | ".join(names) + " |")
print("| --- |" + " ---: |" * len(names))
print("| handshakes per server CPU-s | " + " | ".join(cell(n, rate, lambda m: f"{m:,.0f}") for n in names) + " |")
print("| per round | " + " | ".join(", ".join(f"{v:,.0f}" for v in rate.get(n, [])) for n in names) + " |")
print("| handshake p50 (500 in flight) | " + " | ".join(cell(n, p50, lambda m: f"{m:.2f} ms") for n in names) + " |")
print("| handshake p99 (500 in flight) | " + " | ".join(cell(n, p99, lambda m: f"{m:.2f} ms") for n in names) + " |")
print("| closed cleanly / attempted | " + " | ".join(f"{clean[n][0]:,} / {clean[n][1]:,}" if n in clean else "-" for n in names) + " |")
print()
print(f"Medians of {rounds} rounds of {reps} x 10,000 connections per server; (x) against uWebSockets.")
PY
