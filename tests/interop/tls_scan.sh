#!/usr/bin/env bash
# Scans roostd's TLS with a scanner nobody here wrote, and fails on anything weak.
#
#   tests/interop/tls_scan.sh
#
# Starts `roostd serve --tls-cert --tls-key` on 127.0.0.1 (never anything
# else) with a certificate from `roostd cert --name localhost --ip 127.0.0.1`,
# and, where openssl is installed, a second time with an RSA-2048 certificate
# (what many LAN and ACME authorities issue), and scans each with:
#
#   sslyze     `pip install sslyze` into a venv in target/tls-scan-venv (preferred)
#   testssl.sh Debian's package testssl.sh (`/usr/bin/testssl`), if sslyze cannot be had
#
# Exit 1 (FAIL) when SSL 2.0/3.0, TLS 1.0 or TLS 1.1 is accepted; when any
# accepted cipher suite has under 128-bit security, RC4, (3)DES, NULL,
# EXPORT, anonymous key exchange, MD5, or is CBC-mode with SHA-1; when the
# certificate served is not the one generated (SHA-256 fingerprint); when a
# known vulnerability check (Heartbleed, CCS injection, ROBOT, compression,
# client renegotiation) reports one; or when the scan did not complete.
# Before scanning, the checker is run on made-up results that must FAIL, so
# a checker that passes everything is caught.
#
# When neither scanner can be installed: prints `tls-scan: SKIPPED...
# <reason>` and exits 78 when a registry (PyPI, Debian) could not be
# reached, 77 otherwise (see .ci/lib.sh).
#
# Environment:
#   ROOSTD_BIN        the binary (default: target/debug/roostd, built here when unset)
#   TLS_SCAN_SCANNER  sslyze or testssl: use only that one
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

say() { echo "tls-scan: $*"; }
SKIP_NAME=tls-scan
. .ci/lib.sh

if [[ -z "${ROOSTD_BIN:-}" ]]; then
    cargo build --quiet --bin roostd
    ROOSTD_BIN="$root/target/debug/roostd"
fi
[[ -x "$ROOSTD_BIN" ]] || { say "no binary at $ROOSTD_BIN"; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/roostd-tls-scan.XXXXXX")"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# ------------------------------------------------------------------ a scanner

want="${TLS_SCAN_SCANNER:-}"
case "$want" in
    "" | sslyze | testssl) ;;
    *) say "TLS_SCAN_SCANNER must be sslyze or testssl, not '$want'"; exit 2 ;;
esac
scanner=""
why_not=()
if [[ -z "$want" || "$want" == sslyze ]]; then
    venv="$root/target/tls-scan-venv"
    python="${PYTHON:-python3}"
    # Debian splits venv (and its pip) off into python3-venv.
    if [[ ! -x "$venv/bin/python" ]] && ! "$python" -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        apt_install "$work/apt-venv.log" python3-venv || true
    fi
    if { [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv" >/dev/null 2>&1; } \
        && { "$venv/bin/python" -c 'import sslyze' 2>/dev/null \
            || "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'sslyze==6.*' >"$work/pip.log" 2>&1; }; then
        scanner=sslyze
        scanner_version="sslyze $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("sslyze"))')"
    else
        why_not+=("sslyze: $(tail -n 1 "$work/pip.log" 2>/dev/null || echo "no python venv (apt-get install python3-venv: $(tail -n 1 "$work/apt-venv.log" 2>/dev/null))")")
    fi
fi
if [[ -z "$scanner" && ( -z "$want" || "$want" == testssl ) ]]; then
    testssl_bin="$(command -v testssl || command -v testssl.sh || true)"
    if [[ -z "$testssl_bin" ]]; then
        apt_install "$work/apt.log" testssl.sh || true
        testssl_bin="$(command -v testssl || command -v testssl.sh || true)"
    fi
    if [[ -n "$testssl_bin" ]]; then
        scanner=testssl
        scanner_version="testssl.sh $("$testssl_bin" --version 2>/dev/null | grep -o 'testssl  *[0-9][0-9.]*' | awk '{print $2}' | head -n 1)"
    else
        why_not+=("testssl.sh: $(tail -n 1 "$work/apt.log" 2>/dev/null || echo "not installed and apt-get unavailable")")
    fi
fi
[[ -n "$scanner" ]] || skip_install_failed "no TLS scanner could be installed (${why_not[*]})" \
    "$work/pip.log" "$work/apt.log" "$work/apt-venv.log"
say "scanner: $scanner_version"

# ------------------------------------------------------------------ the checker

# Reads a scanner's JSON report, prints the summary, exits 1 on a finding.
cat >"$work/check.py" <<'PY'
import base64, json, re, sys

scanner, report, expected_fp, label = sys.argv[1:5]

PROTOS = ["SSL 2.0", "SSL 3.0", "TLS 1.0", "TLS 1.1", "TLS 1.2", "TLS 1.3"]
FORBIDDEN_PROTOS = PROTOS[:4]


def from_sslyze(data):
    result = data["server_scan_results"][0]
    problems, accepted, vulns = [], {}, []
    if result["scan_status"] != "COMPLETED":
        problems.append(f"scan did not complete: {result.get('connectivity_error_trace') or result['scan_status']}")
        return accepted, None, problems, vulns
    scans = result["scan_result"]
    keys = ["ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1", "tls_1_2", "tls_1_3"]
    for proto, key in zip(PROTOS, keys):
        scan = scans[key + "_cipher_suites"]
        if scan["status"] != "COMPLETED":
            problems.append(f"{proto} scan: {scan['status']} {scan.get('error_reason')}")
            continue
        accepted[proto] = [
            (s["cipher_suite"]["name"], s["cipher_suite"]["key_size"], s["cipher_suite"]["is_anonymous"])
            for s in scan["result"]["accepted_cipher_suites"]
        ]
    fp = None
    cert = scans["certificate_info"]
    if cert["status"] == "COMPLETED":
        leaf = cert["result"]["certificate_deployments"][0]["received_certificate_chain"][0]
        fp = ":".join(f"{b:02X}" for b in base64.b64decode(leaf["fingerprint_sha256"]))
    else:
        problems.append(f"certificate scan: {cert['status']}")
    checks = [
        ("heartbleed", "is_vulnerable_to_heartbleed", True, "Heartbleed"),
        ("openssl_ccs_injection", "is_vulnerable_to_ccs_injection", True, "CCS injection"),
        ("tls_compression", "supports_compression", True, "TLS compression (CRIME)"),
        ("session_renegotiation", "is_vulnerable_to_client_renegotiation_dos", True, "client renegotiation DoS"),
    ]
    for key, field, bad, name in checks:
        scan = scans[key]
        if scan["status"] != "COMPLETED":
            problems.append(f"{name} check: {scan['status']}")
        elif scan["result"][field] == bad:
            vulns.append(name)
    robot = scans["robot"]
    if robot["status"] == "COMPLETED" and not robot["result"]["robot_result"].startswith("NOT_VULNERABLE"):
        vulns.append(f"ROBOT ({robot['result']['robot_result']})")
    return accepted, fp, problems, vulns


def from_testssl(data):
    findings = {f["id"]: f for f in data}
    problems, accepted, vulns = [], {}, []
    ids = ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"]
    tags = ["ssl2", "ssl3", "tls1", "tls1_1", "tls1_2", "tls1_3"]
    for proto, pid, tag in zip(PROTOS, ids, tags):
        f = findings.get(pid)
        if f is None:
            problems.append(f"no result for {proto}")
            continue
        suites = []
        for fid, g in findings.items():
            if fid.startswith(f"cipher-{tag}_x"):
                cols = g["finding"].split()
                # "TLS 1.2  xc02b  ECDHE-ECDSA-AES128-GCM-SHA256  ECDH 253  AESGCM  128  TLS_ECDHE_..."
                suites.append((cols[-1], int(cols[-2]), "anon" in g["finding"].lower() or "ADH" in cols[3]))
        offered = f["finding"].startswith("offered")
        if offered and not suites:
            suites.append(("(offered; no cipher suite listed)", 0, False))
        accepted[proto] = suites
    fp = None
    f = findings.get("cert_fingerprintSHA256")
    if f:
        hexfp = f["finding"].strip().upper()
        fp = ":".join(hexfp[i : i + 2] for i in range(0, len(hexfp), 2))
    else:
        problems.append("no certificate fingerprint in the report")
    for fid, name in [("heartbleed", "Heartbleed"), ("CCS", "CCS injection"), ("ROBOT", "ROBOT"),
                      ("CRIME_TLS", "TLS compression (CRIME)"), ("secure_client_renego", "client renegotiation DoS")]:
        f = findings.get(fid)
        if f is None:
            problems.append(f"no result for {name}")
        elif f["severity"] not in ("OK", "INFO"):
            vulns.append(f"{name}: {f['finding']}")
    for fid, f in findings.items():
        if f["severity"] in ("FATAL",) or fid.startswith("scanProblem"):
            problems.append(f"{fid}: {f['finding']}")
    return accepted, fp, problems, vulns


def weak(name, bits, anonymous):
    n = name.upper()
    reasons = []
    if bits < 128:
        reasons.append(f"{bits}-bit")
    for word, why in [("RC4", "RC4"), ("3DES", "3DES"), ("DES_", "DES"), ("DES40", "DES"), ("NULL", "NULL"),
                      ("EXPORT", "EXPORT"), ("_EXP", "EXPORT"), ("_ANON_", "anonymous"), ("MD5", "MD5")]:
        if word in n and why not in reasons:
            reasons.append(why)
    if anonymous and "anonymous" not in reasons:
        reasons.append("anonymous")
    if "_CBC_" in n and re.search(r"_SHA$", n):
        reasons.append("CBC with SHA-1")
    return reasons


with open(report) as f:
    data = json.load(f)
accepted, fp, problems, vulns = (from_sslyze if scanner == "sslyze" else from_testssl)(data)
failures = list(problems)
print(f"  {label}")
for proto in PROTOS:
    suites = accepted.get(proto)
    if suites is None:
        print(f"    {proto}: not scanned")
        continue
    if not suites:
        print(f"    {proto}: rejected")
        continue
    print(f"    {proto}: ACCEPTED, {len(suites)} cipher suites")
    if proto in FORBIDDEN_PROTOS:
        failures.append(f"{proto} is accepted")
    for name, bits, anon in suites:
        why = weak(name, bits, anon)
        print(f"      {name} ({bits}-bit){'  WEAK: ' + ', '.join(why) if why else ''}")
        if why:
            failures.append(f"{proto} accepts {name}: {', '.join(why)}")
if fp is None:
    failures.append("no certificate fingerprint")
elif expected_fp != "-" and fp != expected_fp:
    failures.append(f"certificate SHA-256 {fp} is not the generated {expected_fp}")
else:
    print(f"    certificate SHA-256 {fp}: {'the generated one' if expected_fp != '-' else 'not compared'}")
for v in vulns:
    failures.append(f"vulnerable: {v}")
if not vulns and not problems:
    print("    Heartbleed, CCS injection, ROBOT, compression, client renegotiation: not vulnerable")
for f in failures:
    print(f"    FAIL: {f}")
sys.exit(1 if failures else 0)
PY

# The checker must fail on bad results: made-up reports with TLS 1.0, a CBC-SHA1
# suite and another certificate.
python3 - "$work" <<'PY'
import base64, copy, json, sys
work = sys.argv[1]
suite = lambda name, bits: {"cipher_suite": {"name": name, "key_size": bits, "is_anonymous": False}}
done = lambda result: {"status": "COMPLETED", "result": result}
scans = {f"{p}_cipher_suites": done({"accepted_cipher_suites": []}) for p in
         ["ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1", "tls_1_2", "tls_1_3"]}
scans["tls_1_3_cipher_suites"] = done({"accepted_cipher_suites": [suite("TLS_AES_128_GCM_SHA256", 128)]})
scans["certificate_info"] = done({"certificate_deployments": [{"received_certificate_chain": [
    {"fingerprint_sha256": base64.b64encode(bytes(32)).decode()}]}]})
scans["heartbleed"] = done({"is_vulnerable_to_heartbleed": False})
scans["openssl_ccs_injection"] = done({"is_vulnerable_to_ccs_injection": False})
scans["tls_compression"] = done({"supports_compression": False})
scans["session_renegotiation"] = done({"is_vulnerable_to_client_renegotiation_dos": False})
scans["robot"] = done({"robot_result": "NOT_VULNERABLE_NO_ORACLE"})
good = {"server_scan_results": [{"scan_status": "COMPLETED", "scan_result": scans}]}
bad = {
    "tls10": [("tls_1_0_cipher_suites", suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 128))],
    "cbcsha1": [("tls_1_2_cipher_suites", suite("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", 128))],
    "3des": [("tls_1_2_cipher_suites", suite("TLS_RSA_WITH_3DES_EDE_CBC_SHA", 112))],
    "rc4": [("tls_1_2_cipher_suites", suite("TLS_RSA_WITH_RC4_128_SHA", 128))],
}
json.dump(good, open(f"{work}/selftest-good.json", "w"))
for name, changes in bad.items():
    r = copy.deepcopy(good)
    for key, s in changes:
        r["server_scan_results"][0]["scan_result"][key]["result"]["accepted_cipher_suites"].append(s)
    json.dump(r, open(f"{work}/selftest-{name}.json", "w"))
PY
zero_fp="$(python3 -c 'print(":".join(["00"] * 32))')"
python3 "$work/check.py" sslyze "$work/selftest-good.json" "$zero_fp" "self-test: a good report" >/dev/null \
    || { say "FAIL: the checker rejects a good report"; exit 1; }
for bad in tls10 cbcsha1 3des rc4; do
    if python3 "$work/check.py" sslyze "$work/selftest-$bad.json" "$zero_fp" "self-test" >/dev/null; then
        say "FAIL: the checker passed a report with $bad"
        exit 1
    fi
done
if python3 "$work/check.py" sslyze "$work/selftest-good.json" "11:${zero_fp:3}" "self-test" >/dev/null; then
    say "FAIL: the checker passed a report with another certificate"
    exit 1
fi

# ------------------------------------------------------------------ scanning

# Starts roostd with this certificate; sets $port and $server_pid.
start_server() {
    local cert=$1 key=$2
    : >"$work/server.log"
    rm -f "$work/server.addr"  # the address of an earlier run
    ROOSTD_SECRET="tls-scan-secret-0123456789abcdef-0123456789" RUST_LOG=info \
        "$ROOSTD_BIN" serve --listen 127.0.0.1:0 --data "$work/data" --tls-cert "$cert" --tls-key "$key" \
        --ready-file "$work/server.addr" </dev/null >/dev/null 2>"$work/server.log" &
    server_pid=$!
    port=""
    for _ in $(seq 1 100); do
        [[ -s "$work/server.addr" ]] && port="$(sed 's/.*://' "$work/server.addr")"
        [[ -n "$port" ]] && return 0
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    say "roostd did not start:"
    cat "$work/server.log"
    exit 1
}

stop_server() {
    kill -TERM "$server_pid"
    wait "$server_pid" || { say "roostd did not stop cleanly"; cat "$work/server.log"; exit 1; }
    server_pid=""
}

# Scans 127.0.0.1:$port as host name localhost; writes $work/$1.json.
scan() {
    local out="$work/$1.json" cafile=$2
    case "$scanner" in
        sslyze)
            "$venv/bin/python" -m sslyze --quiet --json_out "$out" \
                --sslv2 --sslv3 --tlsv1 --tlsv1_1 --tlsv1_2 --tlsv1_3 --certinfo --certinfo_ca_file "$cafile" \
                --heartbleed --openssl_ccs --robot --compression --reneg \
                "localhost:$port{127.0.0.1}" >"$work/$1.out" 2>&1 \
                || { say "sslyze failed:"; cat "$work/$1.out"; return 1; }
            ;;
        testssl)
            # Exit codes count findings (a self-signed certificate is one): the report decides.
            "$testssl_bin" --quiet --color 0 --warnings off --protocols --cipher-per-proto --server-defaults \
                --heartbleed --ccs-injection --robot --crime --renegotiation \
                --jsonfile "$out" --ip 127.0.0.1 "localhost:$port" >"$work/$1.out" 2>&1 || true
            [[ -s "$out" ]] || { say "testssl.sh wrote no report:"; cat "$work/$1.out"; return 1; }
            ;;
    esac
}

failed=0
t0=$SECONDS

# 1. The certificate `roostd cert` makes (ECDSA P-256).
fp="$("$ROOSTD_BIN" cert --name localhost --ip 127.0.0.1 --cert "$work/ec.pem" --key "$work/ec-key.pem" 2>/dev/null)"
start_server "$work/ec.pem" "$work/ec-key.pem"
say "scanning 127.0.0.1:$port"
scan ec "$work/ec.pem" || failed=1
stop_server
[[ $failed == 0 ]] && { python3 "$work/check.py" "$scanner" "$work/ec.json" "$fp" \
    "roostd cert (ECDSA P-256), fingerprint printed $fp" || failed=1; }

# 2. An RSA-2048 certificate, as many authorities issue (needs openssl).
if command -v openssl >/dev/null; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$work/rsa-key.pem" -out "$work/rsa.pem" >/dev/null 2>&1
    rsa_fp="$(openssl x509 -in "$work/rsa.pem" -noout -fingerprint -sha256 | sed 's/.*=//')"
    start_server "$work/rsa.pem" "$work/rsa-key.pem"
    say "scanning 127.0.0.1:$port"
    scan rsa "$work/rsa.pem" || failed=1
    stop_server
    [[ -f "$work/rsa.json" ]] && { python3 "$work/check.py" "$scanner" "$work/rsa.json" "$rsa_fp" \
        "openssl req (RSA 2048)" || failed=1; }
else
    say "(no openssl: the RSA certificate scan is left out)"
fi

if [[ $failed != 0 ]]; then
    say "FAIL ($((SECONDS - t0)) s)"
    exit 1
fi
say "PASS ($scanner_version, $((SECONDS - t0)) s)"
