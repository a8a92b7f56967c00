#!/usr/bin/env bash
# The project's test command (README "Test"): formatting, lints, every unit and integration
# test over real sockets, the browser test of the pages in headless Chromium, then the
# Autobahn|Testsuite quick run (cases 1.* to 10.*) against /echo, then every cargo-fuzz target
# for a bounded time. Installs what it needs: the Rust toolchain must exist; Chromium comes from
# Debian (scripts/browser-test.sh), Autobahn's Python 2.7 environment from scripts/autobahn.sh
# (in CI both may use apt), redis-server from Debian for the cluster tests (gateway/tests/cluster.rs),
# cargo-fuzz from crates.io (`cargo install --locked`, once).
#   scripts/test.sh                 everything
#   scripts/test.sh --no-autobahn   skip the conformance run
#   scripts/test.sh --no-browser    skip the browser test
#   scripts/test.sh --no-fuzz       skip fuzzing (FUZZ_SECONDS=N: seconds per target, default 60)
set -euo pipefail
cd "$(dirname "$0")/.."

autobahn=1
browser=1
fuzz=1
for arg in "$@"; do
  case "$arg" in
    --no-autobahn) autobahn=0 ;;
    --no-browser) browser=0 ;;
    --no-fuzz) fuzz=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

step() { printf '\n== %s ==\n' "$*"; }

step "rustfmt and clippy"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings

step "cargo test (unit and integration tests, release build)"
# The cluster tests start their own redis-server (no persistence, a free port).
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing redis-server (Debian package) for the cluster tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq redis-server >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
  else
    echo "test.sh: the cluster tests need redis-server: apt-get install redis-server" >&2
    exit 1
  fi
fi
# The Debian package starts a system instance on 6379; the tests never use it.
cargo test --workspace --release

if [ "$browser" = 1 ]; then
  step "browser test: chat and file pages in headless Chromium"
  scripts/browser-test.sh
fi

if [ "$autobahn" = 1 ]; then
  step "Autobahn|Testsuite fuzzingclient, cases 1.* to 10.*"
  scripts/autobahn.sh --quick
fi
if [ "$fuzz" = 1 ]; then
  secs=${FUZZ_SECONDS:-60}
  step "fuzzing: every cargo-fuzz target in gateway/fuzz for ${secs} s"
  # cargo-fuzz passes -Z sanitizer flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
  export RUSTC_BOOTSTRAP=1
  fuzz_target_dir=${CARGO_TARGET_DIR:-$PWD/target}
  [[ $fuzz_target_dir = /* ]] || fuzz_target_dir="$PWD/$fuzz_target_dir"
  (
    cd gateway/fuzz
    export CARGO_TARGET_DIR="$fuzz_target_dir/fuzz"
    cargo fuzz build -O
    for target in $(cargo fuzz list); do
      # New inputs go to a scratch corpus; the committed seeds are only read.
      corpus="$CARGO_TARGET_DIR/corpus/$target"
      mkdir -p "$corpus"
      log="$CARGO_TARGET_DIR/fuzz-$target.log"
      echo "fuzz: $target (log: $log)"
      if cargo fuzz run -O "$target" "$corpus" "seeds/$target" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^Done|stat::number_of_executed_units|stat::peak_rss_mb' "$log" || true
      else
        tail -n 60 "$log" >&2
        echo "fuzz: $target failed; the input is in gateway/fuzz/artifacts/$target/" >&2
        exit 1
      fi
    done
  )
fi
echo
echo "all checks passed"
