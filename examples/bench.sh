#!/usr/bin/env bash
# The benchmarks of docs/benchmarks.md, each run RUNS times (default 3) on a
# fresh server and a fresh store, server pinned to core 0 and the load
# generator to core 1. Prints the median and range of each number.
#
#   examples/bench.sh                  # everything
#   examples/bench.sh idle publish1    # some of: idle publish1 publish50 fanout probe50
#
# probe50 is fanout without subscribers: the probes alone while 50
# publishers write, so the event loop's answer time without fan-out work.
#
# Environment: RUNS (3), DURATION (10s), PORT (18090), BENCH_DIR (a temp dir
# on the disk under test: fsync cost is what publish measures),
# SERVER_CPUS (0), LOADGEN_CPUS (1), ROOSTD_SECRET (generated if unset),
# NICE (-10: server and generator win over other work; needs root, else 0),
# QUIET_PCT (90) and QUIET_WAIT (600): before each run, wait up to QUIET_WAIT
# seconds for the machine to be at least QUIET_PCT % idle. Each result also
# records `other_busy_pct`, the CPU other processes used while it ran; a run
# where that passed MAX_NOISE (15) % is done again, up to RETRIES (3) times.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-10s}"
PORT="${PORT:-18090}"
SERVER_CPUS="${SERVER_CPUS:-0}"
LOADGEN_CPUS="${LOADGEN_CPUS:-1}"
export ROOSTD_SECRET="${ROOSTD_SECRET:-bench-secret-$(date +%s)-0123456789abcdef}"
# NICE, QUIET_PCT, QUIET_WAIT, MAX_NOISE, RETRIES: defaults in benches/lib.sh.
BENCH_PROG=bench.sh
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"
work="${BENCH_DIR:-$(mktemp -d /tmp/roostd-bench.XXXXXX)}"
mkdir -p "$work"
results="$work/results.jsonl"
: >"$results"

cargo build --quiet --release --bin roostd --example loadgen
server_pid=""
stop_server() {
    bench_stop "$server_pid"
    server_pid=""
}
trap stop_server EXIT

# One measurement: a fresh store and server, one loadgen run, its JSON line
# kept; redone when other processes disturbed it (bench_measure, lib.sh).
measure() {
    local name="$1" run="$2"
    bench_measure "$results" "$name run $run" measure_once "$@"
}

measure_once() {
    local name="$1" run="$2"
    shift 2
    local data="$work/data-$name-$run"
    rm -rf "$data"
    local ready="$work/ready-$name-$run"
    rm -f "$ready"
    nice -n "$NICE" taskset -c "$SERVER_CPUS" target/release/roostd serve --listen "127.0.0.1:$PORT" --data "$data" \
        --ready-file "$ready" 2>"$work/server-$name-$run.log" &
    server_pid=$!
    for _ in $(seq 100); do
        [ -s "$ready" ] && break
        sleep 0.05
    done
    echo "== $name, run $run: loadgen $*" >&2
    local out
    out="$(nice -n "$NICE" taskset -c "$LOADGEN_CPUS" target/release/examples/loadgen "$@" \
        --url "ws://127.0.0.1:$PORT" --pid "$server_pid")"
    echo "$out" >&2
    echo "$out" | tail -n 1 | sed "s/^{/{\"name\":\"$name\",\"run\":$run,/" >>"$results"
    stop_server
}

wanted=("$@")
[[ ${#wanted[@]} -eq 0 ]] && wanted=(idle publish1 publish50 fanout)
for name in "${wanted[@]}"; do
    for run in $(seq "$RUNS"); do
        case "$name" in
            idle) measure idle "$run" idle --conns 1000 --hold 1s ;;
            publish1) measure publish1 "$run" publish --publishers 1 --duration "$DURATION" ;;
            publish50) measure publish50 "$run" publish --publishers 50 --duration "$DURATION" ;;
            fanout) measure fanout "$run" fanout --subscribers 100 --publishers 50 --duration "$DURATION" ;;
            probe50) measure probe50 "$run" fanout --subscribers 0 --publishers 50 --duration "$DURATION" ;;
            *) echo "bench.sh: unknown benchmark $name" >&2; exit 2 ;;
        esac
    done
done

python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def show(name, label, get, unit=""):
    vals = [get(r) for r in rows if r["name"] == name]
    vals = [v for v in vals if v is not None]
    if vals:
        print(f"{name:10} {label:34} median {statistics.median(vals):>10,.1f}{unit}   range {min(vals):,.1f} .. {max(vals):,.1f}{unit}   (n={len(vals)})")
ms = lambda us: None if us is None else us / 1000
show("idle", "bytes per idle connection", lambda r: r["bytes_per_conn"], " B")
show("idle", "server RSS with 1000 connections", lambda r: r["rss_after_bytes"] / 1048576, " MiB")
for n in ("publish1", "publish50"):
    show(n, "acked publishes/s", lambda r: r["acked_per_s"])
    show(n, "pub→ack p50", lambda r: ms(r["latency"].get("p50_us")), " ms")
    show(n, "pub→ack p99", lambda r: ms(r["latency"].get("p99_us")), " ms")
    show(n, "server CPU per acked publish", lambda r: r["server_cpu_us_per_ack"], " µs")
show("fanout", "delivered msg/s", lambda r: r["delivered_per_s"])
for n in ("probe50",):
    show(n, "acked publishes/s", lambda r: r["acked_per_s"])
    show(n, "probe pub→ack p50", lambda r: ms(r["probe"].get("p50_us")), " ms")
    show(n, "probe pub→ack p99", lambda r: ms(r["probe"].get("p99_us")), " ms")
    show(n, "hist probe p50", lambda r: ms(r["hist_probe"].get("p50_us")), " ms")
    show(n, "hist probe p99", lambda r: ms(r["hist_probe"].get("p99_us")), " ms")
show("fanout", "acked publishes/s", lambda r: r["acked_per_s"])
show("fanout", "probe pub→ack p50", lambda r: ms(r["probe"].get("p50_us")), " ms")
show("fanout", "probe pub→ack p99", lambda r: ms(r["probe"].get("p99_us")), " ms")
show("fanout", "hist probe p50", lambda r: ms(r["hist_probe"].get("p50_us")), " ms")
show("fanout", "hist probe p99", lambda r: ms(r["hist_probe"].get("p99_us")), " ms")
show("fanout", "pub→delivery p99", lambda r: ms(r["delivery_latency"].get("p99_us")), " ms")
show("fanout", "server CPU per delivered msg", lambda r: r["server_cpu_us_per_delivered"], " µs")
for n in ("idle", "publish1", "publish50", "fanout", "probe50"):
    show(n, "other processes' CPU (noise)", lambda r: r.get("other_busy_pct"), " %")
EOF
echo "raw results: $results" >&2
