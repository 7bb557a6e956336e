#!/usr/bin/env bash
# The benchmark suite of issue #7: roostd side by side with peer servers
# (tokio-tungstenite, Node `ws`, uWebSockets, Mosquitto for idle memory),
# every result appended as one JSON line to $OUT/results.jsonl, then
# benches/report.py turns them into the tables of docs/benchmarks.md and the
# plots in docs/bench/.
#
#   benches/run.sh                 # the whole suite (B1 ... B8), then the report
#   benches/run.sh B2 B4           # some benchmarks only
#   benches/run.sh --smoke         # every scenario once, tiny and short (CI)
#
#   B1 idle       server RSS per idle connection, N in B1_CONNS (roostd-tls: over wss://)
#   B2 echo       server CPU-µs per echoed message, payload in B2_PAYLOADS
#   B3 fanout     server CPU-µs per delivery, 1 publisher, (subscribers:rate) in B3_CELLS
#   B4 latency    publish → delivery percentiles at a fixed rate (roostd: also pub → ack)
#   B5 durable    roostd acked publishes/s for B5_PUBLISHERS, beside heedbench at the same batch
#   B6 upgrades   upgrades/s and CPU per upgrade (valid tokens; roostd also 50 % invalid),
#                 and a reconnect storm of B6_STORM connections
#   B7 slow       fanout with 1 % of subscribers never reading, and with none
#   B8 churn      CHURN_DURATION soak, B8_CHURN_PCT % of connections reconnect per minute
#   growth        benches/growth.py (not in the default list): store size, start-up and
#                 replay speed vs GROWTH_MESSAGES stored, server memory vs GROWTH_CHANNELS;
#                 its JSON in $OUT/growth/growth.jsonl, its plots into docs/bench/ (REPORT=1)
#                 or $OUT/bench/
#   second        B2 and B3 again with the two generators written apart from loadgen
#                 (benches/echo_c.sh, benches/fanout_c.sh: plain C, roostd and uws alternating
#                 every round; not in the default list; needs UWS_PEER and cc), RUNS rounds of
#                 DURATION, payloads B2_PAYLOADS, cells B3_CELLS; their JSON lines and ratio
#                 tables in $OUT/second/{echo,fanout}.txt
#
# Each sample: a fresh server process (roostd: on a fresh store under
# BENCH_DIR) pinned to SERVER_CPUS, the generator(s) pinned to LOADGEN_CPUS,
# both at nice NICE; before it, a wait for a quiet machine, and when other
# processes used over MAX_NOISE % of the CPU while it measured, it is done
# again (benches/lib.sh). Servers: roostd, tokio (benches/peers/tokio-ws),
# node (benches/peers/node-ws), uws (the binary at UWS_PEER, built outside
# this repository; skipped when absent), mosquitto (B1 only; skipped when not
# installed), roostd-tls (B1 only: roostd serving wss:// with a `roostd cert`
# certificate, held by benches/tls_idle.py; not in the default SERVERS).
#
# --smoke: RUNS=1, 1 s per timed scenario, dev builds (cargo test already
# made them), roostd, tokio, node (and mosquitto if installed; never uws):
# idle 200 (two generators), echo 10 conns, fanout 50 subscribers, publish
# 1 and 20 publishers, 8 connectors, storm 500, slow 100 subscribers, churn
# 100 for 15 s; no quiet wait, no retries, no report (CI runs
# `report.py OUT --no-plots --check`). Any knob below still wins.
#
# Environment (defaults; --smoke has its own, smaller ones):
#   OUT (a new /tmp/roostd-suite.XXXXXX)  results.jsonl, plan.jsonl, meta.json, logs/
#   BENCH_DIR ($OUT/data)   where roostd's stores and heedbench's go: the disk under test
#   RUNS (3)                samples per cell
#   PORT (18200)            servers listen on PORT .. PORT+99, a new port per sample
#   SERVER_CPUS (0), LOADGEN_CPUS (1)   taskset lists
#   LOADGEN_THREADS (the number of CPUs in LOADGEN_CPUS)  generator threads for B2 echo and the
#                           B3/B4 fan-out (subscribers split over them). A result whose generator
#                           used over 70 % of its CPU budget (its busiest thread, or the process
#                           over min(threads, CPUs)) gets a "warnings" entry that report.py prints
#   SERVERS (roostd uws tokio node mosquitto)   which servers to run
#   UWS_PEER (/work/peers/uws/uws-peer)  the uWebSockets peer binary
#   PROFILE (release; --smoke: dev)      cargo profile of roostd, loadgen, heedbench, tokio peer
#   ROOSTD_BIN, HEEDBENCH_BIN (the builds above)   other binaries to measure (a before/after)
#   ROOSTD_SECRET (generated)
#   DURATION (5s)           measured time of B2, B3, B5 (heedbench too), B6 upgrades
#   B1_CONNS (1000 5000 10000 18000), B1_SPLIT (9000: above it, two generator processes),
#   B1_RUNS_AT (10000: the N that get RUNS samples; the others get one), B1_HOLD (10s: in
#   seconds; how long generators hold after READY: longer than their READY times differ)
#   B2_PAYLOADS (20 1024 16384), B2_CONNS (50)
#   B3_CELLS (100:2000 1000:200 10000:20)  subscribers:publishes per second
#   B4_SUBS (1000), B4_RATE (1000 100: publishes/s, one cell each), B4_DURATION (10s)
#   B4_TIMED_EVERY (10), B4_DRAIN (20ms)   one subscriber in B4_TIMED_EVERY is read at once and
#                           times each message; the others are read every B4_DRAIN, many frames
#                           per read, counted and checked for loss and order (1: all timed)
#   B5_PUBLISHERS (1 10 50 200 1000)
#   B6_CONNECTORS (64), B6_STORM (10000)
#   B7_SUBS (1000), B7_RATE (1000), B7_PAYLOAD (1024), B7_DURATION (10s)
#   B8_CONNS (5000), B8_CHURN_PCT (10), CHURN_DURATION (5m), B8_RUNS (1),
#   B8_PEERS (0; 1: tokio and node churn too)
#   GROWTH_MESSAGES (10000,100000,300000,440000), GROWTH_CHANNELS (1000,10000,100000)
#   REPORT (1; --smoke: 0)  run benches/report.py at the end
#   NICE (-10), QUIET_PCT (90), QUIET_WAIT (600; --smoke: 0), MAX_NOISE (15),
#   RETRIES (3; --smoke: 0): see benches/lib.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
}

# The knobs as given, for the command line recorded in meta.json.
KNOBS=(OUT BENCH_DIR RUNS PORT SERVER_CPUS LOADGEN_CPUS LOADGEN_THREADS SERVERS UWS_PEER PROFILE ROOSTD_BIN HEEDBENCH_BIN DURATION
    B1_CONNS B1_SPLIT B1_RUNS_AT B1_HOLD B2_PAYLOADS B2_CONNS B3_CELLS B4_SUBS B4_RATE B4_DURATION B4_TIMED_EVERY B4_DRAIN
    B5_PUBLISHERS B6_CONNECTORS B6_STORM B7_SUBS B7_RATE B7_PAYLOAD B7_DURATION
    B8_CONNS B8_CHURN_PCT CHURN_DURATION B8_RUNS B8_PEERS GROWTH_MESSAGES GROWTH_CHANNELS REPORT NICE QUIET_PCT QUIET_WAIT MAX_NOISE RETRIES)
given=()
for k in "${KNOBS[@]}"; do
    [[ -n "${!k+x}" ]] && given+=("$k=${!k}")
done

SMOKE=0
WANTED=()
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h | --help) usage ;;
        B[1-8] | growth | second) WANTED+=("$arg") ;;
        *) echo "run.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done
[[ ${#WANTED[@]} -gt 0 ]] || WANTED=(B1 B2 B3 B4 B5 B6 B7 B8)

if ((SMOKE)); then
    : "${RUNS:=1}" "${DURATION:=1s}" "${SERVERS:=roostd tokio node mosquitto}" "${PROFILE:=dev}"
    : "${B1_CONNS:=200}" "${B1_SPLIT:=100}" "${B1_RUNS_AT:=}" "${B1_HOLD:=4s}"
    : "${B2_PAYLOADS:=20 16384}" "${B2_CONNS:=10}"
    : "${B3_CELLS:=50:200}"
    : "${B4_SUBS:=50}" "${B4_RATE:=200}" "${B4_DURATION:=1s}"
    : "${B5_PUBLISHERS:=1 20}"
    : "${B6_CONNECTORS:=8}" "${B6_STORM:=500}"
    : "${B7_SUBS:=100}" "${B7_RATE:=200}" "${B7_PAYLOAD:=1024}" "${B7_DURATION:=1s}"
    : "${B8_CONNS:=100}" "${CHURN_DURATION:=15s}"
    : "${REPORT:=0}" "${QUIET_WAIT:=0}" "${RETRIES:=0}"
fi
: "${RUNS:=3}" "${DURATION:=5s}" "${SERVERS:=roostd uws tokio node mosquitto}" "${PROFILE:=release}"
: "${B1_CONNS:=1000 5000 10000 18000}" "${B1_SPLIT:=9000}" "${B1_RUNS_AT=10000}" "${B1_HOLD:=10s}"
: "${B2_PAYLOADS:=20 1024 16384}" "${B2_CONNS:=50}"
: "${B3_CELLS:=100:2000 1000:200 10000:20}"
: "${B4_SUBS:=1000}" "${B4_RATE:=1000 100}" "${B4_DURATION:=10s}" "${B4_TIMED_EVERY:=10}" "${B4_DRAIN:=20ms}"
: "${B5_PUBLISHERS:=1 10 50 200 1000}"
: "${B6_CONNECTORS:=64}" "${B6_STORM:=10000}"
: "${B7_SUBS:=1000}" "${B7_RATE:=1000}" "${B7_PAYLOAD:=1024}" "${B7_DURATION:=10s}"
: "${B8_CONNS:=5000}" "${B8_CHURN_PCT:=10}" "${CHURN_DURATION:=5m}" "${B8_RUNS:=1}" "${B8_PEERS:=0}"
: "${GROWTH_MESSAGES:=10000,100000,300000,440000}" "${GROWTH_CHANNELS:=1000,10000,100000}"
: "${REPORT:=1}" "${PORT:=18200}" "${SERVER_CPUS:=0}" "${LOADGEN_CPUS:=1}"
: "${UWS_PEER:=/work/peers/uws/uws-peer}"
# How many CPUs a taskset list ("1", "1-3,6") names.
cpus_in() {
    local n=0 part
    for part in ${1//,/ }; do
        if [[ $part == *-* ]]; then n=$((n + ${part#*-} - ${part%-*} + 1)); else n=$((n + 1)); fi
    done
    echo "$n"
}
: "${LOADGEN_THREADS:=$(cpus_in "$LOADGEN_CPUS")}"
export ROOSTD_SECRET="${ROOSTD_SECRET:-bench-secret-$(date +%s)-0123456789abcdef}"
BENCH_PROG=run.sh
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"

OUT="${OUT:-$(mktemp -d /tmp/roostd-suite.XXXXXX)}"
BENCH_DIR="${BENCH_DIR:-$OUT/data}"
mkdir -p "$OUT/logs" "$BENCH_DIR"
RESULTS="$OUT/results.jsonl"
PLAN="$OUT/plan.jsonl"
: >"$RESULTS"
: >"$PLAN"
echo "run.sh: results in $OUT" >&2
T0=$(date +%s)

# The servers hold up to 18,000 sockets, each generator process 9,000.
ulimit -n 20000 2>/dev/null || bench_log "could not raise the open-file limit to 20000 (now $(ulimit -n))"

# ---------------------------------------------------------------- builds

case "$PROFILE" in
    release) profile_dir=release ;;
    dev) profile_dir=debug ;;
    *) profile_dir="$PROFILE" ;;
esac
bench_log "building roostd, loadgen, heedbench and the tokio peer (profile $PROFILE)"
# The main crate's build may be busy (a lock held by another build): cargo waits.
cargo build --quiet --profile "$PROFILE" --bin roostd --example loadgen --example heedbench
cargo build --quiet --profile "$PROFILE" --manifest-path benches/peers/tokio-ws/Cargo.toml
# ROOSTD_BIN, HEEDBENCH_BIN: other builds to measure (e.g. main's, for a before/after in one run).
ROOSTD="${ROOSTD_BIN:-$root/target/$profile_dir/roostd}"
LOADGEN="$root/target/$profile_dir/examples/loadgen"
HEEDBENCH="${HEEDBENCH_BIN:-$root/target/$profile_dir/examples/heedbench}"
TOKIO_PEER="$root/benches/peers/tokio-ws/target/$profile_dir/tokio-ws-peer"

SKIPPED=()
skip_server() {
    SKIPPED+=("$1: $2")
    bench_log "$1: SKIPPED ($2)"
}
RUNNABLE=()
for s in $SERVERS; do
    case "$s" in
        roostd | roostd-tls | tokio) RUNNABLE+=("$s") ;;
        node)
            if ! command -v node >/dev/null; then
                skip_server node "node is not installed"
            else
                (cd benches/peers/node-ws && npm ci --no-audit --no-fund --loglevel=error >&2)
                RUNNABLE+=(node)
            fi
            ;;
        uws)
            if [[ -x "$UWS_PEER" ]]; then
                RUNNABLE+=(uws)
            else
                skip_server uws "no binary at $UWS_PEER (built outside this repository; see benches/peers/README.md)"
            fi
            ;;
        mosquitto)
            if command -v mosquitto >/dev/null; then
                RUNNABLE+=(mosquitto)
            else
                skip_server mosquitto "not installed (apt-get install -y mosquitto)"
            fi
            ;;
        *) echo "run.sh: unknown server $s in SERVERS" >&2; exit 2 ;;
    esac
done

has() {
    local s
    for s in "${RUNNABLE[@]}"; do [[ "$s" == "$1" ]] && return 0; done
    return 1
}
# The WebSocket servers that run, roostd first (mosquitto speaks MQTT: B1 only).
ws_servers() {
    local s
    for s in roostd uws tokio node; do has "$s" && echo "$s"; done
    return 0
}

# ---------------------------------------------------------------- metadata

UWS_PEER=$UWS_PEER SERVER_CPUS=$SERVER_CPUS LOADGEN_CPUS=$LOADGEN_CPUS MAX_NOISE=$MAX_NOISE RETRIES=$RETRIES QUIET_WAIT=$QUIET_WAIT \
    python3 - "$OUT/meta.json" "$SMOKE" "$PROFILE" "$BENCH_DIR" "$(printf '%s\n' "${given[@]+"${given[@]}"}")" "$*" \
    "${RUNNABLE[*]}" "$(printf '%s\n' "${SKIPPED[@]+"${SKIPPED[@]}"}")" <<'EOF'
import json, os, platform, shlex, subprocess, sys, time
path, smoke, profile, bench_dir, given, args, servers, skipped = sys.argv[1:]
given = " ".join(k + "=" + shlex.quote(v) for k, _, v in (g.partition("=") for g in given.splitlines() if g))
def out(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None
model = None
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
fs = out("df", "-T", bench_dir)
command = " ".join(filter(None, [given, "benches/run.sh", args]))
json.dump({
    "smoke": smoke == "1",
    "profile": profile,
    "command": command,
    "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    "nproc": os.cpu_count(),
    "cpu_model": model,
    "kernel": platform.release(),
    "git": out("git", "describe", "--always", "--dirty"),
    "bench_dir": bench_dir,
    "bench_dir_fs": fs.splitlines()[-1].split()[1] if fs else None,
    "servers": servers.split(),
    "server_cpus": os.environ["SERVER_CPUS"], "loadgen_cpus": os.environ["LOADGEN_CPUS"],
    "max_noise": os.environ["MAX_NOISE"], "retries": os.environ["RETRIES"], "quiet_wait": os.environ["QUIET_WAIT"],
    "skipped": [s for s in skipped.splitlines() if s],
    "uws_peer": (lambda p: p and {"path": p, "bytes": os.path.getsize(p),
                                  "mtime": time.strftime("%Y-%m-%d %H:%M", time.gmtime(os.path.getmtime(p)))})(
        os.environ.get("UWS_PEER") if "uws" in servers.split() else None),
    "tools": {"node": out("node", "--version"), "mosquitto": (out("sh", "-c", "mosquitto -h | head -n 1") or None),
              "rustc": out("rustc", "--version")},
}, open(path, "w"), indent=1)
EOF

# ---------------------------------------------------------------- servers

SAMPLE=0
server_pid=""
server_name=""
server_port=""
GEN_PIDS=()
cleanup() {
    local p
    for p in "${GEN_PIDS[@]+"${GEN_PIDS[@]}"}"; do bench_stop "$p"; done
    bench_stop "$server_pid"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server NAME [roostd flags...]: a fresh server on a new port, pinned;
# sets server_pid and server_port. Returns 1 if it did not come up.
start_server() {
    local name=$1
    shift
    SAMPLE=$((SAMPLE + 1))
    server_name=$name
    server_port=$((PORT + SAMPLE % 100))
    local log="$OUT/logs/server-$SAMPLE-$name.log" cmd
    case "$name" in
        roostd | roostd-tls)
            local data="$BENCH_DIR/roostd-$SAMPLE" tls=()
            rm -rf "$data"
            if [[ "$name" == roostd-tls ]]; then
                # One self-signed pair per run (roostd cert refuses to overwrite).
                [[ -f "$OUT/tls-cert.pem" ]] || "$ROOSTD" cert --name localhost --ip 127.0.0.1 \
                    --cert "$OUT/tls-cert.pem" --key "$OUT/tls-key.pem" >/dev/null
                tls=(--tls-cert "$OUT/tls-cert.pem" --tls-key "$OUT/tls-key.pem")
            fi
            cmd=("$ROOSTD" serve --listen "127.0.0.1:$server_port" --data "$data" --no-demo
                --max-connections 20000 --max-connections-per-ip 20000 "${tls[@]+"${tls[@]}"}" "$@")
            ;;
        tokio) cmd=("$TOKIO_PEER" "$server_port") ;;
        node) cmd=(node "$root/benches/peers/node-ws/server.mjs" "$server_port") ;;
        uws) cmd=("$UWS_PEER" "$server_port") ;;
        mosquitto)
            sed "s/19100/$server_port/" benches/peers/mosquitto.conf >"$OUT/mosquitto-$SAMPLE.conf"
            cmd=(mosquitto -c "$OUT/mosquitto-$SAMPLE.conf")
            ;;
    esac
    nice -n "$NICE" taskset -c "$SERVER_CPUS" "${cmd[@]}" >"$log" 2>&1 &
    server_pid=$!
    local i
    for i in $(seq 200); do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            bench_log "$name did not start; its log ($log):"
            tail -n 20 "$log" >&2
            server_pid=""
            return 1
        fi
        if [[ "$name" == mosquitto ]]; then
            # Mosquitto prints nothing when it is ready: try the port.
            (exec 3<>"/dev/tcp/127.0.0.1/$server_port") 2>/dev/null && return 0
        elif grep -q "listening on" "$log" 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    bench_log "$name did not listen within 10 s"
    stop_server
    return 1
}

stop_server() {
    bench_stop "$server_pid"
    server_pid=""
    [[ "$server_name" != roostd* ]] || rm -rf "$BENCH_DIR/roostd-$SAMPLE"
}

# ---------------------------------------------------------------- results

# jobj KEY VALUE ...: a JSON object (numbers stay numbers).
jobj() {
    local out="" sep="" v
    while (($# >= 2)); do
        v=$2
        if [[ ! "$v" =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; then
            v=${v//\\/\\\\}
            v="\"${v//\"/\\\"}\""
        fi
        out+="$sep\"$1\":$v"
        sep=","
        shift 2
    done
    echo "{$out}"
}

# CUR_* describe the sample being run; tags() gives them as JSON fields.
# Each result names the commit it measured (report.py never pools two).
CUR_BENCH="" CUR_CELL="" CUR_SERVER="" CUR_RUN=0 CUR_PARAMS="{}"
GIT_COMMIT=$(git describe --always --dirty 2>/dev/null || echo unknown)
tags() {
    echo "{\"bench\":\"$CUR_BENCH\",\"server\":\"$CUR_SERVER\",\"cell\":\"$CUR_CELL\",\"run\":$CUR_RUN,\"git\":\"$GIT_COMMIT\",\"smoke\":$([[ $SMOKE == 1 ]] && echo true || echo false),\"params\":$CUR_PARAMS}"
}

# last_json FILE: the last line of FILE that is a JSON object (a generator's
# result), or nothing.
last_json() {
    grep '^{' "$1" 2>/dev/null | tail -n 1 || true
}

# record FILE [EXTRA_JSON]: the last JSON line of FILE (a generator's stdout),
# with the sample's tags and EXTRA_JSON's fields, appended to results.jsonl.
# Without a JSON line, a line with "error" (report.py --check fails on it).
record() {
    local extra=${2:-"{}"}
    python3 - "$(tags)" "$1" "$(last_json "$1")" "$extra" >>"$RESULTS" <<'EOF'
import json, sys
tags, path, text, extra = sys.argv[1:]
try:
    res = json.loads(text) if text else None
except ValueError:
    res = None
out = json.loads(tags)
if res is None:
    out["error"] = f"no JSON result in {path}"
else:
    if "bench" in res:  # heedbench's own name for itself
        res["tool"] = res.pop("bench")
    for k, v in res.items():
        out.setdefault(k, v)
out.update(json.loads(extra))
# A generator near its CPU budget measured itself as much as the server.
load = out.get("generator_load_pct", out.get("generator_cpu_pct"))
if isinstance(load, (int, float)) and load > 70:
    out.setdefault("warnings", []).append(
        f"the generator used {load:.0f} % of its CPU budget (over 70 %): it may have been the limit")
print(json.dumps(out, separators=(",", ":")))
EOF
}

# plan BENCH CELL SERVER RUN PARAMS_JSON: sets CUR_* and notes the sample in
# plan.jsonl (report.py --check wants a result for each).
plan() {
    CUR_BENCH=$1 CUR_CELL=$2 CUR_SERVER=$3 CUR_RUN=$4 CUR_PARAMS=$5
    echo "{\"bench\":\"$1\",\"server\":\"$3\",\"cell\":\"$2\",\"run\":$4}" >>"$PLAN"
}

# loadgen SERVER LOGNAME ARGS...: runs the generator pinned, against the
# running server; stdout to logs/LOGNAME.out (stderr .err). Never fails.
loadgen() {
    local server=$1 name=$2
    shift 2
    local peer=()
    [[ "$server" == roostd ]] || peer=(--peer)
    echo "== $CUR_BENCH $server $CUR_CELL run $CUR_RUN: loadgen $*" >&2
    nice -n "$NICE" taskset -c "$LOADGEN_CPUS" "$LOADGEN" "$@" "${peer[@]+"${peer[@]}"}" \
        --url "ws://127.0.0.1:$server_port" --pid "$server_pid" \
        >"$OUT/logs/$name.out" 2>"$OUT/logs/$name.err" \
        || bench_log "loadgen exited with status $? (logs/$name.err)"
    grep -v '^{' "$OUT/logs/$name.out" | sed 's/^/   /' >&2 || true
}

# One sample of a plain loadgen scenario: fresh server, one generator run.
# lg_once ROOSTD_FLAGS_WORDS LOADGEN_ARGS...
lg_once() {
    local rflags=$1
    shift
    local name="$CUR_BENCH-$CUR_SERVER-$CUR_CELL-r$CUR_RUN-t$BENCH_TRY"
    name=${name//[^A-Za-z0-9_.-]/_}
    local flags=()
    [[ "$CUR_SERVER" != roostd || -z "$rflags" ]] || read -ra flags <<<"$rflags"
    if ! start_server "$CUR_SERVER" "${flags[@]+"${flags[@]}"}"; then
        echo "{}" >"$OUT/logs/$name.out"
        record "$OUT/logs/$name.out" '{"error":"the server did not start"}'
        return 0
    fi
    loadgen "$CUR_SERVER" "$name" "$@"
    stop_server
    record "$OUT/logs/$name.out"
}

# sample BENCH CELL SERVER RUN PARAMS_JSON ROOSTD_FLAGS LOADGEN_ARGS...
sample() {
    plan "$1" "$2" "$3" "$4" "$5"
    shift 5
    bench_measure "$RESULTS" "$CUR_BENCH $CUR_SERVER $CUR_CELL run $CUR_RUN" lg_once "$@"
}

# ---------------------------------------------------------------- B1 idle

# Idle connections from one or two generator processes; the server's VmRSS
# read here before they connect and once every generator printed READY.
b1_once() {
    local n=$1 hold=$2 server=$CUR_SERVER
    local name="B1-$server-$n-r$CUR_RUN-t$BENCH_TRY"
    local k=1
    ((n > B1_SPLIT)) && k=2
    if ! start_server "$server"; then
        echo "{}" >"$OUT/logs/$name.out"
        record "$OUT/logs/$name.out" '{"error":"the server did not start"}'
        return 0
    fi
    sleep 0.5
    local rss0 i each pids=() errs=() outs=()
    rss0=$(bench_vmrss "$server_pid")
    echo "== B1 $server $n connections, $k generator(s), run $CUR_RUN" >&2
    for ((i = 0; i < k; i++)); do
        each=$((n / k + (i < n % k ? 1 : 0)))
        outs+=("$OUT/logs/$name-g$i.out")
        errs+=("$OUT/logs/$name-g$i.err")
        if [[ "$server" == mosquitto ]]; then
            nice -n "$NICE" taskset -c "$LOADGEN_CPUS" python3 benches/peers/mqtt_idle.py \
                --port "$server_port" -n "$each" --hold "$((${hold%s} + 3))" --client-prefix "g$i" \
                >"${outs[i]}" 2>"${errs[i]}" &
        elif [[ "$server" == roostd-tls ]]; then
            nice -n "$NICE" taskset -c "$LOADGEN_CPUS" python3 benches/tls_idle.py \
                --port "$server_port" -n "$each" --hold "$((${hold%s} + 3))" \
                --token "$("$ROOSTD" token --sub idle --read '*' 2>/dev/null)" \
                >"${outs[i]}" 2>"${errs[i]}" &
        else
            local peer=()
            [[ "$server" == roostd ]] || peer=(--peer)
            nice -n "$NICE" taskset -c "$LOADGEN_CPUS" "$LOADGEN" idle --conns "$each" --hold "$hold" \
                "${peer[@]+"${peer[@]}"}" --url "ws://127.0.0.1:$server_port" --pid "$server_pid" \
                >"${outs[i]}" 2>"${errs[i]}" &
        fi
        pids+=($!)
        GEN_PIDS+=($!)
    done
    # mqtt_idle.py and tls_idle.py hold for --hold after READY, loadgen for 2 s more (it
    # measures first): both outlast the 2 s settle below by about --hold.
    # Wait for every READY (a generator gives up on setup after 60 s).
    local deadline=$((SECONDS + 120)) ready=0 all=0 early=0
    while ((SECONDS < deadline)); do
        all=1
        ready=0
        for ((i = 0; i < k; i++)); do
            local r
            r=$(grep -m1 -o '^READY [0-9]*' "${errs[i]}" 2>/dev/null | cut -d' ' -f2 || true)
            if [[ -z "$r" ]]; then
                all=0
                kill -0 "${pids[i]}" 2>/dev/null || deadline=0
            else
                ready=$((ready + r))
            fi
        done
        ((all)) && break
        sleep 0.1
    done
    local rss1="" extra
    if ((all)); then
        sleep 2 # let the server settle, as loadgen does
        rss1=$(bench_vmrss "$server_pid")
        for ((i = 0; i < k; i++)); do
            kill -0 "${pids[i]}" 2>/dev/null || early=1
        done
    fi
    for ((i = 0; i < k; i++)); do
        wait "${pids[i]}" 2>/dev/null || true
    done
    GEN_PIDS=()
    stop_server
    for ((i = 0; i < k; i++)); do
        sed 's/^/   /' "${errs[i]}" >&2
        grep -v '^{' "${outs[i]}" | sed 's/^/   /' >&2 || true
    done
    # The generators' own JSON (loadgen) rides along; the figures are this script's.
    local results=()
    for ((i = 0; i < k; i++)); do
        results+=("$(last_json "${outs[i]}")")
    done
    extra=$(python3 - "$n" "$k" "$ready" "$rss0" "$rss1" "$early" "$all" "${results[@]}" <<'EOF'
import json, sys
n, k, ready, rss0, rss1, early, all_ready = sys.argv[1:8]
gens = []
for text in sys.argv[8:]:
    try:
        gens.append(json.loads(text) if text else None)
    except ValueError:
        gens.append(None)
rss0 = int(rss0) if rss0 else None
rss1 = int(rss1) if rss1 else None
ready = int(ready)
out = {"scenario": "idle", "conns": int(n), "generators": int(k), "ready": ready,
       "rss_before_bytes": rss0, "rss_after_bytes": rss1,
       "bytes_per_conn": round((rss1 - rss0) / ready) if rss0 and rss1 and ready else None,
       "generator_results": gens}
noise = [g["other_busy_pct"] for g in gens if g and g.get("other_busy_pct") is not None]
if noise:
    out["other_busy_pct"] = max(noise)
if all_ready != "1":
    out["error"] = "not every generator said READY"
elif early == "1":
    out["error"] = "a generator ended before the RSS was read (raise B1_HOLD)"
elif ready < int(n):
    out["error"] = f"only {ready} of {n} connections ready"
print(json.dumps(out, separators=(",", ":")))
EOF
    )
    echo "{}" >"$OUT/logs/$name.out"
    record "$OUT/logs/$name.out" "$extra"
}

run_b1() {
    local n s run runs
    for n in $B1_CONNS; do
        runs=1
        [[ " $B1_RUNS_AT " == *" $n "* ]] && runs=$RUNS
        for s in $(ws_servers) $(has roostd-tls && echo roostd-tls) $(has mosquitto && echo mosquitto); do
            for run in $(seq "$runs"); do
                plan B1 "$n" "$s" "$run" "$(jobj conns "$n" hold "$B1_HOLD" split "$B1_SPLIT")"
                bench_measure "$RESULTS" "B1 $s $n run $run" b1_once "$n" "$B1_HOLD"
            done
        done
    done
}

# ---------------------------------------------------------------- B2 .. B8

run_b2() {
    local p s run
    for p in $B2_PAYLOADS; do
        for s in $(ws_servers); do
            for run in $(seq "$RUNS"); do
                sample B2 "$p" "$s" "$run" "$(jobj payload "$p" conns "$B2_CONNS" duration "$DURATION")" \
                    "--echo --max-message-bytes 65536" \
                    echo --conns "$B2_CONNS" --payload "$p" --duration "$DURATION" --threads "$LOADGEN_THREADS"
            done
        done
    done
}

run_b3() {
    local cell subs rate s run
    for cell in $B3_CELLS; do
        subs=${cell%%:*} rate=${cell##*:}
        for s in $(ws_servers); do
            for run in $(seq "$RUNS"); do
                sample B3 "$subs" "$s" "$run" "$(jobj subscribers "$subs" rate "$rate" duration "$DURATION")" \
                    "--publish-rate 0" \
                    fanout --publishers 1 --subscribers "$subs" --rate "$rate" --duration "$DURATION" \
                    --threads "$LOADGEN_THREADS"
            done
        done
    done
}

run_b4() {
    local rate s run
    for rate in $B4_RATE; do
        for run in $(seq "$RUNS"); do
            # Servers alternate within a round, so a noisy minute hits each of them.
            for s in $(ws_servers); do
                sample B4 "${B4_SUBS}x${rate}" "$s" "$run" \
                    "$(jobj subscribers "$B4_SUBS" rate "$rate" duration "$B4_DURATION" timed_every "$B4_TIMED_EVERY" drain "$B4_DRAIN")" \
                    "--publish-rate 0" \
                    fanout --publishers 1 --subscribers "$B4_SUBS" --rate "$rate" --duration "$B4_DURATION" \
                    --threads "$LOADGEN_THREADS" --timed-every "$B4_TIMED_EVERY" --drain-every "$B4_DRAIN"
            done
        done
    done
}

# Prometheus counters of the running roostd: "published commits".
scrape() {
    python3 - "$server_port" <<'EOF' || echo "- -"
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
vals = {}
for line in text.splitlines():
    parts = line.split()
    if len(parts) == 2 and parts[0] in ("roostd_messages_published_total", "roostd_commits_total"):
        vals[parts[0]] = int(float(parts[1]))
print(vals.get("roostd_messages_published_total", "-"), vals.get("roostd_commits_total", "-"))
EOF
}

# B5: roostd's acked publishes with P publishers, its mean commit batch from
# /metrics, then heedbench (plain and --like-roostd) at that batch.
b5_once() {
    local p=$1 name="B5-roostd-$1-r$CUR_RUN-t$BENCH_TRY"
    if ! start_server roostd --publish-rate 0; then
        echo "{}" >"$OUT/logs/$name.out"
        record "$OUT/logs/$name.out" '{"error":"the server did not start"}'
        return 0
    fi
    local before after
    before=$(scrape)
    loadgen roostd "$name" publish --publishers "$p" --duration "$DURATION"
    after=$(scrape)
    stop_server
    local extra batch
    extra=$(python3 - "$before" "$after" <<'EOF'
import json, sys
b, a = (s.split() for s in sys.argv[1:3])
try:
    pub, com = int(a[0]) - int(b[0]), int(a[1]) - int(b[1])
    print(json.dumps({"metrics_published": pub, "metrics_commits": com,
                      "mean_batch": round(pub / com, 2) if com else None}))
except ValueError:
    print(json.dumps({"mean_batch": None, "error": "could not read /metrics"}))
EOF
    )
    record "$OUT/logs/$name.out" "$extra"
    batch=$(python3 -c 'import json,sys; b=json.loads(sys.argv[1]).get("mean_batch"); print(max(1, round(b)) if b else 1)' "$extra")
    local mode saved=$CUR_SERVER params=$CUR_PARAMS
    for mode in plain like-roostd; do
        local hname="B5-heedbench-$mode-$p-r$CUR_RUN-t$BENCH_TRY" hflags=()
        [[ "$mode" == plain ]] || hflags=(--like-roostd)
        echo "== B5 heedbench $mode --batch $batch (roostd's mean batch at $p publishers)" >&2
        rm -rf "$BENCH_DIR/heed"
        mkdir -p "$BENCH_DIR/heed"
        nice -n "$NICE" taskset -c "$SERVER_CPUS" "$HEEDBENCH" --dir "$BENCH_DIR/heed" --batch "$batch" \
            --duration "$DURATION" "${hflags[@]+"${hflags[@]}"}" >"$OUT/logs/$hname.out" 2>"$OUT/logs/$hname.err" \
            || bench_log "heedbench exited with status $? (logs/$hname.err)"
        rm -rf "$BENCH_DIR/heed"
        CUR_SERVER="heedbench-$mode"
        CUR_PARAMS=$(jobj publishers "$p" batch "$batch" duration "$DURATION" mode "$mode")
        record "$OUT/logs/$hname.out" "$(jobj batch_from_roostd "$batch")"
        CUR_SERVER=$saved CUR_PARAMS=$params
    done
}

run_b5() {
    local p run mode
    for p in $B5_PUBLISHERS; do
        for run in $(seq "$RUNS"); do
            for mode in plain like-roostd; do
                echo "{\"bench\":\"B5\",\"server\":\"heedbench-$mode\",\"cell\":\"$p\",\"run\":$run}" >>"$PLAN"
            done
            plan B5 "$p" roostd "$run" "$(jobj publishers "$p" duration "$DURATION")"
            bench_measure "$RESULTS" "B5 roostd $p run $run" b5_once "$p"
        done
    done
}

run_b6() {
    local s run
    for s in $(ws_servers); do
        for run in $(seq "$RUNS"); do
            sample B6 upgrades "$s" "$run" "$(jobj connectors "$B6_CONNECTORS" invalid_pct 0 duration "$DURATION")" "" \
                upgrades --connectors "$B6_CONNECTORS" --invalid-pct 0 --duration "$DURATION"
        done
    done
    if has roostd; then
        for run in $(seq "$RUNS"); do
            sample B6 upgrades-invalid50 roostd "$run" \
                "$(jobj connectors "$B6_CONNECTORS" invalid_pct 50 duration "$DURATION")" "" \
                upgrades --connectors "$B6_CONNECTORS" --invalid-pct 50 --duration "$DURATION"
        done
    fi
    for s in $(ws_servers); do
        for run in $(seq "$RUNS"); do
            sample B6 storm "$s" "$run" "$(jobj conns "$B6_STORM")" "" storm --conns "$B6_STORM"
        done
    done
}

run_b7() {
    local pct s run
    for pct in 1 0; do
        for s in $(ws_servers); do
            for run in $(seq "$RUNS"); do
                sample B7 "slow$pct" "$s" "$run" \
                    "$(jobj subscribers "$B7_SUBS" slow_pct "$pct" rate "$B7_RATE" payload "$B7_PAYLOAD" duration "$B7_DURATION")" \
                    "--publish-rate 0" \
                    slow --subscribers "$B7_SUBS" --slow-pct "$pct" --rate "$B7_RATE" --payload "$B7_PAYLOAD" \
                    --duration "$B7_DURATION"
            done
        done
    done
}

run_b8() {
    local s run servers=(roostd)
    ((B8_PEERS)) && servers=(roostd tokio node)
    for s in "${servers[@]}"; do
        has "$s" || continue
        for run in $(seq "$B8_RUNS"); do
            sample B8 "$B8_CONNS" "$s" "$run" \
                "$(jobj conns "$B8_CONNS" churn_pct "$B8_CHURN_PCT" duration "$CHURN_DURATION")" "" \
                churn --conns "$B8_CONNS" --churn-pct "$B8_CHURN_PCT" --duration "$CHURN_DURATION"
        done
    done
}

# growth: benches/growth.py with this run's binaries, CPUs and sample count.
run_growth() {
    local plots=(--plots "$OUT/bench")
    ((REPORT)) && ((!SMOKE)) && plots=()
    nice -n "$NICE" python3 benches/growth.py --messages "$GROWTH_MESSAGES" --channels "$GROWTH_CHANNELS" \
        --runs "$RUNS" --out "$OUT/growth" --bin-dir "$root/target/$profile_dir" --port "$((PORT + 100))" \
        --server-cpus "$SERVER_CPUS" --loadgen-cpus "$LOADGEN_CPUS" "${plots[@]+"${plots[@]}"}" \
        || bench_log "growth.py exited with status $? (its messages above)"
}

# second: B2 and B3 from the C generators, which alternate roostd and uws themselves
# (so no SERVERS loop here); each prints its own medians and ratios at the end.
run_second() {
    if [[ ! -x "$UWS_PEER" ]]; then
        bench_log "second: no uWebSockets peer at UWS_PEER=$UWS_PEER; skipped"
        return
    fi
    local secs=${DURATION%s} bin=$ROOSTD
    mkdir -p "$OUT/second"
    UWS_PEER="$UWS_PEER" PAYLOADS="$B2_PAYLOADS" CONNS="$B2_CONNS" PORT="$((PORT + 150))" \
        bash benches/echo_c.sh "$bin" "$RUNS" "$secs" | tee "$OUT/second/echo.txt" \
        || bench_log "echo_c.sh exited with status $? (its messages above)"
    UWS_PEER="$UWS_PEER" CELLS="$B3_CELLS" PORT="$((PORT + 170))" \
        bash benches/fanout_c.sh "$bin" "$RUNS" "$secs" | tee "$OUT/second/fanout.txt" \
        || bench_log "fanout_c.sh exited with status $? (its messages above)"
}

for b in "${WANTED[@]}"; do
    t=$(date +%s)
    bench_log "=== $b"
    "run_${b,,}"
    bench_log "=== $b done ($(($(date +%s) - t)) s)"
done

bench_log "$(wc -l <"$RESULTS") results in $RESULTS ($(($(date +%s) - T0)) s in all)"
if ((REPORT)) && [[ -s "$RESULTS" ]]; then # (growth alone writes no results.jsonl lines)
    python3 benches/report.py "$OUT"
else
    bench_log "tables and plots: python3 benches/report.py $OUT"
fi
echo "$OUT"
