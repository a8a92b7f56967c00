#!/usr/bin/env bash
# Browser-level test: the chat page, the echo tester (and the file page and the command pages,
# when the gateway has --watch and --command) driven in headless Chromium over WebDriver
# (scripts/browser/e2e.py, standard-library Python only); on a second gateway with
# --jwt-secret, the chat page and the command pages with a token (JWT); then all again over TLS
# with a self-signed certificate (when openssl is there).
# Installs Debian's chromium and chromium-driver when missing, if running as root with apt-get;
# otherwise says what to install. (--install is accepted for compatibility.)
#   scripts/browser-test.sh [--install] [--gateway PATH]
set -euo pipefail
cd "$(dirname "$0")/.."

install=0
gateway=""
for arg in "$@"; do
  case "$arg" in
    --install) install=1 ;;
    --gateway=*) gateway=${arg#--gateway=} ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "browser-test: unknown argument $arg" >&2; exit 2 ;;
  esac
done

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
    || ! command -v openssl >/dev/null; then
  # As root with apt-get the packages are installed (the README's test command works on a
  # fresh machine as written); otherwise the script says what to install. (openssl makes the
  # TLS run's test certificate; without it that run is skipped with a note.)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "browser-test: installing chromium, chromium-driver and openssl (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium chromium-driver openssl >/dev/null
  elif ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "browser-test: needs chromium and chromedriver: apt-get install chromium chromium-driver" >&2
    echo "              (run as root on Debian to have this script install them)" >&2
    exit 3
  fi
fi

if [ -z "$gateway" ]; then
  cargo build --release -q -p gateway
  gateway=target/release/gateway
fi

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
watched="$work/notes.txt"
echo "starting" > "$watched"
args=(--listen "127.0.0.1:$port")
file_arg=()
if "$gateway" --help | grep -q -- '--watch'; then
  args+=(--watch "notes=$watched")
  file_arg=(--file "notes=$watched")
fi
if "$gateway" --help | grep -q -- '--command'; then
  token=e2e-$RANDOM$RANDOM
  args+=(--publish-token "$token" --command 'sed=sed -u s/a/b/'
         --command "count=sh -c 'echo one; echo two; exit 3'")
  file_arg+=(--token "$token")
fi
# Waits (at most 10 s) until something listens on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 100); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null; then return; fi
    sleep 0.1
  done
}
"$gateway" "${args[@]}" >"$work/gateway.log" 2>&1 &
gw_pid=$!
trap 'kill $gw_pid 2>/dev/null || true; wait $gw_pid 2>/dev/null || true; rm -rf "$work"' EXIT
wait_port "$port"
python3 scripts/browser/e2e.py --base "http://127.0.0.1:$port" "${file_arg[@]}" --shots target/browser

# Tokens: a second gateway with --jwt-secret; the chat and command pages pass their ?token= to
# their socket, and the token's claims allow the room and the commands.
if "$gateway" --help | grep -q -- '--jwt-secret'; then
  secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  jport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$gateway" --listen "127.0.0.1:$jport" --jwt-secret "$secret" --command 'sed=sed -u s/a/b/' \
    --command "count=sh -c 'echo one; echo two; exit 3'" >"$work/gateway-jwt.log" 2>&1 &
  jwt_pid=$!
  trap 'kill $gw_pid $jwt_pid 2>/dev/null || true; wait $gw_pid $jwt_pid 2>/dev/null || true; rm -rf "$work"' EXIT
  wait_port "$jport"
  jwt=$("$gateway" token --secret "$secret" --sub browser --topics 'chat/*' --publish 'chat/*' \
    --commands sed,count --ttl 10m)
  python3 scripts/browser/e2e.py --base "http://127.0.0.1:$jport" --jwt "$jwt" --token "$jwt" \
    --shots target/browser
fi

# The same pages over TLS (https://, the sockets on wss://), with a self-signed test certificate
# made by openssl; skipped, with a note, where openssl or the gateway's TLS flags are missing.
if ! "$gateway" --help | grep -q -- '--tls-cert'; then
  echo "browser: TLS run skipped (this gateway has no --tls-cert)"
  exit 0
fi
if ! command -v openssl >/dev/null; then
  echo "browser: TLS run skipped (needs openssl to make a test certificate)"
  exit 0
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -addext basicConstraints=critical,CA:FALSE \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>"$work/openssl.log"
kill $gw_pid 2>/dev/null || true
wait $gw_pid 2>/dev/null || true
"$gateway" "${args[@]}" --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" >"$work/gateway-tls.log" 2>&1 &
gw_pid=$!
for _ in $(seq 100); do
  if grep -q 'listening on' "$work/gateway-tls.log" 2>/dev/null; then break; fi
  sleep 0.1
done
python3 scripts/browser/e2e.py --base "https://127.0.0.1:$port" --insecure "${file_arg[@]}" \
  --shots target/browser/tls
