"""The Python of .ci/autobahn (read its header for the steps):

    python3 tests/interop/autobahn.py config TEMPLATE OUT OUTDIR URL
        fills tests/autobahn/fuzzingclient.json for wstest
    python3 tests/interop/autobahn.py compare REPORTS RESULTS EXPECTED UPDATE(0|1)
        counts wstest's verdicts, writes RESULTS, compares with EXPECTED
    python3 tests/interop/autobahn.py limit PORT TOKEN
        the production limit: one 70,000-byte message gets Close 1009, and
        the server goes on serving

Standard library only; the WebSocket client is tests/interop/roostd_server.py's.
"""

import json
import os
import struct
import sys

from roostd_server import Closed, RawWS


def config(argv):
    template, out, outdir, url = argv
    text = open(template).read().replace("@OUTDIR@", outdir).replace("@URL@", url)
    json.loads(text)  # the template must stay valid JSON
    open(out, "w").write(text)


def compare(argv):
    reports, results_path, expected_path, update = argv[0], argv[1], argv[2], argv[3] == "1"
    # Better first. UNIMPLEMENTED sits below INFORMATIONAL; the close-only
    # verdicts (FAILED BY CLIENT, WRONG CODE, UNCLEAN) below that; unknown = FAILED.
    RANK = {"OK": 7, "NON-STRICT": 6, "INFORMATIONAL": 5, "UNIMPLEMENTED": 4,
            "FAILED BY CLIENT": 3, "WRONG CODE": 2, "UNCLEAN": 1, "FAILED": 0}
    KINDS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]

    def key(case):
        return tuple(int(p) if p.isdigit() else p for p in case.split("."))

    def rank(b):
        return RANK.get(b, 0)

    index = json.load(open(os.path.join(reports, "index.json")))
    if len(index) != 1:
        sys.exit("autobahn: index.json should hold one agent, it holds %r" % sorted(index))
    agent, cases = next(iter(index.items()))
    results = {c: {"behavior": v["behavior"], "behaviorClose": v["behaviorClose"]}
               for c, v in sorted(cases.items(), key=lambda kv: key(kv[0]))}

    def dump(obj, path):
        with open(path, "w") as f:
            f.write("{\n" + ",\n".join("  %s: %s" % (json.dumps(c), json.dumps(v, sort_keys=True))
                                       for c, v in obj.items()) + "\n}\n")

    os.makedirs(os.path.dirname(results_path), exist_ok=True)
    dump(results, results_path)

    counts = {k: 0 for k in KINDS}
    other = {}
    for v in results.values():
        if v["behavior"] in counts:
            counts[v["behavior"]] += 1
        else:
            other[v["behavior"]] = other.get(v["behavior"], 0) + 1
    print("autobahn: %d cases (agent %s)" % (len(results), agent))
    print("    %-14s %5s" % ("behavior", "cases"))
    for k in KINDS:
        print("    %-14s %5d" % (k, counts[k]))
    for k, n in sorted(other.items()):
        print("    %-14s %5d" % (k, n))
    for k in ["NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"] + sorted(other):
        ids = [c for c, v in results.items() if v["behavior"] == k]
        if ids and len(ids) <= 40:
            print("    %s: %s" % (k, " ".join(ids)))
        elif ids:
            print("    %s: %s ... (%d)" % (k, " ".join(ids[:40]), len(ids)))
    print("autobahn: normalized results in %s" % results_path)

    def detail(c):
        """What the case report says happened."""
        f = cases.get(c, {}).get("reportfile")
        try:
            r = json.load(open(os.path.join(reports, f)))
        except Exception:
            return ""
        got = json.dumps(r.get("received"))
        return "%s received %s / close: %s (remote code %s)" % (
            r.get("result"), got if len(got) < 200 else got[:200] + "...", r.get("resultClose"), cases[c].get("remoteCloseCode"))

    failed = [c for c, v in results.items() if v["behavior"] == "FAILED"]
    status = 0
    if failed:
        status = 1
        print("autobahn: FAILED cases:")
        for c in failed:
            print("    %s  %s/%s  %s" % (c, results[c]["behavior"], results[c]["behaviorClose"], detail(c)))

    if update:
        dump(results, expected_path)
        print("autobahn: wrote %s" % expected_path)
        sys.exit(status)

    if not os.path.exists(expected_path):
        print("autobahn: FAILED: %s is missing; run `bash .ci/autobahn --update` and commit it" % expected_path)
        sys.exit(1)
    expected = json.load(open(expected_path))
    worse, better, missing, new = [], [], [], []
    for c, e in expected.items():
        a = results.get(c)
        if a is None:
            missing.append(c)
            continue
        pairs = [(f, e.get(f), a[f]) for f in ("behavior", "behaviorClose")]
        if any(rank(new_) < rank(old) for _, old, new_ in pairs):
            worse.append((c, pairs))
        elif any(rank(new_) > rank(old) for _, old, new_ in pairs):
            better.append((c, pairs))
    new = [c for c in results if c not in expected]

    def fmt(c, pairs):
        return "%s  %s" % (c, ", ".join("%s %s -> %s" % (f, o, n) for f, o, n in pairs if o != n))

    if worse or missing:
        status = 1
        print("autobahn: REGRESSIONS against %s:" % os.path.relpath(expected_path))
        for c, pairs in worse:
            print("    " + fmt(c, pairs) + "\n        " + detail(c))
        for c in missing:
            print("    %s  expected %s, not run" % (c, expected[c]["behavior"]))
    if better:
        print("autobahn: improvements (update with `bash .ci/autobahn --update`):")
        for c, pairs in better:
            print("    " + fmt(c, pairs))
    if new:
        print("autobahn: cases not in expected.json (update with --update): %s" % " ".join(new))
    if status == 0:
        print("autobahn: results match expected.json (%d cases)" % len(expected))
    sys.exit(status)


def next_frame(ws):
    """(opcode, payload) of the next server frame, or None at EOF/reset/timeout."""
    try:
        return ws.read_frame()
    except (Closed, OSError):
        return None


def limit(argv):
    port, token = int(argv[0]), argv[1]
    ok = True
    # 1. One text message of 70,000 bytes (valid UTF-8) against the 65,536 limit.
    ws = RawWS(port, token)
    ws.send_frame(0x1, b"x" * 70000)
    close = None
    while True:
        f = next_frame(ws)
        if f is None:
            break
        if f[0] == 0x8:
            close = f[1]
            break
    if close is None:
        print("autobahn: 1009 check: FAILED: no Close frame before the connection ended")
        ok = False
    else:
        code = struct.unpack("!H", close[:2])[0] if len(close) >= 2 else None
        reason = close[2:].decode(errors="replace")
        # After its Close the server should end the TCP connection (RFC 6455 7.1.1).
        try:
            ws.send_frame(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        end = next_frame(ws)
        ending = "then closed the connection" if end is None else "then sent opcode %s" % end[0]
        if code == 1009:
            print("autobahn: 1009 check: ok: Close %d %r for 70000 bytes, %s" % (code, reason, ending))
        else:
            print("autobahn: 1009 check: FAILED: Close code %s %r, expected 1009" % (code, reason))
            ok = False
    ws.s.close()

    # 2. The server still serves: a new connection subscribes and closes cleanly.
    try:
        ws = RawWS(port, token)
        ws.send({"op": "sub", "ch": "autobahn:check", "id": 1})
        reply = None
        while True:
            f = next_frame(ws)
            if f is None or f[0] == 0x8:
                break
            if f[0] == 0x1:
                reply = json.loads(f[1])
                break
        ws.send_frame(0x8, struct.pack("!H", 1000))
        f = next_frame(ws)
        closed = f is not None and f[0] == 0x8 and f[1][:2] == struct.pack("!H", 1000)
        ws.s.close()
        if reply and reply.get("op") == "subok" and reply.get("id") == 1 and closed:
            print("autobahn: 1009 check: ok: a new connection still works (subok, close 1000)")
        else:
            print("autobahn: 1009 check: FAILED: new connection got %r, close echoed: %s" % (reply, closed))
            ok = False
    except (OSError, RuntimeError, Closed) as e:
        print("autobahn: 1009 check: FAILED: new connection: %s" % e)
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    commands = {"config": config, "compare": compare, "limit": limit}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit("usage: autobahn.py config|compare|limit ARGS (see the docstring)")
    commands[sys.argv[1]](sys.argv[2:])
