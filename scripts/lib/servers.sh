# Shared by the side-by-side benchmark scripts (bench-peers.sh, bench-handshakes.sh, compare.sh):
# the one server under measurement, stopped on exit, how to wait for it to listen, and how a
# server spec (NAME=KIND:BINARY[:WORKERS]) becomes its command line. Source it after setting
# PROG (the script's name, for messages). Bash only.

server_pid=
stop_server_on_exit() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop_server_on_exit EXIT

# wait_port PORT: returns once something accepts on 127.0.0.1:PORT (at most 10 s).
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$PROG: nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# server_cmd KIND BINARY WORKERS PORT: sets the array `cmd` to the server's command line. KIND
# gw: the gateway with --workers WORKERS (default 2); uws: the uWebSockets peer on WORKERS
# threads (default 1); rust: a peer of scripts/peers/ (one address argument).
server_cmd() {
  case "$1" in
    gw) cmd=("$2" --listen "127.0.0.1:$4" --workers "${3:-2}") ;;
    uws) cmd=("$2" "$4" "${3:-1}") ;;
    rust) cmd=("$2" "127.0.0.1:$4") ;;
    *) echo "$PROG: unknown server kind $1" >&2; exit 2 ;;
  esac
}
