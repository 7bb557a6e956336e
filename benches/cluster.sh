#!/usr/bin/env bash
# Publish → ack latency and acked messages/s, a single node against a
# cluster node (docs/cluster.md), in one run on this machine:
#
#   bash benches/cluster.sh            # DUR=10s per measurement
#
# Starts three nats-servers (JetStream, routed, on 127.0.0.1), a single
# roostd and a roostd cluster node (3 replicas), then runs
# `loadgen publish` with 1 and 50 publishers (closed loop, one publish in
# flight per publisher) against each. Needs nats-server (apt-get install
# nats-server). Prints one line per measurement and the JSON of each.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nats-server >/dev/null || { echo "nats-server is missing: apt-get install nats-server" >&2; exit 77; }
cargo build --release -q --bin roostd --example loadgen
DUR=${DUR:-10s}
BIN=target/release/roostd
GEN=target/release/examples/loadgen
work=$(mktemp -d /tmp/roostd-cluster-bench.XXXXXX)
export ROOSTD_SECRET=cluster-bench-secret-0123456789-0123456789
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
routes=nats://127.0.0.1:16222,nats://127.0.0.1:16223,nats://127.0.0.1:16224
for i in 0 1 2; do
    nats-server -a 127.0.0.1 -p $((14222 + i)) -js -sd "$work/nats$i" -n "n$i" --cluster_name bench \
        --cluster "nats://127.0.0.1:$((16222 + i))" --routes "$routes" >"$work/nats$i.log" 2>&1 &
    pids+=($!)
done
serve() { # name, extra args...
    local name=$1
    shift
    "$BIN" serve --listen 127.0.0.1:0 --data "$work/$name" --publish-rate 0 --ready-file "$work/$name.addr" \
        "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
}
serve single
serve cluster --cluster nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224 \
    --cluster-name bench --cluster-replicas 3
for name in single cluster; do
    for _ in $(seq 600); do [ -s "$work/$name.addr" ] && break; sleep 0.1; done
    [ -s "$work/$name.addr" ] || { echo "$name did not start:" >&2; cat "$work/$name.log" >&2; exit 1; }
done
# The cluster node takes publishes once its link is up and it caught up.
for _ in $(seq 600); do
    curl -fs "http://$(cat "$work/cluster.addr")/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
echo "nats-server $(nats-server --version), $(nproc) cores, DUR=$DUR"
for p in 1 50; do
    for name in single cluster; do
        json=$("$GEN" publish --url "ws://$(cat "$work/$name.addr")" --publishers "$p" --duration "$DUR" \
            --channel "bench-$p" 2>/dev/null | tail -n 1)
        python3 -c '
import json, sys
name, p, r = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
l = r["latency"]
print("%-7s %2s publishers: %8.0f acked/s  p50 %6.2f ms  p99 %6.2f ms  errors %s"
      % (name, p, r["acked_per_s"], l["p50_us"] / 1000, l["p99_us"] / 1000, r["errors"]))
' "$name" "$p" "$json"
        echo "  $json"
    done
done
