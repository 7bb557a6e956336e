"""Instructions (valgrind callgrind, Ir) the release server spends per fan-out
delivery to Pusher subscribers (/app/KEY?protocol=7) and to native ones
(/ws?token=), in one run with one binary: a count that does not depend on what
else runs on the machine. Plain Python, no packages.

    python3 benches/pusher_callgrind.py [ROOSTD] [--subs 500] [--short 20] [--long 100] [--sockudo BIN]

For each protocol, twice on a fresh server and store under callgrind: N
subscribers of one public channel, then P events published one after another
through the Pusher HTTP API (signed as the Pusher libraries sign), each
answered after its commit; the generator reads every delivery. Only that
window is counted (callgrind_control zeroes the counters before the first
publish and dumps them after the last delivery). What the window holds besides
the deliveries costs the same in the short run (P = --short) and the long one
(P = --long), so (Ir long - Ir short) / (deliveries long - deliveries short)
is the cost of one delivery, with 1/N of one publish
(the same publish path for both protocols, so the difference between the
columns is the delivery alone).

--sockudo BIN adds a third row: the same Pusher run against Sockudo (a
Pusher-compatible Rust server, built locally; never part of this tree), set
up through its environment (loopback only, memory adapter, no metrics, no
rate limits, the same app id, key and secret). Its count is the whole
process: it never takes callgrind_control's requests here, and its background
timers tick with wall time, so its figure varies from run to run.

Environment: OUT (a new /tmp/roostd-pcg.XXXXXX) keeps callgrind.out.*; PORT
(18950)."""
import base64, hashlib, hmac, http.client, json, os, selectors, signal, socket, struct
import subprocess, sys, tempfile, time

args = sys.argv[1:]
def opt(name, default):
    if name in args:
        i = args.index(name)
        v = args[i + 1]
        del args[i:i + 2]
        return int(v)
    return default
SUBS, SHORT, LONG = opt("--subs", 500), opt("--short", 20), opt("--long", 100)
SOCKUDO = None
if "--sockudo" in args:
    i = args.index("--sockudo")
    SOCKUDO = os.path.abspath(args[i + 1])
    del args[i:i + 2]
BIN = os.path.abspath(args[0] if args else "target/release/roostd")
PORT = int(os.environ.get("PORT", "18950"))
OUT = os.environ.get("OUT") or tempfile.mkdtemp(prefix="roostd-pcg.")
SECRET = "pusher-callgrind-secret-0123456789abcdef0123"  # the Pusher secret too (its default)
APP_ID, KEY, CH = "1", "bench-key", "bench"
ENV = {**os.environ, "ROOSTD_SECRET": SECRET}
os.makedirs(OUT, exist_ok=True)


def handshake(path):
    s = socket.create_connection(("127.0.0.1", PORT), timeout=120)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    return s


def frame(text):
    p, mask = text.encode(), os.urandom(4)
    head = bytes([0x81, 0x80 | len(p)]) if len(p) < 126 else bytes([0x81, 0xFE]) + struct.pack(">H", len(p))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(p))


class Reader:
    """Counts the server's text frames that contain `needle` on every socket
    (after the HTTP head), without decoding JSON: the generator stays cheap."""

    def __init__(self, socks):
        self.sel = selectors.DefaultSelector()
        self.buf = {}
        for s in socks:
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ)
            self.buf[s] = b""
        self.head_done = {s: False for s in socks}

    def read_until(self, needle, per_socket, timeout=600):
        """Reads until each socket saw `per_socket` frames holding `needle`; returns the total."""
        seen = {s: 0 for s in self.buf}
        left = len(seen)
        end = time.time() + timeout
        while left:
            if time.time() > end:
                raise SystemExit(f"timed out: {sum(seen.values())} of {per_socket * len(seen)} '{needle.decode()}' frames")
            for k, _ in self.sel.select(1):
                s = k.fileobj
                d = s.recv(1 << 16)
                if not d:
                    raise SystemExit("the server closed a subscriber")
                b = self.buf[s] + d
                if not self.head_done[s]:
                    if b"\r\n\r\n" not in b:
                        self.buf[s] = b
                        continue
                    head, b = b.split(b"\r\n\r\n", 1)
                    assert head.startswith(b"HTTP/1.1 101"), head[:80]
                    self.head_done[s] = True
                while len(b) >= 2:
                    n, off = b[1] & 0x7F, 2
                    if n == 126:
                        if len(b) < 4: break
                        n, off = struct.unpack(">H", b[2:4])[0], 4
                    elif n == 127:
                        if len(b) < 10: break
                        n, off = struct.unpack(">Q", b[2:10])[0], 10
                    if len(b) < off + n: break
                    if b[0] & 0x0F == 8:
                        raise SystemExit(f"a subscriber was closed: {b[off:off + n]!r}")
                    if needle in b[off:off + n] and seen[s] < per_socket:
                        seen[s] += 1
                        if seen[s] == per_socket:
                            left -= 1
                    b = b[off + n:]
                self.buf[s] = b
        return sum(seen.values())


def publish(i):
    """POST /apps/1/events, signed like the Pusher libraries; waits for the answer (after the commit)."""
    body = json.dumps({"name": "tick", "data": json.dumps({"text": f"hello {i:06d}"}), "channels": [CH]})
    path = f"/apps/{APP_ID}/events"
    q = f"auth_key={KEY}&auth_timestamp={int(time.time())}&auth_version=1.0&body_md5={hashlib.md5(body.encode()).hexdigest()}"
    sig = hmac.new(SECRET.encode(), f"POST\n{path}\n{q}".encode(), hashlib.sha256).hexdigest()
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    c.request("POST", f"{path}?{q}&auth_signature={sig}", body, {"Content-Type": "application/json", "Connection": "close"})
    r = c.getresponse()
    assert r.status == 200, (r.status, r.read())
    r.read()
    c.close()


def dump(pid, path):
    """Dumps callgrind's counters to `path`. An idle server (every thread
    blocked in a syscall) only takes the request when it wakes up, so it is
    poked with a GET / until the dump is there; the pokes cost the same in
    the short and the long run."""
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    for _ in range(300):
        if os.path.exists(path):
            time.sleep(0.5)  # written completely
            return
        try:
            with socket.create_connection(("127.0.0.1", PORT), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                s.recv(4096)
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"callgrind did not dump to {path}")


def run(kind, publishes):
    name = f"{kind}-{publishes}"
    data = os.path.join(OUT, f"data-{name}")
    ready = os.path.join(OUT, f"{name}.ready")
    if kind == "sockudo":
        token = None
        env = {**ENV, "HOST": "127.0.0.1", "PORT": str(PORT), "METRICS_ENABLED": "false",
               "ADAPTER_DRIVER": "local", "RATE_LIMITER_ENABLED": "false", "DEBUG": "false",
               "SOCKUDO_DEFAULT_APP_ID": APP_ID, "SOCKUDO_DEFAULT_APP_KEY": KEY,
               "SOCKUDO_DEFAULT_APP_SECRET": SECRET, "SOCKUDO_DEFAULT_APP_ENABLED": "true",
               "SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS": "4000",
               "SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND": "100000"}
        cmd = [SOCKUDO]
    else:
        token = subprocess.run([BIN, "token", "--data", data, "--sub", "bench", "--read", CH], env=ENV,
                               capture_output=True, text=True, check=True).stdout.strip()
        env = ENV
        cmd = [BIN, "serve", "--listen", f"127.0.0.1:{PORT}", "--data", data, "--no-demo", "--ready-file", ready,
               "--max-connections", "4000", "--max-connections-per-ip", "4000",
               "--pusher-app-id", APP_ID, "--pusher-key", KEY, "--pusher-public", CH]
    log = open(os.path.join(OUT, f"{name}.server.log"), "w")
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={OUT}/callgrind.out.{name}", *cmd],
        env=env, stdout=log, stderr=log, cwd=OUT)
    try:
        for _ in range(1200):
            if kind == "sockudo":
                try:
                    socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
                    break
                except OSError:
                    pass
            elif os.path.exists(ready) and open(ready).read().strip():
                break
            if server.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited: see {log.name}")
            time.sleep(0.1)
        path = f"/ws?token={token}" if kind == "native" else f"/app/{KEY}?protocol=7&client=bench&version=0"
        socks = [handshake(path) for _ in range(SUBS)]
        reader = Reader(socks)
        if kind != "native":
            reader.read_until(b"connection_established", 1)
            sub = frame(json.dumps({"event": "pusher:subscribe", "data": {"channel": CH}}))
            ok = b"subscription_succeeded"
        else:
            sub = frame(json.dumps({"op": "sub", "ch": CH}))
            ok = b'"subok"'
        for s in socks:
            s.setblocking(True)
            s.sendall(sub)
            s.setblocking(False)
        reader.read_until(ok, 1)
        # Count only the publishing window: start-up, the upgrades and a
        # server's shutdown (Sockudo's waits 10 s, its timers ticking) stay out.
        # Sockudo never takes callgrind_control's requests here (it counts
        # whole: start-up, shutdown and its timers, which tick with wall time).
        windowed = kind != "sockudo"
        if windowed:
            subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True)
        for i in range(publishes):
            publish(i)
        delivered = reader.read_until(b"hello 0", publishes)
        if windowed:
            dump(server.pid, f"{OUT}/callgrind.out.{name}.1")
        for s in socks:
            s.close()
    finally:
        # SIGTERM (roostd stops cleanly); a server that ignores it gets SIGINT.
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.send_signal(signal.SIGINT)
            server.wait()
    subprocess.run(["rm", "-rf", data])
    with open(f"{OUT}/callgrind.out.{name}" + (".1" if windowed else "")) as f:  # .1: the window's dump
        ir = next(int(l.split()[1]) for l in f if l.startswith(("summary:", "totals:")))
    return ir, delivered


print(f"binary {BIN}; {SUBS} subscribers of one channel; {SHORT} and {LONG} publishes; out {OUT}")
print("protocol\tIr_short\tdeliveries_short\tIr_long\tdeliveries_long\tIr_per_delivery")
for kind in ("native", "pusher") + (("sockudo",) if SOCKUDO else ()):
    ir1, d1 = run(kind, SHORT)
    ir2, d2 = run(kind, LONG)
    print(f"{kind}\t{ir1}\t{d1}\t{ir2}\t{d2}\t{(ir2 - ir1) / (d2 - d1):.1f}", flush=True)
