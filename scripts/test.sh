#!/usr/bin/env bash
# The project's test command (README "Test"): formatting, lints, every unit and integration
# test over real sockets, the browser test of the pages in headless Chromium, then the
# Autobahn|Testsuite quick run (cases 1.* to 10.*) against /echo. Installs what it needs: the
# Rust toolchain must exist; Chromium comes from Debian (scripts/browser-test.sh) and Autobahn's
# Python 2.7 environment from scripts/autobahn.sh (in CI both may use apt).
#   scripts/test.sh                 everything
#   scripts/test.sh --no-autobahn   skip the conformance run
#   scripts/test.sh --no-browser    skip the browser test
set -euo pipefail
cd "$(dirname "$0")/.."

autobahn=1
browser=1
for arg in "$@"; do
  case "$arg" in
    --no-autobahn) autobahn=0 ;;
    --no-browser) browser=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
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

if [ "$browser" = 1 ]; then
  step "browser test: chat and file pages in headless Chromium"
  scripts/browser-test.sh
fi

if [ "$autobahn" = 1 ]; then
  step "Autobahn|Testsuite fuzzingclient, cases 1.* to 10.*"
  scripts/autobahn.sh --quick
fi
echo
echo "all checks passed"
