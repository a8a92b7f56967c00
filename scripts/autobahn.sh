#!/usr/bin/env bash
# scripts/autobahn.sh - run the Autobahn|Testsuite fuzzingclient (RFC 6455 / RFC 7692
# WebSocket conformance) against the gateway's /echo endpoint.
#
# What it does:
#   1. finds a working Python 2.7 (the suite is Python-2.7-only) and, if needed and allowed,
#      installs one from Debian bullseye (apt source pinned at priority 100);
#   2. builds (once, then reuses) a cached Python 2.7 virtualenv with the pinned requirement
#      set in scripts/autobahn/requirements-py27.txt (virtualenv 20.21.1 run from a Python 3 venv);
#   3. builds the gateway (cargo build --release -p gateway) unless --gateway is given, starts it
#      on 127.0.0.1:<port> with a 16 MiB message limit, waits for it to listen;
#   4. runs `wstest -m fuzzingclient` with a generated spec, bounded by --timeout;
#   5. summarizes <out>/index.json into <out>/summary.txt and <out>/summary.json and exits
#      non-zero if any case's behavior is FAILED or UNIMPLEMENTED.
#
# Run `scripts/autobahn.sh --help` for options. Exit codes: 0 conformance OK; 1 conformance
# failure (a case FAILED/UNIMPLEMENTED, or with --strict anything not OK; selected cases left
# unrun; the gateway crashed during the run); 2 usage error; 3 setup/infrastructure failure
# (no Python 2.7, install failed, gateway did not build/start/handshake, wstest timed out or
# wrote no report).
set -euo pipefail
shopt -s inherit_errexit

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
REQUIREMENTS="$SCRIPT_DIR/autobahn/requirements-py27.txt"
SPEC_TEMPLATE="$SCRIPT_DIR/autobahn/fuzzingclient.json"
VIRTUALENV_VERSION="20.21.1"
AGENT="pushgw"
PROG="autobahn"

usage() {
  cat <<EOF
Usage: scripts/autobahn.sh [options]

Installs (once) and runs the Autobahn|Testsuite fuzzingclient against the gateway's /echo
endpoint, then summarizes the report.

Case selection:
  --quick              cases 1.* to 10.* (RFC 6455), excluding 12.*/13.* (default)
  --full               all cases, including permessage-deflate 12.* and 13.* (5-15 min)
  --cases LIST         comma-separated case patterns, e.g. "1.*,2.*,9.1.*"; overrides
                       --quick/--full
  --exclude LIST       comma-separated case patterns to exclude (added to the mode's list)

Target:
  --gateway PATH       gateway binary to test (default: cargo build --release -p gateway,
                       then \${CARGO_TARGET_DIR:-target}/release/gateway)
  --port N             port for the gateway on 127.0.0.1 (default: first free port from 9001)
  --gateway-arg ARG    extra argument for the gateway (repeatable)
  --target-url URL     do not build or start the gateway; test an already running server at
                       URL (e.g. ws://127.0.0.1:9002 for 'wstest -m echoserver'); for testing
                       this script

Run:
  --out DIR            report directory (default: target/autobahn)
  --timeout SECONDS    bound on the whole wstest run (default: 600 with --quick, else 3600)
  --strict             also fail on NON-STRICT, NO_CLOSE and on any close behavior other
                       than OK/INFORMATIONAL
  --verbose            stream wstest output instead of periodic progress lines
  --install-only       only set up the Python 2.7 virtualenv, then exit
  --install-python2    if no Python 2.7 is found, install it from Debian bullseye via apt
                       (root only; implied when CI=true)
  -h, --help           show this help

Environment:
  AUTOBAHN_VENV        virtualenv location (default: \$HOME/.cache/pushgw/autobahn-venv)
  AUTOBAHN_PYTHON2     Python 2.7 interpreter to use instead of searching for one
  CI=true              allows installing Python 2.7 via apt when running as root

Outputs in DIR: index.json/index.html (wstest report), summary.txt, summary.json,
fuzzingclient.json (spec used), wstest.log, gateway.log.
Exit codes: 0 OK; 1 conformance failure (FAILED/UNIMPLEMENTED case, cases not run, gateway
crash); 2 usage error; 3 setup failure (no Python 2.7, install, build, gateway start or
handshake failed, wstest timed out or wrote no report).
EOF
}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { # die CODE MESSAGE...
  local code=$1
  shift
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit "$code"
}
need_arg() { [[ $# -ge 2 && -n $2 ]] || die 2 "option $1 needs a value (see --help)"; }

# ----------------------------------------------------------------------------------------------
# Options
MODE=quick
CASES=""
EXTRA_EXCLUDE=""
GATEWAY=""
PORT=""
OUT=""
TIMEOUT=""
TARGET_URL="${AUTOBAHN_TARGET_URL:-}"
INSTALL_ONLY=0
INSTALL_PY2=0
STRICT=0
VERBOSE=0
GATEWAY_ARGS=()

while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --quick) MODE=quick ;;
    --full) MODE=full ;;
    --cases) need_arg "$@"; CASES=$2; shift ;;
    --cases=*) CASES=${1#*=} ;;
    --exclude) need_arg "$@"; EXTRA_EXCLUDE=$2; shift ;;
    --exclude=*) EXTRA_EXCLUDE=${1#*=} ;;
    --gateway) need_arg "$@"; GATEWAY=$2; shift ;;
    --gateway=*) GATEWAY=${1#*=} ;;
    --gateway-arg) [[ $# -ge 2 ]] || die 2 "option $1 needs a value"; GATEWAY_ARGS+=("$2"); shift ;;
    --gateway-arg=*) GATEWAY_ARGS+=("${1#*=}") ;;
    --port) need_arg "$@"; PORT=$2; shift ;;
    --port=*) PORT=${1#*=} ;;
    --out) need_arg "$@"; OUT=$2; shift ;;
    --out=*) OUT=${1#*=} ;;
    --timeout) need_arg "$@"; TIMEOUT=$2; shift ;;
    --timeout=*) TIMEOUT=${1#*=} ;;
    --target-url) need_arg "$@"; TARGET_URL=$2; shift ;;
    --target-url=*) TARGET_URL=${1#*=} ;;
    --install-only) INSTALL_ONLY=1 ;;
    --install-python2) INSTALL_PY2=1 ;;
    --strict) STRICT=1 ;;
    --verbose | -v) VERBOSE=1 ;;
    *) die 2 "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

if [[ -n $PORT ]] && ! [[ $PORT =~ ^[0-9]+$ && $PORT -ge 1 && $PORT -le 65535 ]]; then
  die 2 "--port must be a TCP port number, got '$PORT'"
fi
if [[ -n $TIMEOUT ]] && ! [[ $TIMEOUT =~ ^[0-9]+$ && $TIMEOUT -ge 1 ]]; then
  die 2 "--timeout must be a positive number of seconds, got '$TIMEOUT'"
fi
if [[ -n $TARGET_URL && ! $TARGET_URL =~ ^wss?:// ]]; then
  die 2 "--target-url must start with ws:// or wss://, got '$TARGET_URL'"
fi
if [[ -n $TARGET_URL && ( -n $GATEWAY || -n $PORT || ${#GATEWAY_ARGS[@]} -gt 0 ) ]]; then
  die 2 "--target-url cannot be combined with --gateway, --port or --gateway-arg"
fi
if [[ -z $TIMEOUT ]]; then
  if [[ $MODE == quick && -z $CASES ]]; then TIMEOUT=600; else TIMEOUT=3600; fi
fi

VENV="${AUTOBAHN_VENV:-$HOME/.cache/pushgw/autobahn-venv}"
CACHE_DIR=$(dirname "$VENV")
BOOTSTRAP_VENV="$CACHE_DIR/virtualenv-$VIRTUALENV_VERSION-py3"
INSTALL_LOG="$CACHE_DIR/autobahn-install.log"

# ----------------------------------------------------------------------------------------------
# Cleanup: always stop what we started.
GATEWAY_PID=""
WSTEST_PID=""
TAIL_PID=""
cleanup() {
  local pid
  for pid in "$TAIL_PID" "$WSTEST_PID" "$GATEWAY_PID"; do
    [[ -n $pid ]] || continue
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  GATEWAY_PID=""
  WSTEST_PID=""
  TAIL_PID=""
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ----------------------------------------------------------------------------------------------
# Python 3 (bootstrap venv for virtualenv, spec generation, report summary)
find_python3() {
  local c p
  for c in python3 /usr/bin/python3 python3.11 python3.12 python3.13 python3.10 python3.9; do
    p=$(command -v "$c" 2>/dev/null) || continue
    if "$p" -c 'import sys, json; sys.exit(0 if sys.version_info >= (3, 7) else 1)' >/dev/null 2>&1; then
      # Resolve pyenv shims to the real interpreter.
      "$p" -c 'import sys; print(sys.executable)'
      return 0
    fi
  done
  return 1
}
PY3=$(find_python3) || die 3 "no working Python 3 (>= 3.7) found; install python3 (apt-get install python3 python3-venv)"

# ----------------------------------------------------------------------------------------------
# Python 2.7
is_py27() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' >/dev/null 2>&1; }

find_python27() {
  local c p roots=() root
  if [[ -n ${AUTOBAHN_PYTHON2:-} ]]; then
    is_py27 "$AUTOBAHN_PYTHON2" || die 3 "AUTOBAHN_PYTHON2=$AUTOBAHN_PYTHON2 is not a working Python 2.7"
    "$AUTOBAHN_PYTHON2" -c 'import sys; print(sys.executable)'
    return 0
  fi
  # 1. python2.7 on PATH that actually runs (a pyenv shim may exist and fail).
  if p=$(command -v python2.7 2>/dev/null) && is_py27 "$p"; then
    "$p" -c 'import sys; print(sys.executable)'
    return 0
  fi
  # 2. pyenv-built 2.7 (newest first).
  roots=(/root/.pyenv)
  [[ -n ${PYENV_ROOT:-} ]] && roots+=("$PYENV_ROOT")
  [[ -n ${HOME:-} ]] && roots+=("$HOME/.pyenv")
  if command -v pyenv >/dev/null 2>&1 && root=$(pyenv root 2>/dev/null); then
    roots+=("$root")
  fi
  for root in "${roots[@]}"; do
    for p in $(compgen -G "$root/versions/2.7*/bin/python2.7" | sort -rV); do
      if is_py27 "$p"; then
        echo "$p"
        return 0
      fi
    done
  done
  # 3. Debian's (e.g. installed from bullseye).
  if is_py27 /usr/bin/python2.7; then
    echo /usr/bin/python2.7
    return 0
  fi
  return 1
}

# Root with apt-get may install what is missing, so the README's test command works on a fresh
# machine as written; anyone else is told what to do.
may_change_system() {
  [[ $(id -u) -eq 0 ]] || return 1
  [[ $INSTALL_PY2 -eq 1 ]] && return 0
  case ${CI:-} in true | TRUE | True | 1 | yes) return 0 ;; esac
  command -v apt-get >/dev/null
}

APT_UPDATED=0
apt_update_once() {
  if [[ $APT_UPDATED -eq 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$INSTALL_LOG" 2>&1 ||
      { tail -n 20 "$INSTALL_LOG" >&2; die 3 "apt-get update failed (log: $INSTALL_LOG)"; }
    APT_UPDATED=1
  fi
}
apt_install() {
  apt_update_once
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >>"$INSTALL_LOG" 2>&1 ||
    { tail -n 20 "$INSTALL_LOG" >&2; die 3 "apt-get install $* failed (log: $INSTALL_LOG)"; }
}

# The Debian mirror apt already uses (first non-security debian URI), for the bullseye source.
debian_mirror() {
  local uri
  uri=$(grep -hsE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '{print $2}' | grep -E '/debian/?$' | head -n 1 || true)
  if [[ -z $uri ]]; then
    uri=$(grep -hsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      sed -E 's/\[[^]]*\]//' | awk '{print $2}' | grep -E '/debian/?$' | head -n 1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

install_python27_from_bullseye() {
  local mirror keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  mirror=$(debian_mirror)
  log "installing python2.7 + python2.7-dev from Debian bullseye ($mirror), pinned at priority 100"
  {
    echo "# Added by pushgw scripts/autobahn.sh: Python 2.7 for the Autobahn|Testsuite."
    echo "Types: deb"
    echo "URIs: $mirror"
    echo "Suites: bullseye"
    echo "Components: main"
    [[ -f $keyring ]] && echo "Signed-By: $keyring"
  } >/etc/apt/sources.list.d/pushgw-bullseye-python2.sources
  cat >/etc/apt/preferences.d/pushgw-bullseye-python2 <<'EOF'
# Added by pushgw scripts/autobahn.sh: take nothing from bullseye unless nothing else has it.
Package: *
Pin: release n=bullseye
Pin-Priority: 100
EOF
  local pkgs=(python2.7 python2.7-dev)
  command -v gcc >/dev/null 2>&1 || pkgs+=(gcc libc6-dev)
  apt_install "${pkgs[@]}"
}

NO_PY27_MSG="no working Python 2.7 found (the Autobahn|Testsuite runs only on Python 2.7).
  Looked for: python2.7 on PATH, ~/.pyenv/versions/2.7*/bin/python2.7, /usr/bin/python2.7.
  Fix one of:
    - pyenv install 2.7.18                          (needs build deps; includes headers)
    - sudo scripts/autobahn.sh --install-python2    (Debian 12: adds a bullseye apt source
                                                     pinned at priority 100, installs
                                                     python2.7 python2.7-dev)
    - AUTOBAHN_PYTHON2=/path/to/python2.7 scripts/autobahn.sh ..."

ensure_python27() {
  local py
  if py=$(find_python27); then
    echo "$py"
    return 0
  fi
  if ! may_change_system; then
    if [[ $INSTALL_PY2 -eq 1 ]]; then
      die 3 "--install-python2 needs root (it changes apt sources and installs packages); rerun with sudo"
    fi
    die 3 "$NO_PY27_MSG"
  fi
  install_python27_from_bullseye >&2
  is_py27 /usr/bin/python2.7 || die 3 "python2.7 was installed but /usr/bin/python2.7 does not run"
  echo /usr/bin/python2.7
}

# wsaccel (the one compiled requirement) needs Python.h and a C compiler.
ensure_build_deps() {
  local py=$1 inc
  inc=$("$py" -c 'from distutils import sysconfig; print(sysconfig.get_python_inc())' 2>/dev/null || true)
  if [[ -z $inc || ! -f $inc/Python.h ]]; then
    if [[ $py == /usr/bin/python2.7 ]] && may_change_system; then
      apt_install python2.7-dev >&2
    elif [[ $py == /usr/bin/python2.7 ]]; then
      die 3 "Python.h for $py not found: install python2.7-dev (or run as root with --install-python2)"
    else
      die 3 "Python.h for $py not found (expected in '${inc:-?}'); use a Python 2.7 build with headers"
    fi
  fi
  if ! command -v gcc >/dev/null 2>&1 && ! command -v cc >/dev/null 2>&1; then
    if may_change_system; then
      apt_install gcc libc6-dev >&2
    else
      die 3 "no C compiler found (wsaccel needs one): apt-get install gcc"
    fi
  fi
}

# ----------------------------------------------------------------------------------------------
# The cached virtualenv
REQ_HASH=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
STAMP="$VENV/.pushgw-autobahn-requirements.sha256"

venv_ok() {
  [[ -f $STAMP && $(cat "$STAMP" 2>/dev/null) == "$REQ_HASH" && -x $VENV/bin/wstest ]] || return 1
  "$VENV/bin/python" -c 'import autobahntestsuite, autobahntestsuite.wstest, wsaccel, twisted' >/dev/null 2>&1
}

build_venv() {
  local py2 t0
  t0=$(date +%s)
  : >"$INSTALL_LOG"
  py2=$(ensure_python27)
  ensure_build_deps "$py2"
  log "building the Autobahn|Testsuite virtualenv at $VENV with $py2 (log: $INSTALL_LOG)"

  if ! "$BOOTSTRAP_VENV/bin/virtualenv" --version 2>/dev/null | grep -q "^virtualenv $VIRTUALENV_VERSION "; then
    rm -rf "$BOOTSTRAP_VENV"
    {
      "$PY3" -m venv "$BOOTSTRAP_VENV" &&
        "$BOOTSTRAP_VENV/bin/python" -m pip install -q --disable-pip-version-check "virtualenv==$VIRTUALENV_VERSION"
    } >>"$INSTALL_LOG" 2>&1 || {
      tail -n 20 "$INSTALL_LOG" >&2
      rm -rf "$BOOTSTRAP_VENV"
      die 3 "could not create a Python 3 venv with virtualenv==$VIRTUALENV_VERSION using $PY3 (python3-venv missing?); log: $INSTALL_LOG"
    }
  fi

  rm -rf "$VENV"
  {
    "$BOOTSTRAP_VENV/bin/virtualenv" -q --no-periodic-update -p "$py2" "$VENV" &&
      PIP_NO_PYTHON_VERSION_WARNING=1 "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -r "$REQUIREMENTS"
  } >>"$INSTALL_LOG" 2>&1 || {
    tail -n 30 "$INSTALL_LOG" >&2
    die 3 "installing the Autobahn|Testsuite into $VENV failed; log: $INSTALL_LOG"
  }
  "$VENV/bin/python" -c 'import autobahntestsuite, autobahntestsuite.wstest, wsaccel, twisted' >>"$INSTALL_LOG" 2>&1 || {
    tail -n 20 "$INSTALL_LOG" >&2
    die 3 "the Autobahn|Testsuite virtualenv at $VENV does not import; log: $INSTALL_LOG"
  }
  echo "$REQ_HASH" >"$STAMP"
  log "virtualenv ready in $(($(date +%s) - t0)) s"
}

ensure_venv() {
  venv_ok && return 0
  mkdir -p "$CACHE_DIR"
  # Serialize concurrent builds of the same venv.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV.lock"
    flock -w 1800 9 || die 3 "timed out waiting for the lock $VENV.lock"
    if venv_ok; then
      exec 9>&-
      return 0
    fi
    build_venv
    exec 9>&-
  else
    build_venv
  fi
}

ensure_venv
if [[ $INSTALL_ONLY -eq 1 ]]; then
  log "wstest ready: $VENV/bin/wstest"
  exit 0
fi

# ----------------------------------------------------------------------------------------------
# Report directory
OUT=${OUT:-$REPO_ROOT/target/autobahn}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# Remove a previous run's results so a stale index.json can never be mistaken for this run's.
rm -f "$OUT"/index.json "$OUT"/index.html "$OUT"/summary.txt "$OUT"/summary.json \
  "$OUT"/fuzzingclient.json "$OUT"/wstest.log "$OUT"/gateway.log
find "$OUT" -maxdepth 1 -type f -name "${AGENT}_case_*" -delete

# ----------------------------------------------------------------------------------------------
# Target: the gateway, or an already running server (--target-url)
port_free() {
  "$PY3" - "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

# shellcheck disable=SC2016 # $1 is expanded by the inner bash
port_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null; }

if [[ -n $TARGET_URL ]]; then
  URL=$TARGET_URL
  log "testing the already running server at $URL (no gateway started)"
else
  if [[ -z $GATEWAY ]]; then
    command -v cargo >/dev/null 2>&1 || die 3 "cargo not found; build the gateway or pass --gateway PATH"
    log "cargo build --release -p gateway"
    (cd "$REPO_ROOT" && cargo build --release -p gateway) || die 3 "cargo build --release -p gateway failed"
    target_dir=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
    [[ $target_dir == /* ]] || target_dir="$REPO_ROOT/$target_dir"
    GATEWAY="$target_dir/release/gateway"
  fi
  [[ -x $GATEWAY ]] || die 3 "gateway binary not found or not executable: $GATEWAY"

  if [[ -z $PORT ]]; then
    for p in $(seq 9001 9200); do
      if port_free "$p"; then
        PORT=$p
        break
      fi
    done
    [[ -n $PORT ]] || die 3 "no free port in 9001-9200; pass --port"
  elif ! port_free "$PORT"; then
    die 3 "port $PORT on 127.0.0.1 is already in use"
  fi

  URL="ws://127.0.0.1:$PORT/echo"
  log "starting $GATEWAY --listen 127.0.0.1:$PORT --max-message 16777216 ${GATEWAY_ARGS[*]:-}"
  "$GATEWAY" --listen "127.0.0.1:$PORT" --max-message 16777216 "${GATEWAY_ARGS[@]}" \
    </dev/null >"$OUT/gateway.log" 2>&1 &
  GATEWAY_PID=$!

  deadline=$(($(date +%s) + 10))
  until port_open "$PORT"; do
    if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
      rc=0
      wait "$GATEWAY_PID" || rc=$?
      GATEWAY_PID=""
      tail -n 20 "$OUT/gateway.log" >&2 || true
      die 3 "the gateway exited (status $rc) before listening on 127.0.0.1:$PORT; log: $OUT/gateway.log"
    fi
    if (($(date +%s) >= deadline)); then
      tail -n 20 "$OUT/gateway.log" >&2 || true
      die 3 "the gateway did not accept TCP on 127.0.0.1:$PORT within 10 s; log: $OUT/gateway.log"
    fi
    sleep 0.1
  done
fi

# Fail fast with a clear message if the endpoint does not do a WebSocket handshake at all
# (otherwise every case fails or wstest waits for the timeout).
probe_handshake() {
  "$PY3" - "$1" <<'EOF'
import base64, os, socket, sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
if u.scheme != "ws":
    sys.exit(0)  # wss: not probed
host, port = u.hostname, u.port or 80
path = (u.path or "/") + ("?" + u.query if u.query else "")
key = base64.b64encode(os.urandom(16)).decode()
req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, host, port, key))
try:
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(req.encode())
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    status = data.split(b"\r\n", 1)[0].decode("latin-1")
    if not status.startswith("HTTP/1.1 101"):
        print("got %r instead of 'HTTP/1.1 101'" % (status or "<connection closed>"))
        sys.exit(1)
    # Close politely: masked close frame with code 1000.
    mask = os.urandom(4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"\x03\xe8"))
    s.sendall(b"\x88\x82" + mask + payload)
    s.close()
except OSError as e:
    print("connection failed: %s" % e)
    sys.exit(1)
EOF
}
if ! probe_msg=$(probe_handshake "$URL"); then
  [[ -n $GATEWAY_PID ]] && { tail -n 20 "$OUT/gateway.log" >&2 || true; }
  die 3 "no WebSocket handshake at $URL: $probe_msg"
fi

# ----------------------------------------------------------------------------------------------
# Spec and run
SPEC="$OUT/fuzzingclient.json"
"$PY3" - "$SPEC_TEMPLATE" "$SPEC" "$OUT" "$AGENT" "$URL" "$MODE" "$CASES" "$EXTRA_EXCLUDE" <<'EOF'
import json, sys
template, spec_path, outdir, agent, url, mode, cases, extra_exclude = sys.argv[1:9]
with open(template) as f:
    spec = json.load(f)
split = lambda s: [c.strip() for c in s.split(",") if c.strip()]
spec["outdir"] = outdir
spec["servers"] = [{"agent": agent, "url": url}]
if cases:
    spec["cases"], spec["exclude-cases"] = split(cases), []
elif mode == "full":
    spec["cases"], spec["exclude-cases"] = ["*"], []
else:
    spec["cases"], spec["exclude-cases"] = ["*"], ["12.*", "13.*"]
spec["exclude-cases"] += split(extra_exclude)
spec.setdefault("exclude-agent-cases", {})
with open(spec_path, "w") as f:
    json.dump(spec, f, indent=3)
    f.write("\n")
EOF

selection=$("$PY3" -c 'import json,sys; s=json.load(open(sys.argv[1])); print("cases %s, excluding %s" % (",".join(s["cases"]), ",".join(s["exclude-cases"]) or "nothing"))' "$SPEC")
log "running wstest fuzzingclient against $URL ($selection; timeout ${TIMEOUT}s; log: $OUT/wstest.log)"

t0=$(date +%s)
(cd "$OUT" && exec timeout -k 15 "$TIMEOUT" "$VENV/bin/wstest" -m fuzzingclient -s "$SPEC") \
  </dev/null >"$OUT/wstest.log" 2>&1 &
WSTEST_PID=$!
if [[ $VERBOSE -eq 1 ]]; then
  tail -n +1 -f "$OUT/wstest.log" --pid "$WSTEST_PID" >&2 &
  TAIL_PID=$!
fi
last_progress=$t0
GATEWAY_DIED=""
gw_died_at=0
while kill -0 "$WSTEST_PID" 2>/dev/null; do
  sleep 1
  now=$(date +%s)
  if [[ $VERBOSE -eq 0 ]] && ((now - last_progress >= 30)); then
    last_progress=$now
    n=$(grep -c 'Running test case ID' "$OUT/wstest.log" 2>/dev/null || true)
    cur=$(grep -o 'Running test case ID [^ ]*' "$OUT/wstest.log" 2>/dev/null | tail -n 1 | awk '{print $5}' || true)
    log "... $((now - t0)) s: ${n:-0} cases started, current ${cur:-none}"
  fi
  if [[ -n $GATEWAY_PID ]] && ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
    gw_rc=0
    wait "$GATEWAY_PID" || gw_rc=$?
    GATEWAY_PID=""
    GATEWAY_DIED="exited with status $gw_rc"
    gw_died_at=$now
    log "the gateway exited (status $gw_rc) during the run; last lines of $OUT/gateway.log:"
    tail -n 20 "$OUT/gateway.log" >&2 || true
  fi
  # wstest writes a partial report once a connection is refused; if it does not stop by
  # itself soon after the gateway died, stop it.
  if [[ -n $GATEWAY_DIED ]] && ((now - gw_died_at >= 15)); then
    kill -TERM "$WSTEST_PID" 2>/dev/null || true
  fi
done
wstest_rc=0
wait "$WSTEST_PID" || wstest_rc=$?
WSTEST_PID=""
elapsed=$(($(date +%s) - t0))
if [[ -n $TAIL_PID ]]; then
  wait "$TAIL_PID" 2>/dev/null || true
  TAIL_PID=""
fi

if [[ ! -f $OUT/index.json ]]; then
  last=$(grep -o 'Running test case ID [^ ]*' "$OUT/wstest.log" 2>/dev/null | tail -n 1 | awk '{print $5}' || true)
  tail -n 15 "$OUT/wstest.log" >&2 || true
  if [[ -n $GATEWAY_DIED ]]; then
    die 1 "the gateway $GATEWAY_DIED during the run (last case started: ${last:-none}); no report written. Logs: $OUT/gateway.log, $OUT/wstest.log"
  fi
  if [[ $wstest_rc -eq 124 || $wstest_rc -eq 137 ]]; then
    die 3 "wstest did not finish within ${TIMEOUT}s (last case started: ${last:-none}); no report written. Log: $OUT/wstest.log"
  fi
  die 3 "wstest wrote no report ($OUT/index.json missing; exit status $wstest_rc; last case started: ${last:-none}). Log: $OUT/wstest.log"
fi
[[ $wstest_rc -eq 0 ]] || log "warning: wstest exited with status $wstest_rc but wrote a report"
log "wstest finished in ${elapsed} s"

# ----------------------------------------------------------------------------------------------
# Summary
summary_rc=0
"$PY3" - "$OUT" "$AGENT" "$URL" "$STRICT" "$elapsed" "$SPEC" "$OUT/wstest.log" "$GATEWAY_DIED" <<'EOF' || summary_rc=$?
import ast, json, os, re, sys
from collections import Counter, defaultdict

out, agent, url, strict, elapsed, spec_path, wstest_log, gateway_died = sys.argv[1:9]
strict = strict == "1"
with open(os.path.join(out, "index.json")) as f:
    index = json.load(f)
with open(spec_path) as f:
    spec = json.load(f)
if agent not in index:
    print("index.json has no results for agent %r (agents: %s)" % (agent, ", ".join(index) or "none"))
    sys.exit(3)
cases = index[agent]
if not cases:
    print("index.json has no cases for agent %r" % agent)
    sys.exit(3)

def key(cid):
    return tuple(int(p) if p.isdigit() else p for p in cid.split("."))

ids = sorted(cases, key=key)

# wstest also writes a (partial) report when a connection is refused, e.g. after the server
# died: compare with the case list wstest announced ("Cases = [...]" in its log).
expected = None
with open(wstest_log, errors="replace") as f:
    for line in f:
        if line.startswith("Cases = ["):
            expected = ast.literal_eval(line[len("Cases = "):].strip())
            break
connection_failures = []
with open(wstest_log, errors="replace") as f:
    connection_failures = [l.strip() for l in f if l.startswith("Connection to ") and " failed " in l]
missing = []
if expected is not None:
    excl = []
    for apat, cpats in spec.get("exclude-agent-cases", {}).items():
        if re.match("^" + apat.replace(".", r"\.").replace("*", ".*") + "$", agent):
            excl += [re.compile("^" + c.replace(".", r"\.").replace("*", ".*") + "$") for c in cpats]
    expected = [c for c in expected if not any(p.match(c) for p in excl)]
    missing = [c for c in expected if c not in cases]
ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "NO_CLOSE", "UNIMPLEMENTED", "FAILED"]
by_behavior = Counter(cases[c]["behavior"] for c in ids)
by_close = Counter(cases[c].get("behaviorClose", "?") for c in ids)
columns = [b for b in ORDER if b in by_behavior] + sorted(b for b in by_behavior if b not in ORDER)
by_section = defaultdict(Counter)
for c in ids:
    by_section[c.split(".")[0]][cases[c]["behavior"]] += 1

def with_behavior(*bs):
    return [c for c in ids if cases[c]["behavior"] in bs]

failed = with_behavior("FAILED")
unimplemented = with_behavior("UNIMPLEMENTED")
non_strict = with_behavior("NON-STRICT")
informational = with_behavior("INFORMATIONAL")
no_close = with_behavior("NO_CLOSE")
other = [c for c in ids if cases[c]["behavior"] not in ORDER]
close_issues = [c for c in ids if cases[c].get("behaviorClose") not in ("OK", "INFORMATIONAL")]

failing = failed + unimplemented + other
incomplete = bool(missing) or bool(gateway_died)
if strict:
    failing += non_strict + no_close + [c for c in close_issues if c not in failing]
slowest = sorted(ids, key=lambda c: -cases[c].get("duration", 0))[:5]

lines = []
lines.append("Autobahn|Testsuite fuzzingclient against %s" % url)
lines.append("cases: %s; excluded: %s; wstest run: %s s" % (
    ",".join(spec.get("cases", [])), ",".join(spec.get("exclude-cases", [])) or "none", elapsed))
lines.append("")
lines.append("%d cases: %s" % (len(ids), ", ".join("%d %s" % (by_behavior[b], b) for b in columns)))
lines.append("close behavior: %s" % ", ".join("%d %s" % (n, b) for b, n in sorted(by_close.items(), key=lambda x: -x[1])))
lines.append("")
w = max(len(b) for b in columns + ["section"]) + 1
lines.append("section".ljust(9) + "".join(b.rjust(w) for b in columns) + "total".rjust(7))
for sec in sorted(by_section, key=lambda s: int(s) if s.isdigit() else 1 << 30):
    row = by_section[sec]
    lines.append(sec.ljust(9) + "".join(str(row.get(b, 0)).rjust(w) for b in columns)
                 + str(sum(row.values())).rjust(7))
lines.append("")

def listing(title, lst):
    if not lst:
        return
    lines.append("%s (%d):" % (title, len(lst)))
    for c in lst:
        r = cases[c]
        extra = "behavior %s, close %s" % (r["behavior"], r.get("behaviorClose"))
        if r.get("remoteCloseCode") is not None:
            extra += ", remote close code %s" % r["remoteCloseCode"]
        lines.append("  %-10s %s  (%s)" % (c, extra, r.get("reportfile", "")))
    lines.append("")

listing("FAILED", failed)
listing("UNIMPLEMENTED", unimplemented)
listing("other behavior", other)
listing("NON-STRICT", non_strict)
listing("INFORMATIONAL", informational)
listing("NO_CLOSE", no_close)
listing("close behavior not OK/INFORMATIONAL", close_issues)
if expected is None:
    lines.append("warning: could not find wstest's case list in %s; completeness not checked" % wstest_log)
if missing:
    lines.append("INCOMPLETE: %d of %d selected cases have no result (not run), first: %s"
                 % (len(missing), len(expected), ", ".join(missing[:10])))
    for l in connection_failures[:3]:
        lines.append("  wstest: " + l)
if gateway_died:
    lines.append("GATEWAY CRASHED: the gateway %s during the run (see gateway.log)" % gateway_died)
if missing or gateway_died:
    lines.append("")
lines.append("slowest: " + ", ".join("%s %d ms" % (c, cases[c].get("duration", 0)) for c in slowest))
if failing or incomplete:
    why = []
    if failing:
        why.append("%d case(s) %s" % (len(failing), "not OK (--strict)" if strict else "FAILED/UNIMPLEMENTED"))
    if missing:
        why.append("%d case(s) not run" % len(missing))
    if gateway_died:
        why.append("gateway crashed")
    lines.append("RESULT: FAIL (%s)" % "; ".join(why))
else:
    lines.append("RESULT: PASS (no FAILED or UNIMPLEMENTED case%s)" % (
        "; strict" if strict else ""))
text = "\n".join(lines) + "\n"

summary = {
    "agent": agent,
    "url": url,
    "cases_selected": spec.get("cases", []),
    "cases_excluded": spec.get("exclude-cases", []),
    "wstest_seconds": int(elapsed),
    "total": len(ids),
    "expected": len(expected) if expected is not None else None,
    "missing": missing,
    "gateway_crashed": gateway_died or None,
    "by_behavior": dict(by_behavior),
    "by_behavior_close": dict(by_close),
    "by_section": {s: dict(by_section[s]) for s in sorted(by_section, key=lambda s: int(s) if s.isdigit() else 1 << 30)},
    "failed": failed,
    "unimplemented": unimplemented,
    "other": other,
    "non_strict": non_strict,
    "informational": informational,
    "no_close": no_close,
    "close_not_ok": {c: cases[c].get("behaviorClose") for c in close_issues},
    "strict": strict,
    "passed": not failing and not incomplete,
}
with open(os.path.join(out, "summary.txt"), "w") as f:
    f.write(text)
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")
sys.stdout.write(text)
sys.exit(1 if failing or incomplete else 0)
EOF

# Compare with the committed expected results, so any change of behavior shows as a diff.
EXPECTED=${AUTOBAHN_EXPECTED:-$REPO_ROOT/scripts/autobahn/expected.txt}
if [[ $summary_rc -eq 0 && -f $EXPECTED ]]; then
  "$PY3" - "$OUT/index.json" "$AGENT" "$EXPECTED" <<'EOF' || summary_rc=1
import json, sys
index, agent, expected_path = sys.argv[1:4]
cases = json.load(open(index))[agent]
expected = {}
for line in open(expected_path):
    if line.strip() and not line.startswith("#"):
        cid, behavior, close = line.split()
        expected[cid] = (behavior, close)
diff = []
for cid, r in cases.items():
    got = (r["behavior"], r.get("behaviorClose"))
    want = expected.get(cid)
    if want != got:
        diff.append("  %-10s expected %s, got %s" % (cid, "/".join(want) if want else "no entry", "/".join(map(str, got))))
if diff:
    print("results differ from %s (%d case(s)):" % (expected_path, len(diff)))
    print("\n".join(sorted(diff)))
    print("update the file on purpose if the change is intended")
print("autobahn: %d passed, %d failed" % (len(cases) - len(diff), len(diff)))
sys.exit(1 if diff else 0)
EOF
fi

case $summary_rc in
  0) log "report: $OUT/index.html; summary: $OUT/summary.txt" ;;
  1) log "conformance failures; report: $OUT/index.html; summary: $OUT/summary.txt"; exit 1 ;;
  *) die 3 "could not summarize $OUT/index.json (status $summary_rc)" ;;
esac
