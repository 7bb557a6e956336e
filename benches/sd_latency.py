#!/usr/bin/env python3
"""SD-card latency: roostd with every fdatasync made slow, as on an SD card.

    python3 benches/sd_latency.py [--bin target/release/roostd] [--seconds 10]
                                  [--delays 0,10,30] [--publishers 1,50] [--runs 3]

For each fsync delay D (milliseconds) roostd runs under
`strace -f --seccomp-bpf -e inject=fdatasync:delay_exit=D` (fsync too):
only the thread that flushes, roostd's writer thread, waits D after each
flush, as a card that takes D to make a write durable. For each number
of publishers P (each its own connection and channel, one publish in
flight: send, wait for the ack, send again), for --seconds seconds:

  acks/s        acked publishes per second, all publishers together
  p50, p99      publish -> ack latency
  probe p99     the event loop's answer time meanwhile: a separate client
                sends `hist` (limit 1) every 10 ms and times each answer;
                the loop never waits for the disk, so this stays small
                however slow the flushes are (goal: < 5 ms at 30 ms)

Prints a Markdown table (the one in docs/benchmarks.md). Loopback only.
Needs strace >= 5.3 (--seccomp-bpf: other syscalls are not stopped, so
the tracing itself costs the event loop nothing).

Model and its limit: LMDB makes a commit durable with fdatasync on the
data file, then writes the meta page through an O_DSYNC descriptor; only
the fdatasync is delayed here. A card on which both cost D makes each
commit ~2D: read the 30 ms rows as "a commit takes 30-60 ms".
"""
import argparse, base64, hashlib, hmac, json, os, selectors, shutil, socket, struct, subprocess, sys, tempfile, time

SECRET = "sd-latency-bench-secret-0123456789abcdef"


def token():
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "bench", "exp": int(time.time()) + 3600, "read": ["*"], "write": ["*"]}).encode())
    sig = b64(hmac.new(SECRET.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


class Ws:
    """Non-blocking after the handshake; feeds whole text frames to on_msg."""

    def __init__(self, port, tok):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET /ws?token={tok} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.s.recv(4096)
        head, self.buf = head.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.s.setblocking(False)

    def send(self, obj):
        data = json.dumps(obj).encode()
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        self.s.setblocking(True)
        self.s.sendall(head + b"\0\0\0\0" + data)  # a zero mask: XOR is a no-op
        self.s.setblocking(False)

    def frames(self):
        try:
            chunk = self.s.recv(65536)
        except BlockingIOError:
            return []
        if not chunk:
            raise ConnectionError("closed")
        self.buf += chunk
        out = []
        while len(self.buf) >= 2:
            n, at = self.buf[1] & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    break
                n, at = struct.unpack(">H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    break
                n, at = struct.unpack(">Q", self.buf[2:10])[0], 10
            if len(self.buf) < at + n:
                break
            op, payload, self.buf = self.buf[0] & 0x0F, self.buf[at:at + n], self.buf[at + n:]
            if op == 0x1:
                out.append(json.loads(payload))
        return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")


def measure(port, publishers, seconds):
    tok = token()
    sel = selectors.DefaultSelector()
    pubs = [Ws(port, tok) for _ in range(publishers)]
    probe = Ws(port, tok)
    probe.send({"op": "pub", "ch": "probe", "data": 0, "id": "seed"})
    sent_at, lat, acks, probe_lat = {}, [], 0, []
    for i, ws in enumerate(pubs):
        sel.register(ws.s, selectors.EVENT_READ, i)
    sel.register(probe.s, selectors.EVENT_READ, "probe")
    n = 0

    def publish(i):
        nonlocal n
        n += 1
        sent_at[i] = time.perf_counter()
        pubs[i].send({"op": "pub", "ch": f"sd:{i}", "data": {"n": n, "pad": "x" * 100}, "id": n})

    for i in range(publishers):
        publish(i)
    start = time.perf_counter()
    end = start + seconds
    next_probe, probe_sent = start + 0.01, None
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if probe_sent is None and now >= next_probe:
            probe_sent = now
            probe.send({"op": "hist", "ch": "probe", "limit": 1, "id": "p"})
        wake = next_probe if probe_sent is None else end
        for key, _ in sel.select(max(0.0, min(end, wake) - now)):
            ws = probe if key.data == "probe" else pubs[key.data]
            for m in ws.frames():
                t = time.perf_counter()
                if key.data == "probe":
                    if m.get("op") == "hist":
                        probe_lat.append(t - probe_sent)
                        probe_sent, next_probe = None, t + 0.01
                elif m.get("op") == "ack":
                    lat.append(t - sent_at[key.data])
                    acks += 1
                    publish(key.data)
                elif m.get("op") == "err":
                    sys.exit(f"publish refused: {m}")
    took = time.perf_counter() - start
    for ws in pubs + [probe]:
        ws.s.close()
    ms = lambda x: x * 1000
    return {"acks_per_s": acks / took, "p50": ms(pct(lat, 50)), "p99": ms(pct(lat, 99)),
            "probe_p50": ms(pct(probe_lat, 50)), "probe_p99": ms(pct(probe_lat, 99)), "probes": len(probe_lat),
            "acks": acks}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def serve(binary, delay_ms, data):
    port = free_port()
    cmd = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data", data, "--publish-rate", "0"]
    if delay_ms > 0:
        us = delay_ms * 1000
        cmd = ["strace", "-f", "--seccomp-bpf", "-o", "/dev/null", "-e", "trace=fdatasync,fsync",
               "-e", f"inject=fdatasync:delay_exit={us}", "-e", f"inject=fsync:delay_exit={us}"] + cmd
    env = dict(os.environ, ROOSTD_SECRET=SECRET, RUST_LOG="warn")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"roostd exited: {proc.stderr.read().decode()}")
            time.sleep(0.05)
    sys.exit("roostd did not listen within 10 s")


def stop(proc, traced):
    """SIGTERM to roostd itself: under strace, that is strace's child."""
    pid = proc.pid
    if traced:
        children = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
        pid = int(children[0]) if children else proc.pid
    os.kill(pid, 15)
    proc.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release/roostd")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--delays", default="0,10,30")
    ap.add_argument("--publishers", default="1,50")
    ap.add_argument("--runs", type=int, default=3, help="runs per cell; the table gives each figure's median")
    a = ap.parse_args()
    if not shutil.which("strace"):
        sys.exit("strace is missing: apt-get install strace")
    rows = []
    for d in [int(x) for x in a.delays.split(",")]:
        for p in [int(x) for x in a.publishers.split(",")]:
            runs = []
            for _ in range(a.runs):
                with tempfile.TemporaryDirectory(prefix="sd-latency.") as data:
                    proc, port = serve(a.bin, d, data)
                    try:
                        r = measure(port, p, a.seconds)
                    finally:
                        stop(proc, d > 0)
                runs.append(r)
                print(f"fsync +{d} ms, {p} publishers: {r['acks_per_s']:.0f} acks/s, p50 {r['p50']:.1f} ms, "
                      f"p99 {r['p99']:.1f} ms, probe p50 {r['probe_p50']:.2f} p99 {r['probe_p99']:.2f} ms ({r['probes']} probes)",
                      file=sys.stderr)
            rows.append((d, p, {k: sorted(x[k] for x in runs)[len(runs) // 2] for k in runs[0]}))
    print("| fsync delay | publishers | acks/s | publish→ack p50 | p99 | probe (`hist`) p50 | probe p99 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for d, p, r in rows:
        print(f"| {d} ms | {p} | {r['acks_per_s']:.0f} | {r['p50']:.1f} ms | {r['p99']:.1f} ms "
              f"| {r['probe_p50']:.2f} ms | {r['probe_p99']:.2f} ms |")


if __name__ == "__main__":
    main()
