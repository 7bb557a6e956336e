#!/usr/bin/env bash
# Instructions (valgrind callgrind, Ir) the release server spends per echoed
# message and per fan-out delivery: a count that does not depend on what else
# runs on the machine, unlike the CPU-µs of run.sh. For comparing two builds
# (issue #14: before and after a change), give each its own roostd binary and
# the same loadgen binary, so the workload is the same for both.
#
#   benches/callgrind.sh ROOSTD [ROOSTD ...]     # one column per binary
#   benches/callgrind.sh ROOSTD peer:UWS_PEER    # a peer server (loadgen --peer;
#                                                # benches/peers/README.md), same count
#
# loadgen's scenarios run for a duration, not a count, so each scenario runs
# twice on a fresh server and store under callgrind: a short run and a long
# one (echo: CG_SHORT and CG_LONG; fanout: CG_FAN_SHORT and CG_FAN_LONG). Start-up, the upgrades and subscriptions, and shutdown cost the same in
# both, so (Ir long - Ir short) / (units long - units short) is the cost of
# one unit of work alone (units: `echoed` or `delivered` from loadgen's JSON).
# The per-function difference (callgrind_annotate, exclusive Ir) says where.
#
# Scenarios: echo of 20 B, 1024 B and 16384 B over 10 connections (closed loop),
# and fan-out of 1 publisher to 500 subscribers paced at CG_RATE publishes/s
# (paced, so the number of publishes is rate x duration whatever the speed).
#
# Environment (defaults):
#   LOADGEN (target/release/examples/loadgen of this tree)
#   OUT (a new /tmp/roostd-cg.XXXXXX)  callgrind.out.*, logs, results.tsv
#   PORT (18900)   CG_SHORT (1s)   CG_LONG (3s)   CG_FAN_SHORT (2s)   CG_FAN_LONG (12s)
#   CG_RATE (20)   CG_SUBS (500): the defaults give about 100,000 echoes more in the long
#   run than in the short one, and 200 publishes x 500 subscribers
#   CG_SCENARIOS (echo20 echo1024 echo16384 fanout); echoN: any payload of N bytes
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
(($# > 0)) || { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 2; }
: "${LOADGEN:=$root/target/release/examples/loadgen}"
: "${PORT:=18900}" "${CG_SHORT:=1s}" "${CG_LONG:=3s}" "${CG_FAN_SHORT:=2s}" "${CG_FAN_LONG:=12s}"
: "${CG_RATE:=20}" "${CG_SUBS:=500}"
: "${CG_SCENARIOS:=echo20 echo1024 echo16384 fanout}"
OUT="${OUT:-$(mktemp -d /tmp/roostd-cg.XXXXXX)}"
mkdir -p "$OUT"
export ROOSTD_SECRET="${ROOSTD_SECRET:-callgrind-secret-0123456789abcdef0123456789}"
ulimit -n 4096 2>/dev/null || true

server_pid=""
trap '[[ -z "$server_pid" ]] || kill -TERM "$server_pid" 2>/dev/null || true' EXIT

# one BIN_LABEL BIN SCENARIO DURATION: Ir and units of one run, "IR UNITS".
one() {
    local label=$1 bin=$2 sc=$3 dur=$4 name="$1-$3-$4"
    local data="$OUT/data-$name" log="$OUT/$name.server.log" rflags=() lflags=() key
    rm -rf "$data"
    case "$sc" in
        echo*) rflags=(--echo); lflags=(echo --conns 10 --payload "${sc#echo}"); key=echoed ;;
        fanout) rflags=(--publish-rate 0)
            lflags=(fanout --publishers 1 --subscribers "$CG_SUBS" --rate "$CG_RATE"); key=delivered ;;
    esac
    local cmd=("$bin" serve --listen "127.0.0.1:$PORT" --data "$data" --no-demo
        --max-connections 4000 --max-connections-per-ip 4000 "${rflags[@]}")
    if [[ "$bin" == peer:* ]]; then
        cmd=("${bin#peer:}" "$PORT")
        lflags+=(--peer)
    fi
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.$name" "${cmd[@]}" >"$log" 2>&1 &
    server_pid=$!
    local i
    for i in $(seq 600); do
        grep -q "listening on" "$log" && break
        kill -0 "$server_pid" || { tail "$log" >&2; exit 1; }
        sleep 0.1
    done
    "$LOADGEN" "${lflags[@]}" --duration "$dur" --url "ws://127.0.0.1:$PORT" >"$OUT/$name.loadgen.out" 2>&1
    kill -TERM "$server_pid"
    wait "$server_pid" || true
    server_pid=""
    rm -rf "$data"
    local ir units
    ir=$(grep -m1 '^summary:' "$OUT/callgrind.out.$name" | awk '{print $2}')
    units=$(grep '^{' "$OUT/$name.loadgen.out" | tail -n 1 | python3 -c "import json,sys; print(json.load(sys.stdin)['$key'])")
    echo "$ir $units"
}

printf 'binary\tscenario\tIr_short\tunits_short\tIr_long\tunits_long\tIr_per_unit\n' >"$OUT/results.tsv"
for sc in $CG_SCENARIOS; do
    n=0
    for bin in "$@"; do
        n=$((n + 1))
        label="b$n"
        short=$CG_SHORT long=$CG_LONG
        [[ "$sc" != fanout ]] || short=$CG_FAN_SHORT long=$CG_FAN_LONG
        read -r ir1 u1 < <(one "$label" "$bin" "$sc" "$short")
        read -r ir2 u2 < <(one "$label" "$bin" "$sc" "$long")
        per=$(python3 -c "print(round(($ir2 - $ir1) / ($u2 - $u1), 1))")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$bin" "$sc" "$ir1" "$u1" "$ir2" "$u2" "$per" | tee -a "$OUT/results.tsv" >&2
        # Per function: exclusive Ir of the long run minus the short one, per unit.
        python3 - "$OUT/callgrind.out.$label-$sc-$short" "$OUT/callgrind.out.$label-$sc-$long" \
            "$((u2 - u1))" >"$OUT/$label-$sc.functions.txt" <<'EOF'
import re, subprocess, sys
def fns(path):
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                          capture_output=True, text=True, check=True).stdout
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line)
        if m and ":" in m.group(2):
            fn = re.sub(r"\s*\[[^\]]*\]$", "", m.group(2))
            out[fn] = out.get(fn, 0) + int(m.group(1).replace(",", ""))
    return out
short, long_, units = fns(sys.argv[1]), fns(sys.argv[2]), int(sys.argv[3])
rows = sorted(((long_.get(f, 0) - short.get(f, 0)) / units, f) for f in set(short) | set(long_))
for per, f in reversed(rows[-40:]):
    print(f"{per:12.1f}  {f}")
EOF
    done
done
echo "$OUT"
