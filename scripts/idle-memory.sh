#!/usr/bin/env bash
# scripts/idle-memory.sh - resident memory of the gateway with 0 and with N idle WebSocket
# connections, and the cost of one idle connection in user space.
#
# What it does, per repetition (a fresh gateway each time):
#   1. starts `target/release/gateway --listen 127.0.0.1:0 --workers W` (the kernel picks a free
#      port; the script reads it from the gateway's "listening on" line), waits --settle seconds
#      and reads VmRSS and RssAnon from /proc/PID/status (0 connections);
#   2. starts the holder, `loadgen --scenario connect --hold-stdin --echo-check` (one process,
#      --hold-threads threads), which opens N WebSocket connections to /echo from 127.0.0.1,
#      127.0.0.2, ... and prints `open N`;
#   3. holds them idle for --hold seconds, reads VmRSS/RssAnon of the gateway again (and of the
#      holder, for information), and asks /metrics how many connections the gateway counts;
#   4. tells the holder to go on (a line on its stdin): it checks that every connection echoes
#      one message (`echo-ok N`) and closes them all with a close handshake (`closed N`);
#   5. stops the gateway.
# Bytes per idle connection = (RSS_N - RSS_0) * 1024 / N, from VmRSS and from RssAnon (RssAnon
# leaves out file-backed pages such as the binary's text, which do not depend on N). The
# kernel's socket buffers and epoll entries are not in either figure.
# The table shows every repetition and the median of each column. /proc/PID/status and
# /proc/PID/smaps_rollup at 0 and at N, and the logs, are kept in --out DIR.
#
# Exit codes: 0 measured; 1 a run failed (gateway died, holder failed or did not open N
# connections, echo check failed); 2 usage error; 3 build failure.
set -euo pipefail
shopt -s inherit_errexit

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
PROG="idle-memory"

CONNS=10000
REPS=3
WORKERS=2
SETTLE=1
HOLD=2
HOLD_THREADS=4
OPEN_TIMEOUT=120
PORT=0
BUILD=1
DEFLATE=0
TLS=0
OUT="$REPO_ROOT/target/idle-memory"
GATEWAY_ARGS=()

usage() {
  cat <<EOF
Usage: scripts/idle-memory.sh [options]

Measures the gateway's resident memory with 0 and with N idle WebSocket connections (a fresh
gateway per repetition) and prints bytes per idle connection, per run and as the median.

Options:
  --conns N            idle connections to hold (default $CONNS; at most ~19900, the holder
                       and the gateway each need one file descriptor per connection)
  --reps R             repetitions, each with a fresh gateway (default $REPS)
  --workers W          gateway worker threads (default $WORKERS)
  --settle SECONDS     wait between the gateway's start and the reading at 0 (default $SETTLE)
  --hold SECONDS       hold the N connections idle this long before the reading at N (default
                       $HOLD). Keep-alive pings go out after 54 s of silence by default: a hold
                       of 120 or more includes them and the timer-wheel churn they cause
  --port P             gateway port on 127.0.0.1 (default: a free port picked by the kernel)
  --gateway-arg ARG    extra argument for the gateway (repeatable), e.g. --gateway-arg=--no-deflate
  --hold-threads T     event-loop threads of the holder (loadgen --threads; default $HOLD_THREADS)
  --deflate            the holder offers permessage-deflate (loadgen --deflate), so the
                       gateway keeps a compression context per connection
  --tls                over TLS: a fresh self-signed ECDSA P-256 certificate for 127.0.0.1
                       (made with openssl in a temporary directory), the gateway started with
                       --tls-cert/--tls-key, the holder on wss:// trusting it (loadgen --ca)
  --open-timeout S     limit on opening the N connections (default $OPEN_TIMEOUT)
  --out DIR            logs and /proc snapshots (default target/idle-memory)
  --no-build           use the binaries already in \${CARGO_TARGET_DIR:-target}/release
  -h, --help           this text

Examples:
  scripts/idle-memory.sh                            # 10000 connections, 3 runs, median
  scripts/idle-memory.sh --conns 1000 --reps 5
  scripts/idle-memory.sh --tls                      # the same over TLS
  scripts/idle-memory.sh --hold 180 --gateway-arg=--ping-interval=3s --gateway-arg=--pong-timeout=5s
                                                    # cost after many keep-alive rounds
EOF
}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
  local code=$1
  shift
  log "error: $*"
  exit "$code"
}
need_arg() { [[ $# -ge 2 ]] || die 2 "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --conns) need_arg "$@"; CONNS=$2; shift ;;
    --conns=*) CONNS=${1#*=} ;;
    --reps) need_arg "$@"; REPS=$2; shift ;;
    --reps=*) REPS=${1#*=} ;;
    --workers) need_arg "$@"; WORKERS=$2; shift ;;
    --workers=*) WORKERS=${1#*=} ;;
    --settle) need_arg "$@"; SETTLE=$2; shift ;;
    --settle=*) SETTLE=${1#*=} ;;
    --hold) need_arg "$@"; HOLD=$2; shift ;;
    --hold=*) HOLD=${1#*=} ;;
    --port) need_arg "$@"; PORT=$2; shift ;;
    --port=*) PORT=${1#*=} ;;
    --gateway-arg) need_arg "$@"; GATEWAY_ARGS+=("$2"); shift ;;
    --gateway-arg=*) GATEWAY_ARGS+=("${1#*=}") ;;
    --hold-threads) need_arg "$@"; HOLD_THREADS=$2; shift ;;
    --hold-threads=*) HOLD_THREADS=${1#*=} ;;
    --open-timeout) need_arg "$@"; OPEN_TIMEOUT=$2; shift ;;
    --open-timeout=*) OPEN_TIMEOUT=${1#*=} ;;
    --out) need_arg "$@"; OUT=$2; shift ;;
    --out=*) OUT=${1#*=} ;;
    --deflate) DEFLATE=1 ;;
    --tls) TLS=1 ;;
    --no-build) BUILD=0 ;;
    *) die 2 "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

is_uint() { [[ $1 =~ ^(0|[1-9][0-9]{0,8})$ ]]; }
positive() {
  if ! is_uint "$2" || (($2 == 0)); then die 2 "$1 must be a positive integer, got '$2'"; fi
}
positive --conns "$CONNS"
positive --reps "$REPS"
positive --workers "$WORKERS"
positive --hold-threads "$HOLD_THREADS"
positive --open-timeout "$OPEN_TIMEOUT"
if ! is_uint "$PORT" || ((PORT > 65535)); then
  die 2 "--port must be a TCP port number, got '$PORT'"
fi
[[ $SETTLE =~ ^[0-9]+(\.[0-9]+)?$ ]] || die 2 "--settle must be a number of seconds, got '$SETTLE'"
is_uint "$HOLD" || die 2 "--hold must be a whole number of seconds, got '$HOLD'"
DEFLATE_ARG=()
((DEFLATE == 0)) || DEFLATE_ARG=(--deflate)

# ---------------------------------------------------------------------------------------------
# Child processes: killed on any exit.
GATEWAY_PID=""
HOLDER_PID=""
CTL_FD=""
WORK=""

stop_pid() {
  local pid=$1
  [[ -n $pid ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  if [[ -n $CTL_FD ]]; then exec {CTL_FD}>&- || true; fi
  stop_pid "$HOLDER_PID"
  stop_pid "$GATEWAY_PID"
  [[ -z $WORK ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
[[ $TARGET_DIR = /* ]] || TARGET_DIR="$REPO_ROOT/$TARGET_DIR"
GATEWAY_BIN="$TARGET_DIR/release/gateway"
HOLD_BIN="$TARGET_DIR/release/loadgen"
if ((BUILD)); then
  log "building (cargo build --release -p gateway --bin gateway -p loadgen --bin loadgen)"
  (cd "$REPO_ROOT" && cargo build --release -p gateway --bin gateway -p loadgen --bin loadgen) ||
    die 3 "build failed"
fi
[[ -x $GATEWAY_BIN ]] || die 3 "no gateway binary at $GATEWAY_BIN"
[[ -x $HOLD_BIN ]] || die 3 "no loadgen binary at $HOLD_BIN"

mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/idle-memory.XXXXXX")

SCHEME=ws
HOLD_TLS_ARGS=()
if ((TLS)); then
  command -v openssl >/dev/null || die 2 "--tls needs openssl to make a test certificate"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>"$WORK/openssl.log" ||
    die 1 "openssl could not make a certificate: $(tail -n 2 "$WORK/openssl.log" | tr '\n' ' ')"
  GATEWAY_ARGS+=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem")
  SCHEME=wss
  HOLD_TLS_ARGS=(--ca "$WORK/cert.pem")
fi

# Prints "VmRSS RssAnon" (kB) of a process.
rss_of() {
  awk '/^VmRSS:/ { r = $2 } /^RssAnon:/ { a = $2 } END { if (r == "") exit 1; print r, a }' \
    "/proc/$1/status"
}

# Saves /proc/PID/status and smaps_rollup as $OUT/<name>.{status,smaps_rollup}.
snapshot() {
  cp "/proc/$1/status" "$OUT/$2.status" 2>/dev/null || true
  cp "/proc/$1/smaps_rollup" "$OUT/$2.smaps_rollup" 2>/dev/null || true
}

# One GET /metrics; prints gateway_open_connections (the request itself is one of them).
open_gauge() {
  local port=$1 line m
  if ((TLS)); then
    line=$(curl -sk --max-time 5 "https://127.0.0.1:$port/metrics" |
      awk '$1 == "gateway_open_connections" { print $2 }') || true
    printf '%s\n' "${line:-?}"
    return 0
  fi
  exec {m}<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&"$m"
  line=$(timeout 5 cat <&"$m" | tr -d '\r' | awk '$1 == "gateway_open_connections" { print $2 }') || true
  exec {m}>&-
  printf '%s\n' "${line:-?}"
}

# What went wrong in the holder: its error line, or the failures of its summary.
holder_failure() {
  { tail -n 2 "$2"; grep -A3 'failures by cause' "$1"; } 2>/dev/null | tr '\n' ' '
}

sleep_while_alive() {
  # Sleeps $2 seconds; fails if process $1 dies meanwhile.
  sleep "$2"
  kill -0 "$1" 2>/dev/null
}

# Results, one line per repetition: rss0 anon0 rssN anonN b_rss b_anon holder_rss holder_anon
RESULTS=()

run_once() {
  local rep=$1 glog="$OUT/gateway.$1.log" hout="$OUT/hold.$1.out" herr="$OUT/hold.$1.log"
  local port=$PORT line deadline gauge

  # Empty the logs first: the children's redirections happen asynchronously, and a log left by
  # an earlier run in the same --out must not be read as this run's.
  : >"$glog"
  : >"$hout"
  : >"$herr"

  # 1. gateway, 0 connections
  "$GATEWAY_BIN" --listen "127.0.0.1:$PORT" --workers "$WORKERS" ${GATEWAY_ARGS[@]+"${GATEWAY_ARGS[@]}"} \
    >"$glog" 2>&1 &
  GATEWAY_PID=$!
  deadline=$((SECONDS + 10))
  until line=$(grep -m1 'listening on' "$glog" 2>/dev/null); do
    kill -0 "$GATEWAY_PID" 2>/dev/null ||
      die 1 "the gateway exited at start: $(tail -n 3 "$glog" | tr '\n' ' ')"
    ((SECONDS < deadline)) || die 1 "the gateway did not report listening within 10 s ($glog)"
    sleep 0.05
  done
  port=$(sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\) .*/\1/p' <<<"$line")
  is_uint "$port" || die 1 "cannot read the port from the gateway's line: $line"
  sleep_while_alive "$GATEWAY_PID" "$SETTLE" || die 1 "the gateway died ($glog)"
  local rss0 anon0
  read -r rss0 anon0 < <(rss_of "$GATEWAY_PID") || die 1 "cannot read /proc/$GATEWAY_PID/status"
  snapshot "$GATEWAY_PID" "gateway.$rep.idle0"

  # 2. holder
  mkfifo "$WORK/ctl.$rep"
  # One process (--procs 1): its memory is the holder's figure. --connect-rate 0: as fast as
  # --max-pending allows. The hold lasts until the line on stdin (or its end).
  "$HOLD_BIN" --url "$SCHEME://127.0.0.1:$port/echo" ${HOLD_TLS_ARGS[@]+"${HOLD_TLS_ARGS[@]}"} \
    --scenario connect --conns "$CONNS" \
    --threads "$HOLD_THREADS" --procs 1 --connect-rate 0 --hold-stdin --echo-check \
    ${DEFLATE_ARG[@]+"${DEFLATE_ARG[@]}"} --quiet <"$WORK/ctl.$rep" >"$hout" 2>"$herr" &
  HOLDER_PID=$!
  exec {CTL_FD}>"$WORK/ctl.$rep"
  deadline=$((SECONDS + OPEN_TIMEOUT))
  until line=$(grep -m1 -x 'open [0-9]*' "$hout"); do
    if ! kill -0 "$HOLDER_PID" 2>/dev/null; then
      wait "$HOLDER_PID" 2>/dev/null || true
      die 1 "the holder failed before opening $CONNS connections: $(tail -n 2 "$herr" | tr '\n' ' ')"
    fi
    kill -0 "$GATEWAY_PID" 2>/dev/null || die 1 "the gateway died while connections opened ($glog)"
    ((SECONDS < deadline)) || die 1 "the holder did not open $CONNS connections within ${OPEN_TIMEOUT}s ($herr)"
    sleep 0.05
  done
  [[ $line == "open $CONNS" ]] ||
    die 1 "the holder opened ${line#open } of $CONNS connections: $(grep -A3 'failures by cause' "$hout" | tr '\n' ' ')"

  # 3. gateway, N connections
  sleep_while_alive "$GATEWAY_PID" "$HOLD" || die 1 "the gateway died ($glog)"
  kill -0 "$HOLDER_PID" 2>/dev/null || die 1 "the holder died during the hold: $(tail -n 2 "$herr" | tr '\n' ' ')"
  local rssn anonn hrss hanon
  read -r rssn anonn < <(rss_of "$GATEWAY_PID") || die 1 "cannot read /proc/$GATEWAY_PID/status"
  read -r hrss hanon < <(rss_of "$HOLDER_PID") || die 1 "cannot read /proc/$HOLDER_PID/status"
  snapshot "$GATEWAY_PID" "gateway.$rep.idle$CONNS"
  snapshot "$HOLDER_PID" "hold.$rep"
  gauge=$(open_gauge "$port") || gauge="?"
  if [[ $gauge != "$((CONNS + 1))" ]]; then
    log "warning: run $rep: gateway_open_connections is $gauge, expected $((CONNS + 1)) ($CONNS + the /metrics request)"
  fi

  # 4. echo check and clean close
  echo go >&"$CTL_FD"
  exec {CTL_FD}>&-
  CTL_FD=""
  local rc=0
  wait "$HOLDER_PID" || rc=$?
  HOLDER_PID=""
  grep -qx "echo-ok $CONNS" "$hout" ||
    die 1 "run $rep: echo check failed (holder exit $rc): $(holder_failure "$hout" "$herr")"
  grep -qx "closed $CONNS" "$hout" && ((rc == 0)) ||
    die 1 "run $rep: the holder failed after the echo check (exit $rc): $(holder_failure "$hout" "$herr")"

  # 5. stop the gateway
  kill -0 "$GATEWAY_PID" 2>/dev/null || die 1 "the gateway died during the run ($glog)"
  stop_pid "$GATEWAY_PID"
  GATEWAY_PID=""

  local brss banon
  brss=$(((rssn - rss0) * 1024 / CONNS))
  banon=$(((anonn - anon0) * 1024 / CONNS))
  RESULTS+=("$rss0 $anon0 $rssn $anonn $brss $banon $hrss $hanon")
  log "run $rep/$REPS: port $port, VmRSS ${rss0} -> ${rssn} kB, RssAnon ${anon0} -> ${anonn} kB: ${brss} B/conn (VmRSS), ${banon} B/conn (RssAnon); holder: $(sed -n 's/^  connections *//p' "$hout" | head -n 1)"
}

# Median of the numbers on stdin (mean of the middle two for an even count, rounded down).
median() {
  sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

log "gateway: $GATEWAY_BIN --workers $WORKERS${GATEWAY_ARGS[*]:+ ${GATEWAY_ARGS[*]}}; $CONNS idle connections held ${HOLD} s, $REPS runs; logs in $OUT"
for rep in $(seq "$REPS"); do
  run_once "$rep"
done

row() { printf '%-8s %12s %12s %12s %12s %10s %10s %12s\n' "$@"; }
{
  printf '\nGateway resident memory, %d idle WebSocket connections (%s://) held %d s, %d workers\n' "$CONNS" "$SCHEME" "$HOLD" "$WORKERS"
  printf '(kB = KiB, from /proc/PID/status)\n\n'
  row run "VmRSS@0" "VmRSS@N" "RssAnon@0" "RssAnon@N" "B/conn" "B/conn" "holder"
  row "" "kB" "kB" "kB" "kB" "(VmRSS)" "(RssAnon)" "VmRSS kB"
  i=0
  for r in "${RESULTS[@]}"; do
    i=$((i + 1))
    read -r rss0 anon0 rssn anonn brss banon hrss _ <<<"$r"
    row "$i" "$rss0" "$rssn" "$anon0" "$anonn" "$brss" "$banon" "$hrss"
  done
  col() { printf '%s\n' "${RESULTS[@]}" | awk -v c="$1" '{ print $c }' | median; }
  row median "$(col 1)" "$(col 3)" "$(col 2)" "$(col 4)" "$(col 5)" "$(col 6)" "$(col 7)"
  printf '\nB/conn = (RSS@N - RSS@0) * 1024 / N. Kernel socket memory is not included.\n'
} | tee "$OUT/summary.txt"
