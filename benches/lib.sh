# shellcheck shell=bash
# Shell functions shared by benches/run.sh and examples/bench.sh: wait for a
# quiet machine, redo runs that other processes disturbed, stop a server.
# Sourced, not run. The knobs below keep a value already set in the
# environment; their defaults:
#
#   NICE (-10)       niceness of servers and generators (needs root; else 0)
#   QUIET_PCT (90)   before each run, wait until the machine is this % idle ...
#   QUIET_WAIT (600) ... for at most this many seconds (0: do not wait at all)
#   MAX_NOISE (15)   a run whose `other_busy_pct` (the CPU other processes used
#                    while it measured) is above this is done again ...
#   RETRIES (3)      ... at most this many times
#
# BENCH_PROG names the calling script in messages.

: "${NICE:=-10}"
: "${QUIET_PCT:=90}"
: "${QUIET_WAIT:=600}"
: "${MAX_NOISE:=15}"
: "${RETRIES:=3}"
: "${BENCH_PROG:=bench}"
nice -n "$NICE" true 2>/dev/null || NICE=0

bench_log() {
    echo "$BENCH_PROG: $*" >&2
}

# Percent of the machine idle over one second (idle + iowait of /proc/stat).
bench_idle_pct() {
    local a b
    read -ra a < <(head -n 1 /proc/stat)
    sleep 1
    read -ra b < <(head -n 1 /proc/stat)
    local total=0 k
    for k in 1 2 3 4 5 6 7 8; do total=$((total + b[k] - a[k])); done
    echo $(((b[4] - a[4] + b[5] - a[5]) * 100 / (total > 0 ? total : 1)))
}

# Wait up to QUIET_WAIT seconds for the machine to be QUIET_PCT % idle.
bench_wait_quiet() {
    ((QUIET_WAIT > 0)) || return 0
    local waited=0 idle
    while idle=$(bench_idle_pct); [[ $idle -lt $QUIET_PCT && $waited -lt $QUIET_WAIT ]]; do
        ((waited % 30 == 0)) && bench_log "machine only ${idle}% idle; waiting for quiet"
        waited=$((waited + 1))
    done
    [[ $idle -lt $QUIET_PCT ]] && bench_log "still only ${idle}% idle after ${QUIET_WAIT}s; measuring anyway"
    return 0
}

# The largest `other_busy_pct` in the lines of FILE after line SKIP (empty if none).
bench_noise_after() {
    local file=$1 skip=$2
    tail -n "+$((skip + 1))" "$file" | { grep -o '"other_busy_pct":[0-9.]*' || true; } | cut -d: -f2 | sort -g | tail -n 1
}

# bench_measure RESULTS LABEL COMMAND [ARGS...]
# Runs COMMAND, which appends its result line(s) to RESULTS, after waiting for
# a quiet machine. When other processes used more than MAX_NOISE % of the CPU
# during it, its lines are dropped and it runs again, up to RETRIES times (the
# last try is kept whatever its noise). BENCH_TRY holds the try number (0..).
bench_measure() {
    local results=$1 label=$2
    shift 2
    local lines noise
    for BENCH_TRY in $(seq 0 "$RETRIES"); do
        bench_wait_quiet
        lines=$(wc -l <"$results")
        "$@"
        noise=$(bench_noise_after "$results" "$lines")
        if [[ -z "$noise" ]] || awk -v n="$noise" -v m="$MAX_NOISE" 'BEGIN { exit !(n <= m) }'; then
            return 0
        fi
        if ((BENCH_TRY < RETRIES)); then
            bench_log "other processes used ${noise}% of the CPU; discarding $label and trying again"
            sed -i "$((lines + 1)),\$ d" "$results"
        fi
    done
}

# Stop PID (a child of this shell): SIGTERM, then SIGKILL after 5 s.
bench_stop() {
    local pid=$1 _
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# VmRSS of PID in bytes (empty if it is gone).
bench_vmrss() {
    # kB from the kernel, bytes by bash: mawk prints big products as 2.4e+09.
    local kb
    kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || true
    [[ -n "$kb" ]] && echo $((kb * 1024))
    return 0
}
