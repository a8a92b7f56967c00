#!/usr/bin/env bash
# The project's test command (README "Test"): formatting, lints, every unit and integration
# test over real sockets, then the Autobahn|Testsuite quick run (cases 1.* to 10.*) against
# /echo. Installs what it needs: the Rust toolchain must exist; Autobahn's Python 2.7
# environment is set up by scripts/autobahn.sh (in CI it may install python2.7 with apt).
#   scripts/test.sh            everything
#   scripts/test.sh --no-autobahn   skip the conformance run
set -euo pipefail
cd "$(dirname "$0")/.."

autobahn=1
for arg in "$@"; do
  case "$arg" in
    --no-autobahn) autobahn=0 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

step() { printf '\n== %s ==\n' "$*"; }

step "rustfmt and clippy"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings

step "cargo test (unit and integration tests, release build)"
cargo test --workspace --release

if [ "$autobahn" = 1 ]; then
  step "Autobahn|Testsuite fuzzingclient, cases 1.* to 10.*"
  scripts/autobahn.sh --quick
fi
echo
echo "all checks passed"
