#!/usr/bin/env bash
# B3 with a second generator (issue 18): benches/fanout_client.c, plain C
# and epoll, written apart from loadgen, against roostd and uWebSockets,
# alternating the two servers in every round so both see the same machine.
# One publisher paced at RATE messages/s, SUBS subscribers; server on CPU 0,
# client on CPU 1; server CPU-µs per delivery.
#
#   UWS_PEER=/path/to/uws-peer benches/fanout_c.sh ROOSTD [ROUNDS] [SECONDS]
#
# Prints each run as JSON and then, per cell, the median server CPU-µs per
# delivery of each server and their ratio. Environment: CELLS
# ("100:2000 1000:200 10000:20", subscribers:rate as run.sh's B3_CELLS),
# PAYLOAD (64, loadgen's default), PORT (18990).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
(($# >= 1)) || { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 2; }
bin=$1 rounds=${2:-3} secs=${3:-4}
: "${CELLS:=100:2000 1000:200 10000:20}" "${PAYLOAD:=64}" "${PORT:=18990}"
export ROOSTD_SECRET="${ROOSTD_SECRET:-fanout-c-secret-0123456789abcdef0123456789abcdef}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true  # 10,000 subscribers and the server's own
. "$root/benches/c_lib.sh"
c_setup fanout_client b3

# Starts one server on CPU 0 on a fresh port; sets `server` (its pid),
# `port` and `mode`.
start() {
    c_next_port
    case "$1" in
        roostd) taskset -c 0 "$bin" serve --listen "127.0.0.1:$port" --data "$tmp/data.$port" --no-demo \
                    --publish-rate 0 --max-connections 20000 --max-connections-per-ip 20000 >"$tmp/server.log" 2>&1 &
                mode=roost ;;
        uws) taskset -c 0 "$UWS_PEER" "$port" >"$tmp/server.log" 2>&1 &
             mode=peer ;;
    esac
    c_await "$1"
}

for cell in $CELLS; do
    subs=${cell%%:*} rate=${cell##*:}
    for r in $(seq "$rounds"); do
        for s in roostd uws; do
            start "$s"
            res=$(taskset -c 1 "$tmp/fanout_client" "$port" "$mode" "$token" "$server" "$subs" "$rate" "$PAYLOAD" "$secs")
            kill "$server"; wait "$server" 2>/dev/null || true
            echo "{\"server\": \"$s\", \"subscribers\": $subs, \"rate\": $rate, \"round\": $r, ${res#\{}" | tee -a "$tmp/runs.jsonl"
        done
    done
done
python3 - "$tmp/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
print("| subscribers, publishes/s | roostd µs/delivery | uWS µs/delivery | roostd ÷ uWS | delivered (roostd, uWS) | client CPU (roostd, uWS) |")
print("|---|---|---|---|---|---|")
for subs in sorted({r["subscribers"] for r in runs}):
    cell = {s: [r for r in runs if r["subscribers"] == subs and r["server"] == s] for s in ("roostd", "uws")}
    med = {s: statistics.median(r["server_cpu_us_per_delivery"] for r in rs) for s, rs in cell.items()}
    rng = {s: "%.2f–%.2f, n=%d" % (min(r["server_cpu_us_per_delivery"] for r in rs),
                                  max(r["server_cpu_us_per_delivery"] for r in rs), len(rs)) for s, rs in cell.items()}
    got = {s: "%.0f %%" % (100 * statistics.median(r["deliveries"] / max(r["expected"], 1) for r in rs)) for s, rs in cell.items()}
    cpu = {s: statistics.median(r["client_cpu_pct"] for r in rs) for s, rs in cell.items()}
    rate = cell["roostd"][0]["rate"]
    print(f"| {subs:,}, {rate}/s | {med['roostd']:.2f} ({rng['roostd']}) | {med['uws']:.2f} ({rng['uws']}) | "
          f"{med['roostd'] / med['uws']:.2f}× | {got['roostd']}, {got['uws']} | {cpu['roostd']:.0f} %, {cpu['uws']:.0f} % |")
PY
