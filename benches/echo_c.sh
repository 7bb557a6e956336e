#!/usr/bin/env bash
# B2 with a second generator (issue 18): benches/echo_client.c, plain C and
# epoll, written apart from loadgen, against roostd (`serve --echo`) and
# uWebSockets, alternating the two servers in every round so both see the
# same machine. Server on CPU 0, client on CPU 1.
#
#   UWS_PEER=/path/to/uws-peer benches/echo_c.sh ROOSTD [ROUNDS] [SECONDS]
#
# Prints each run as JSON and then, per payload, the median server CPU-µs
# per message of each server and their ratio. Environment: PAYLOADS
# ("20 1024 16384"), CONNS (50), PORT (18980), BEFORE (a second roostd
# binary, e.g. main's: run as "before" in every round too, between the two).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
(($# >= 1)) || { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 2; }
bin=$1 rounds=${2:-3} secs=${3:-4}
: "${PAYLOADS:=20 1024 16384}" "${CONNS:=50}" "${PORT:=18980}"
export ROOSTD_SECRET="${ROOSTD_SECRET:-echo-c-secret-0123456789abcdef0123456789abcdef}"
. "$root/benches/c_lib.sh"
c_setup echo_client echo

# Starts one server on CPU 0 on a fresh port; sets `server` (its pid),
# `port` and the `path` its echo is on.
start() {
    c_next_port
    case "$1" in
        roostd|before) taskset -c 0 "$([[ $1 == before ]] && echo "$BEFORE" || echo "$bin")" serve --listen "127.0.0.1:$port" --data "$tmp/data.$port" --no-demo --echo \
                    >"$tmp/server.log" 2>&1 &
                path="/ws?token=$token" ;;
        uws) taskset -c 0 "$UWS_PEER" "$port" >"$tmp/server.log" 2>&1 &
             path=/echo ;;
    esac
    c_await "$1"
}

for payload in $PAYLOADS; do
    for r in $(seq "$rounds"); do
        for s in roostd ${BEFORE:+before} uws; do
            start "$s"
            res=$(taskset -c 1 "$tmp/echo_client" "$port" "$path" "$server" "$CONNS" "$payload" "$secs")
            kill "$server"; wait "$server" 2>/dev/null || true
            echo "{\"server\": \"$s\", \"payload\": $payload, \"round\": $r, ${res#\{}" | tee -a "$tmp/runs.jsonl"
        done
    done
done
python3 - "$tmp/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
servers = [s for s in ("roostd", "before", "uws") if any(r["server"] == s for r in runs)]
print("| payload | " + " | ".join(f"{s} µs/msg" for s in servers) + " | "
      + " | ".join(f"{s} ÷ uWS" for s in servers[:-1]) + " | client CPU (" + ", ".join(servers) + ") |")
print("|---" * (2 * len(servers) + 1) + "|")
for p in sorted({r["payload"] for r in runs}):
    cell = {s: [r for r in runs if r["payload"] == p and r["server"] == s] for s in servers}
    med = {s: statistics.median(r["server_cpu_us_per_msg"] for r in rs) for s, rs in cell.items()}
    cpu = {s: statistics.median(r["client_cpu_pct"] for r in rs) for s, rs in cell.items()}
    rng = {s: "%.2f–%.2f, n=%d" % (min(r["server_cpu_us_per_msg"] for r in rs),
                                  max(r["server_cpu_us_per_msg"] for r in rs), len(rs)) for s, rs in cell.items()}
    print(f"| {p} B | " + " | ".join(f"{med[s]:.2f} ({rng[s]})" for s in servers) + " | "
          + " | ".join(f"{med[s] / med['uws']:.2f}×" for s in servers[:-1]) + " | "
          + ", ".join(f"{cpu[s]:.0f} %" for s in servers) + " |")
PY
