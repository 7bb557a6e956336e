#!/usr/bin/env bash
# Page faults, brk and the syscalls per echoed message of one roostd binary
# (issue 18: a 16 KiB echo took about one minor fault per message and a brk
# per 11). One closed-loop echo run, server on CPU 0, generator on CPU 1:
#
#   benches/echo_faults.sh ROOSTD PAYLOAD [DURATION] [time|strace]
#
# time (default): /usr/bin/time -v's user and system CPU and minor faults
# of the server, per message; strace: `strace -f -c` call counts per message
# (strace slows the server: read its counts, not its times). Per message =
# over the whole run ÷ messages echoed (setup is a few hundred faults).
# Environment: LOADGEN (target/release/examples/loadgen), PORT (18950),
# CONNS (50).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
(($# >= 2)) || { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 2; }
bin=$1 payload=$2 dur=${3:-5s} mode=${4:-time}
: "${LOADGEN:=$root/target/release/examples/loadgen}" "${PORT:=18950}" "${CONNS:=50}"
export ROOSTD_SECRET="${ROOSTD_SECRET:-echo-faults-secret-0123456789abcdef0123456789}"
tmp=$(mktemp -d /tmp/roostd-echo-faults.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
case "$mode" in
    time) wrap=(/usr/bin/time -v -o "$tmp/report") ;;
    strace) wrap=(strace -f -c -o "$tmp/report") ;;
    *) echo "mode: time or strace" >&2; exit 2 ;;
esac
taskset -c 0 "${wrap[@]}" "$bin" serve --listen "127.0.0.1:$PORT" --data "$tmp/data" --no-demo --echo \
    >"$tmp/server.log" 2>&1 &
wrapper=$!
for _ in $(seq 100); do grep -q "listening on" "$tmp/server.log" && break; sleep 0.1; done
taskset -c 1 "$LOADGEN" echo --conns "$CONNS" --payload "$payload" --duration "$dur" \
    --url "ws://127.0.0.1:$PORT" >"$tmp/loadgen.out" 2>&1
# The server is the wrapper's child: stop it, and let the wrapper write its report.
kill -TERM "$(pgrep -P "$wrapper" | head -n 1)"
wait "$wrapper" || true
python3 - "$mode" "$tmp/report" "$(grep '^{' "$tmp/loadgen.out" | tail -n 1)" "$payload" <<'PY'
import json, sys
mode, path, res, payload = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
n = res["echoed"]
print(f"payload {payload} B: {n} echoed")
for line in open(path):
    if mode == "strace":
        f = line.split()
        # The per-message calls, and the memory ones however rare.
        if len(f) >= 5 and f[3].isdigit() and f[-1] != "total" \
                and (int(f[3]) / n >= 0.01 or f[-1] in ("brk", "mmap", "munmap", "madvise")):
            print(f"  {f[-1]:14} {int(f[3]):9d} calls  {int(f[3]) / n:.4f} per message")
    else:
        k, _, v = line.strip().partition(": ")
        if k.startswith(("User time", "System time")):
            print(f"  {k}: {v} s  ({float(v) * 1e6 / n:.2f} µs per message)")
        elif k.startswith("Minor"):
            print(f"  minor page faults: {v}  ({int(v) / n:.3f} per message)")
PY
