#!/bin/sh
# Publish → ack latency next to many channels (docs/benchmarks.md):
#   examples/bench_channels.sh CHANNELS [RUNS] [BIN]
# Starts a release roostd on 127.0.0.1:8093 with a fresh store, creates
# CHANNELS channels (examples/fill_channels.py), then runs
# `loadgen publish` (4 publishers, 1000 publishes/s in total, 10 s) RUNS times
# on the channel `bench`, one line per run.
set -eu
n=${1:?channels}; runs=${2:-3}; bin=${3:-target/release/roostd}
export ROOSTD_SECRET=bench-secret-0123456789abcdef0123456789
data=$(mktemp -d)
# Room for `bench` next to the filled channels (a binary without the flag has no limit).
limit=""
if "$bin" serve --help | grep -q -- --max-channels; then limit="--max-channels $((n + 100))"; fi
# shellcheck disable=SC2086
"$bin" serve --listen 127.0.0.1:8093 --data "$data" --publish-rate 0 $limit 2>"$data/log" &
pid=$!
trap 'kill $pid; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
sleep 1
token=$("$bin" token --data "$data" --sub fill --write 'fill-*' 2>/dev/null)
python3 examples/fill_channels.py ws://127.0.0.1:8093/ws "$token" "$n"
for _ in $(seq "$runs"); do
    target/release/examples/loadgen publish --url ws://127.0.0.1:8093 --publishers 4 --rate 1000 \
        --duration 10s --pid "$pid" | tail -1 | python3 -c 'import json, sys
r = json.load(sys.stdin); l = r["latency"]
print("acked %d  p50 %.2f ms  p99 %.2f ms  max %.2f ms  (other processes busy %s %%)" % (
    r["acked"], l["p50_us"] / 1000, l["p99_us"] / 1000, l["max_us"] / 1000, r["other_busy_pct"]))'
done
