# shellcheck shell=bash
# What benches/echo_c.sh and benches/fanout_c.sh share: the scratch directory,
# the C client's build, a token, and waiting for a server just started.
# Sourced, not run; `root`, `bin` (roostd) and UWS_PEER are the caller's.

: "${UWS_PEER:?set UWS_PEER to the uWebSockets peer binary (benches/peers/README.md)}"

# c_setup NAME SUB: a scratch directory in `tmp` (removed at exit, with the
# last server), benches/NAME.c built there as $tmp/NAME, a token for SUB.
c_setup() {
    tmp=$(mktemp -d "/tmp/roostd-$1.XXXXXX")
    trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
    cc -O2 -o "$tmp/$1" "$root/benches/$1.c"
    token=$("$bin" token --sub "$2" --read '*' --write '*' 2>/dev/null)
}

# c_next_port: a fresh port in `port`, and no log left from the last server
# (it said "listening on" too, until the new one truncates it).
c_next_port() {
    port=$((PORT++))
    rm -f "$tmp/server.log"
}

# c_await NAME: `server` is the pid of the server just started, logging to
# $tmp/server.log; returns once it says it listens.
c_await() {
    server=$!
    for _ in $(seq 100); do grep -q "listening on" "$tmp/server.log" && return; sleep 0.05; done
    echo "$1 did not start" >&2
    exit 1
}
