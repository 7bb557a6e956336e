#!/usr/bin/env bash
# B1 for one server binary at a time, so two roostd builds (before and after a
# change) can be measured side by side with uWebSockets; benches/run.sh builds
# and runs only the tree it sits in. The method is run.sh's `b1_once`: server
# on core 0, generators on core 1 (two above 9,000 connections), the server's
# VmRSS before they connect and 2 s after every generator said READY; bytes
# per connection = difference / connections ready. roostd's connections are
# authenticated and subscribed to one channel; uWebSockets' open on /idle.
#
#   benches/b1_pair.sh SERVER N CONNECTING [PORT]
#     SERVER      a roostd binary, or `uws` (the binary at UWS_PEER)
#     N           idle connections
#     CONNECTING  handshakes in flight while they connect (loadgen --connecting):
#                 10-100 is connections opening a few at a time, 1000 is
#                 loadgen's default (and run.sh's)
#   Environment: LOADGEN (target/release/examples/loadgen), UWS_PEER
#   (/work/peers/uws/uws-peer), ROOSTD_SECRET (a fixed test secret).
# Prints one line: server, N, connecting, ready, RSS before and after, B/conn.
set -u
srv=$1 n=$2 connecting=$3 port=${4:-18800}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${LOADGEN:=$root/target/release/examples/loadgen}" "${UWS_PEER:=/work/peers/uws/uws-peer}"
export ROOSTD_SECRET=${ROOSTD_SECRET:-b1-pair-secret-b1-pair-secret-b1-pair}
d=$(mktemp -d)
peer=()
if [[ $srv == uws ]]; then
    taskset -c 0 "$UWS_PEER" "$port" >"$d/server.log" 2>&1 &
    peer=(--peer)
else
    taskset -c 0 "$srv" serve --listen "127.0.0.1:$port" --data "$d/data" --no-demo \
        --max-connections 20000 --max-connections-per-ip 20000 >"$d/server.log" 2>&1 &
fi
spid=$!
for _ in $(seq 100); do
    ss -ltn | grep -q ":$port " && break
    sleep 0.1
done
sleep 0.5
rss() { awk '/VmRSS/{print $2 * 1024}' "/proc/$spid/status"; }
r0=$(rss)
k=1
((n > 9000)) && k=2
pids=()
for ((i = 0; i < k; i++)); do
    each=$((n / k + (i < n % k ? 1 : 0)))
    taskset -c 1 "$LOADGEN" idle --conns "$each" --hold 6s --connecting "$connecting" "${peer[@]+"${peer[@]}"}" \
        --url "ws://127.0.0.1:$port" >"$d/g$i.out" 2>"$d/g$i.err" &
    pids+=($!)
done
ready=0
for _ in $(seq 1200); do
    all=1 ready=0
    for ((i = 0; i < k; i++)); do
        r=$(grep -m1 -o '^READY [0-9]*' "$d/g$i.err" | cut -d' ' -f2)
        if [[ -z $r ]]; then all=0; else ready=$((ready + r)); fi
    done
    ((all)) && break
    sleep 0.1
done
sleep 2
r1=$(rss)
for p in "${pids[@]}"; do wait "$p"; done
kill "$spid"
wait "$spid" 2>/dev/null
echo "$(basename "$srv") n=$n connecting=$connecting ready=$ready rss0=$r0 rss1=$r1 B/conn=$(((r1 - r0) / (ready > 0 ? ready : 1)))"
rm -rf "$d"
