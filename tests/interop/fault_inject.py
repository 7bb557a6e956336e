"""The cases of .ci/fault-inject (read its header): strace and an LD_PRELOAD
shim make roostd's system calls on data.mdb fail; clients check what was
acked against what a restarted server holds.

    python3 tests/interop/fault_inject.py   (run by .ci/fault-inject, which
    sets ROOSTD_BIN and FAULT_META_SHIM and checks that strace works)

Standard library only, with tests/interop/roostd_server.py for the server,
tokens and the WebSocket client.
"""

import http.client, json, os, re, shutil, signal, subprocess, sys, tempfile, time

import roostd_server
from roostd_server import SMALL, Closed, RawWS, token_all

IO_TIMEOUT = 60 if SMALL else 10
CASES = os.environ.get("FAULT_INJECT_CASES", "sync-call eio-sync enospc-data enospc-sync enospc-meta").split()

# --------------------------------------------------------------------------
# Clients and the server: tests/interop/roostd_server.py, with what the cases add.

class Failure(Exception):
    pass

def check(cond, why):
    if not cond:
        raise Failure(why)

class WS(RawWS):
    def __init__(self, port, sub):
        super().__init__(port, token_all(sub), timeout=IO_TIMEOUT)

    def history(self, ch):
        r = self.req({"op": "hist", "ch": ch, "since": 0, "limit": 1000, "id": "hist"})
        if r.get("op") != "hist":
            raise Failure(f"hist on {ch} answered {r}")
        return r["msgs"]

def http_req(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    h = {"Authorization": "Bearer " + token_all("app", api=True)}
    h.update(headers or {})
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    out = (r.status, r.read().decode(errors="replace"))
    c.close()
    return out

class Server(roostd_server.Server):
    """`roostd serve --publish-rate 0 ARGS` on the data folder `data`."""

    def __init__(self, data, *args, env=None):
        super().__init__("--publish-rate", "0", *args, data=data, env=env, prefix="roostd-fault-srv-")

class Strace:
    """strace attached to every thread of `server`, tracing only system
    calls on data.mdb, injecting `inject` (or nothing)."""

    def __init__(self, server, trace, inject=None):
        self.out = os.path.join(os.path.dirname(server.data), f"strace-{int(time.time()*1000)}.txt")
        self.err_path = self.out + ".err"
        args = ["strace", "-f", "-tt", "-p", str(server.proc.pid), "-P", os.path.join(server.data, "data.mdb"),
                "-e", "trace=" + trace, "-o", self.out]
        if inject:
            args += ["-e", "inject=" + inject]
        self.err = open(self.err_path, "w")
        self.p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.err)
        threads = len(os.listdir(f"/proc/{server.proc.pid}/task"))
        deadline = time.time() + IO_TIMEOUT
        while "attached" not in open(self.err_path).read():
            if self.p.poll() is not None or time.time() > deadline:
                self.detach()
                raise Failure(f"strace did not attach: {open(self.err_path).read()}")
            time.sleep(0.02)
        time.sleep(0.2)  # every thread (it says "attached with N threads")
        self.threads = threads

    def detach(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(IO_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()

    def lines(self):
        try:
            with open(self.out) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

def publish(ws, ch, n0, n1, tag):
    """Publishes ids tag-n0..tag-(n1-1) one at a time; returns {id: seq}."""
    acks = {}
    for i in range(n0, n1):
        r = ws.req({"op": "pub", "ch": ch, "data": {"n": i, "tag": tag}, "id": f"{tag}-{i}"})
        check(r.get("op") == "ack", f"publish {tag}-{i} before the fault: {r}")
        acks[f"{tag}-{i}"] = r["seq"]
    return acks

def check_history(port, ch, want, tag):
    """The restarted store holds exactly the acked messages `want` {id: seq}."""
    ws = WS(port, "checker")
    msgs = ws.history(ch)
    got = {f"{m['data']['tag']}-{m['data']['n']}": m["seq"] for m in msgs}
    lost = sorted(set(want) - set(got), key=lambda k: want[k])
    extra = sorted(set(got) - set(want))
    check(not lost, f"{tag}: acked messages missing after the restart: {lost}")
    check(not extra, f"{tag}: messages stored that were never acked: {extra}")
    check(got == want, f"{tag}: seqs differ after the restart: {got} vs {want}")
    check([m["seq"] for m in msgs] == list(range(1, len(msgs) + 1)), f"{tag}: seqs with holes: {msgs}")
    return ws

def new_dir():
    root = tempfile.mkdtemp(prefix="roostd-fault-")
    return root, os.path.join(root, "data")

# --------------------------------------------------------------------------
# The cases.

SYNC = {"call": None}

def case_sync_call():
    root, data = new_dir()
    srv = Server(data)
    try:
        ws = WS(srv.port, "p")
        publish(ws, "fi:a", 0, 2, "warm")
        st = Strace(srv, "fdatasync,fsync,sync_file_range,msync,pwrite64,pwritev,writev")
        publish(ws, "fi:a", 2, 3, "probe")
        time.sleep(0.2)
        st.detach()
        calls = [l for l in st.lines() if re.search(r"\b(fdatasync|fsync|sync_file_range|msync|pwrite64|pwritev|writev)\(", l)]
        names = [re.search(r"\b(\w+)\(", l.split(None, 2)[2]).group(1) for l in calls]
        syncs = [n for n in names if n in ("fdatasync", "fsync", "sync_file_range", "msync")]
        check(len(syncs) == 1, f"one sync call per commit expected, saw {names}")
        SYNC["call"] = syncs[0]
        # The fds: which one is O_DSYNC (the meta page goes through it).
        dsync = []
        for fd in os.listdir(f"/proc/{srv.proc.pid}/fd"):
            try:
                if os.readlink(f"/proc/{srv.proc.pid}/fd/{fd}").endswith("/data.mdb"):
                    flags = int(open(f"/proc/{srv.proc.pid}/fdinfo/{fd}").read().split("flags:")[1].split()[0], 8)
                    dsync.append((int(fd), bool(flags & os.O_DSYNC)))
            except OSError:
                pass
        meta_fd = [fd for fd, d in dsync if d]
        after = names[names.index(syncs[0]) + 1:]
        last = calls[-1]
        check(after == ["pwrite64"] and meta_fd and f"pwrite64({meta_fd[0]}," in last and ", 120, " in last,
              f"after the sync, one 120-byte pwrite64 on the O_DSYNC descriptor {meta_fd} expected: {calls[-1:]}")
        print(f"fault-inject: sync-call: a commit is {' + '.join(names)} on data.mdb; "
              f"data descriptors {dsync} (True = O_DSYNC: the meta page is written through it, "
              f"so it needs no second sync); the sync call is {syncs[0]}")
        ws.s.close()
        check(srv.stop() == 0, "SIGTERM: exit 0 expected")
    finally:
        srv.kill()
        shutil.rmtree(root, ignore_errors=True)

def case_eio_sync():
    call = SYNC["call"] or "fdatasync"
    root, data = new_dir()
    srv = Server(data)
    try:
        pub, sub = WS(srv.port, "pub"), WS(srv.port, "sub")
        epoch = sub.req({"op": "sub", "ch": "fi:a", "since": 0, "id": "s"})["epoch"]
        acked = publish(pub, "fi:a", 0, 5, "ok")
        st = Strace(srv, "fdatasync,fsync,pwrite64,pwritev,writev", f"{call}:error=EIO")
        t = time.time()
        # A burst in one write: group commit puts them into the failing batch.
        pub.send_many([{"op": "pub", "ch": "fi:a", "data": {"n": i, "tag": "lost"}, "id": f"lost-{i}"}
                       for i in range(20)])
        code, frames = pub.close_code(IO_TIMEOUT)
        acks = [f for f in frames if f.get("op") == "ack"]
        check(not acks, f"acks after the failed sync: {acks}")
        check(code == 1011, f"the publisher must be closed with 1011, got {code} after {frames}")
        code, frames = sub.close_code(IO_TIMEOUT)
        delivered = [f for f in frames if f.get("op") == "msg" and f["data"].get("tag") == "lost"]
        check(not delivered, f"unacked messages delivered to a subscriber: {delivered}")
        check(code == 1011, f"the subscriber must be closed with 1011, got {code}")
        rc = srv.wait(IO_TIMEOUT)
        took = time.time() - t
        st.detach()
        check(rc == 1, f"exit 1 expected after EIO on {call}, got {rc}")
        log = srv.log_text()
        check(re.search(r"ERROR .*(Input/output error|I/O error)", log), f"the I/O error is logged as an ERROR:\n{log}")
        reason = [l for l in log.splitlines() if l.startswith("roostd: ")]
        check(len(reason) == 1, f"one reason line on stderr: {reason}")
        lines = st.lines()
        inj = [i for i, l in enumerate(lines) if "INJECTED" in l]
        check(len(inj) == 1, f"exactly one failed {call} expected: {[lines[i] for i in inj]}")
        later = [l for l in lines[inj[0] + 1:] if re.search(r"\b(fdatasync|fsync|pwrite64|pwritev|writev)\(", l)]
        check(not later, f"writes to data.mdb after the failed sync (a retry on the same environment): {later}")
        # Restart: every acked message is there, nothing unacked.
        srv2 = Server(data)
        try:
            ws = check_history(srv2.port, "fi:a", acked, "eio-sync")
            r = ws.req({"op": "sub", "ch": "fi:a", "id": "e"})
            check(r["epoch"] == epoch, "the epoch survives")
            r = ws.req({"op": "pub", "ch": "fi:a", "data": {"n": 0, "tag": "lost"}, "id": "lost-0"})
            check(r.get("op") == "ack" and r["seq"] == 6, f"lost-0 resent: stored anew as seq 6 expected: {r}")
            check(srv2.stop() == 0, "SIGTERM: exit 0 expected")
        finally:
            srv2.kill()
        batch = re.search(r"commit of (\d+) messages failed", log)
        print(f"fault-inject: eio-sync: EIO from {call}: 0 of 20 acked (the failed batch held "
              f"{batch.group(1) if batch else '?'}), 1011 to publisher and subscriber, "
              f"exit 1 after {took:.2f}s, no write after the failure; restart: the 5 acked, nothing else")
        print("fault-inject:   log: " + " | ".join(l for l in log.splitlines() if "ERROR" in l or l.startswith("roostd:")))
    finally:
        srv.kill()
        shutil.rmtree(root, ignore_errors=True)

def enospc_case(name, trace, inject):
    root, data = new_dir()
    srv = Server(data)
    try:
        pub, sub = WS(srv.port, "pub"), WS(srv.port, "sub")
        sub.req({"op": "sub", "ch": "fi:a", "since": 0, "id": "s"})
        acked = publish(pub, "fi:a", 0, 5, "ok")
        for _ in range(5):
            sub.recv()
        st = Strace(srv, trace, inject)
        for i in range(3):
            r = pub.req({"op": "pub", "ch": "fi:a", "data": {"n": i, "tag": "full"}, "id": f"full-{i}"})
            check(r.get("op") == "err" and r.get("code") == "unavailable",
                  f"publish while the disk is full: `err unavailable` expected, got {r}")
        status, body = http_req(srv.port, "POST", "/api/channels/fi:a/messages", json.dumps({"n": 0, "tag": "http"}),
                            {"Content-Type": "application/json", "Idempotency-Key": "http-0"})
        check(status == 503 and "unavailable" in body, f"HTTP publish while full: 503 expected, got {status} {body}")
        healthz = http_req(srv.port, "GET", "/healthz")
        # Reads keep working.
        check(len(pub.history("fi:a")) == 5, "hist while the disk is full")
        reader = WS(srv.port, "reader")
        r = reader.req({"op": "sub", "ch": "fi:a", "since": 0, "id": "s"})
        check(r.get("op") == "subok", f"sub while full: {r}")
        check([reader.recv()["seq"] for _ in range(5)] == [1, 2, 3, 4, 5], "replay while full")
        status, body = http_req(srv.port, "GET", "/api/channels/fi:a/messages?since=0")
        check(status == 200, f"HTTP history while full: {status} {body}")
        st.detach()
        injected = [l for l in st.lines() if "INJECTED" in l]
        check(injected, "nothing was injected")
        check(srv.proc.poll() is None, f"the server exited ({srv.proc.returncode}):\n{srv.log_text()}")
        # Space again: the same ids are acked with the next seqs.
        for i in range(3):
            r = pub.req({"op": "pub", "ch": "fi:a", "data": {"n": i, "tag": "full"}, "id": f"full-{i}"})
            check(r.get("op") == "ack" and r["seq"] == 6 + i, f"after the disk has room: ack seq {6 + i} expected: {r}")
            acked[f"full-{i}"] = r["seq"]
        got = [sub.recv() for _ in range(3)]
        check([m["seq"] for m in got] == [6, 7, 8], f"the subscriber gets exactly the acked ones: {got}")
        check(srv.stop() == 0, "SIGTERM: exit 0 expected")
        srv2 = Server(data)
        try:
            check_history(srv2.port, "fi:a", acked, name)
            check(srv2.stop() == 0, "SIGTERM: exit 0 expected")
        finally:
            srv2.kill()
        print(f"fault-inject: {name}: {len(injected)} injected ENOSPC ({inject}); 3 refused with `unavailable`, "
              f"HTTP 503, reads fine, no connection closed; acked again after; restart holds all 8 "
              f"(/healthz while full: {healthz[0]} {healthz[1].strip()})")
    finally:
        srv.kill()
        shutil.rmtree(root, ignore_errors=True)

def case_enospc_meta():
    root, data = new_dir()
    arm, shim_log = os.path.join(root, "arm"), os.path.join(root, "shim.log")
    srv = Server(data, env={"LD_PRELOAD": os.environ["FAULT_META_SHIM"], "FAULT_META_ARM": arm,
                            "FAULT_META_LOG": shim_log})
    try:
        pub = WS(srv.port, "pub")
        acked = publish(pub, "fi:a", 0, 5, "ok")
        open(arm, "w").close()  # from now on every meta page write fails
        r = pub.req({"op": "pub", "ch": "fi:a", "data": {"n": 0, "tag": "meta"}, "id": "meta-0"})
        t = time.time()
        injected = open(shim_log).read().splitlines() if os.path.exists(shim_log) else []
        check(r.get("op") != "ack", f"acked although the meta page write failed: {r}")
        check(injected and ", 120, " in injected[0],
              f"one failed write of the 120-byte meta record expected, the shim logged {injected}")
        outcome, broken = None, None
        try:
            msgs = pub.req({"op": "hist", "ch": "fi:a", "since": 0, "id": "h"})
            if msgs.get("op") == "hist" and len(msgs["msgs"]) == 5:
                os.unlink(arm)
                r = pub.req({"op": "pub", "ch": "fi:a", "data": {"n": 0, "tag": "meta"}, "id": "meta-0"})
                check(r.get("op") == "ack" and r["seq"] == 6,
                      f"reads work after the failed meta write, so writes must work again once there is room: {r}")
                acked["meta-0"] = 6
                outcome = "recovered"
            else:
                # Not readable: then it must stop at once, as for an I/O error.
                code, _ = pub.close_code(3)
                rc = srv.wait(1)
                healthz = None
                if srv.proc.poll() is None:
                    try:
                        healthz = http_req(srv.port, "GET", "/healthz")
                    except OSError:
                        pass
                check(code == 1011 and rc == 1,
                      f"after ENOSPC on the meta page LMDB refuses every transaction ({msgs.get('msg')!r} to a "
                      f"hist); the server must then stop like for an I/O error (1011, exit 1), but "
                      f"{time.time() - t:.1f}s later the connection got {code!r}, the process is "
                      f"{'running' if rc is None else f'gone with {rc}'}, /healthz {healthz}")
                outcome = "stopped with exit 1"
        except Closed as e:
            rc = srv.wait(3)
            outcome = "stopped with exit 1"
            if not (e.code == 1011 and rc == 1):
                broken = Failure(f"closed with {e.code}, exit {rc}: 1011 and exit 1 expected")
        except Failure as e:
            broken = e
        if os.path.exists(arm):
            os.unlink(arm)
        log = srv.log_text()
        if srv.proc.poll() is None:
            srv.stop()
        # Whatever happened, nothing acked may be lost.
        srv2 = Server(data)
        try:
            check_history(srv2.port, "fi:a", acked, "enospc-meta")
            srv2.stop()
        finally:
            srv2.kill()
        if broken:
            lines = log.splitlines()
            raise Failure(f"{broken}. (Nothing was lost: a restart holds exactly the acked.) Log, first lines:\n"
                          + "\n".join(lines[:4]) + f"\n... ({len(lines)} lines)")
        print(f"fault-inject: enospc-meta: {injected[0]}: {outcome}; restart holds exactly the acked")
    finally:
        srv.kill()
        shutil.rmtree(root, ignore_errors=True)

RUN = {
    "sync-call": case_sync_call,
    "eio-sync": case_eio_sync,
    "enospc-data": lambda: enospc_case("enospc-data", "pwrite64,pwritev,writev", "pwrite64,pwritev,writev:error=ENOSPC"),
    "enospc-sync": lambda: enospc_case("enospc-sync", "fdatasync,fsync",
                                       f"{SYNC['call'] or 'fdatasync'}:error=ENOSPC"),
    "enospc-meta": case_enospc_meta,
}

failed = []
for name in CASES:
    t = time.time()
    try:
        RUN[name]()
        print(f"fault-inject: ok {name} ({time.time() - t:.1f}s)")
    except Failure as e:
        print(f"fault-inject: FAIL {name}: {e}")
        failed.append(name)
    except Exception as e:  # a client error is a failure of the case, not of the script
        print(f"fault-inject: FAIL {name}: {type(e).__name__}: {e}")
        failed.append(name)
    sys.stdout.flush()
if failed:
    print(f"fault-inject: failed: {' '.join(failed)}")
    sys.exit(1)
