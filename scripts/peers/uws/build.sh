#!/usr/bin/env bash
# Builds the uWebSockets peer (server.cpp beside this script) against a uWebSockets checkout that
# lives OUTSIDE this repository (uWebSockets is not vendored here).
#
# Usage: scripts/peers/uws/build.sh UWS_CHECKOUT [OUT]   (OUT defaults to /tmp/uws-peer)
#
# UWS_CHECKOUT is a clone of github.com/uNetworking/uWebSockets whose uSockets/ submodule is
# checked out (github.com/uNetworking/uSockets), e.g.
#   git clone --recursive https://github.com/uNetworking/uWebSockets /work/peers/uWebSockets
#
# The build is the plain one: no TLS (LIBUS_NO_SSL, i.e. WITH_OPENSSL=0), uSockets' own epoll
# loop (no libuv, no io_uring), zlib linked as uWS requires by default (compression stays off in
# server.cpp). Flags: -O2, no -march=native and no LTO, for both uSockets and uWS (uWS's own
# build uses -O3 -march=native -flto; -O2 is what the gateway's release profile is closest to
# and keeps the binary portable). Override with CFLAGS / CXXFLAGS. Objects go to a temporary
# directory; the checkout is not written to. Needs cc, c++ (C++20) and zlib headers
# (Debian: zlib1g-dev).
set -euo pipefail

die() { echo "uws build: $*" >&2; exit 1; }

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $(basename "$0") UWS_CHECKOUT [OUT]"
uws=$1
out=${2:-/tmp/uws-peer}
here=$(cd "$(dirname "$0")" && pwd)

[ -d "$uws" ] || die "'$uws' is not a directory (want a uWebSockets checkout)"
uws=$(cd "$uws" && pwd)
[ -f "$uws/src/App.h" ] && [ -f "$uws/src/WebSocket.h" ] ||
    die "'$uws' is not a uWebSockets checkout (no src/App.h)"
[ -f "$uws/uSockets/src/libusockets.h" ] && [ -f "$uws/uSockets/src/eventing/epoll_kqueue.c" ] ||
    die "'$uws/uSockets' is empty or not uSockets: check out github.com/uNetworking/uSockets there (git submodule update --init, or a clone)"
command -v "${CC:-cc}" >/dev/null || die "no C compiler (${CC:-cc})"
command -v "${CXX:-c++}" >/dev/null || die "no C++ compiler (${CXX:-c++})"
echo '#include <zlib.h>' | "${CC:-cc}" -E -x c - >/dev/null 2>&1 ||
    die "zlib headers missing (Debian: apt-get install zlib1g-dev)"

CFLAGS=${CFLAGS:--O2}
CXXFLAGS=${CXXFLAGS:--O2}
obj=$(mktemp -d)
trap 'rm -rf "$obj"' EXIT

# uSockets: every C file; the SSL, libuv, GCD, ASIO and io_uring parts compile to nothing
# without their LIBUS_USE_* define.
( cd "$obj" && "${CC:-cc}" $CFLAGS -std=c11 -DLIBUS_NO_SSL -I"$uws/uSockets/src" -c \
    "$uws"/uSockets/src/*.c "$uws"/uSockets/src/eventing/*.c "$uws"/uSockets/src/crypto/*.c \
    "$uws"/uSockets/src/io_uring/*.c )
"${CXX:-c++}" $CXXFLAGS -std=c++20 -DLIBUS_NO_SSL -I"$uws/src" -I"$uws/uSockets/src" \
    -o "$out" "$here/server.cpp" "$obj"/*.o -lz -pthread
# The checkout's commit, when it is a git work tree of its own (not a folder of another repo).
rev() {
    [ "$(git -C "$1" rev-parse --show-toplevel 2>/dev/null)" = "$1" ] &&
        git -C "$1" rev-parse --short HEAD 2>/dev/null || true
}
uws_rev=$(rev "$uws") us_rev=$(rev "$uws/uSockets")
echo "uws build: $out${uws_rev:+ (uWebSockets $uws_rev${us_rev:+, uSockets $us_rev})}"
