#!/usr/bin/env bash
# Why two gateway workers cost more CPU per echoed message than one on a 2-core machine:
# counts context switches, CPU migrations, wake-ups and syscalls per message with `perf stat`
# attached to a gateway (fresh per run) while loadgen runs echo against it.
#
#   for each round, for W in 1 2 (alternated):
#     GATEWAY --listen 127.0.0.1:PORT --workers W
#     LOADGEN --scenario echo --conns 100 --pipeline 1 --size SIZE --duration 12s --target-pid PID
#     after 3 s: perf stat -p PID -e context-switches,cpu-migrations,task-clock,sched:sched_wakeup,
#                syscalls:sys_enter_{epoll_wait,recvfrom,sendto,read,write,futex} -- sleep WINDOW
#     messages in the window = gateway_messages_in_total from /metrics, after - before
#
# Environment: GATEWAY [target/release/gateway], LOADGEN [target/release/loadgen], ROUNDS [2],
# SIZE [20], WINDOW [5] (seconds), OUT [target/bench-worker-overhead]. Needs perf with the
# software events and the syscalls/sched tracepoints (perf_event_paranoid <= 2 for its own
# processes, or root). Prints one line per run with every count divided by the messages.
set -euo pipefail
cd "$(dirname "$0")/.."
GATEWAY=${GATEWAY:-target/release/gateway}
LOADGEN=${LOADGEN:-target/release/loadgen}
ROUNDS=${ROUNDS:-2}
SIZE=${SIZE:-20}
WINDOW=${WINDOW:-5}
OUT=${OUT:-target/bench-worker-overhead}
mkdir -p "$OUT"
EVENTS=context-switches,cpu-migrations,task-clock,sched:sched_wakeup,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_futex

gw_pid=
lg_pid=
cleanup() {
  [ -n "$lg_pid" ] && kill "$lg_pid" 2>/dev/null || true
  [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

metric() { # port name
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
  timeout 5 cat <&3 | tr -d '\r' | awk -v n="$2" '$1 == n { print $2 }'
  exec 3>&-
}

port=9800
for round in $(seq "$ROUNDS"); do
  for w in 1 2; do
    port=$((port + 1))
    "$GATEWAY" --listen "127.0.0.1:$port" --workers "$w" >"$OUT/gw-$round-$w.log" 2>&1 &
    gw_pid=$!
    sleep 0.5
    load=$(cat /proc/loadavg)
    "$LOADGEN" -q --scenario echo --conns 100 --pipeline 1 --size "$SIZE" --duration 12s \
      --url "ws://127.0.0.1:$port/echo" --target-pid "$gw_pid" --json "$OUT/echo-$round-$w.json" \
      >"$OUT/echo-$round-$w.txt" 2>&1 &
    lg_pid=$!
    sleep 3
    m0=$(metric "$port" gateway_messages_in_total)
    perf stat -x, -e "$EVENTS" -p "$gw_pid" -o "$OUT/perf-$round-$w.csv" -- sleep "$WINDOW"
    m1=$(metric "$port" gateway_messages_in_total)
    wait "$lg_pid" || true
    lg_pid=
    kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true
    gw_pid=
    python3 - "$OUT/perf-$round-$w.csv" "$((m1 - m0))" "$round" "$w" "$load" "$WINDOW" <<'PY'
import sys
path, msgs, rnd, w, load = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
vals = {}
for line in open(path):
    f = line.strip().split(",")
    if len(f) < 3 or line.startswith("#"):
        continue
    try:
        vals[f[2].split(":")[-1].replace("sys_enter_", "")] = float(f[0])
    except ValueError:
        pass
cells = [f"{k} {v / msgs:.3f}" for k, v in vals.items() if k != "task-clock"]
cpu_us = vals.get("task-clock", 0) * 1000 / msgs  # task-clock is in ms
print(f"round {rnd} workers {w}: {msgs} msgs in the window ({msgs / float(sys.argv[6]):,.0f}/s); "
      f"CPU {cpu_us:.2f} us/msg; per msg: " + ", ".join(cells) + f"; load {load}")
PY
  done
done
