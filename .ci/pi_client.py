#!/usr/bin/env python3
"""The host's client for .ci/pi-system: talks to roostd in the VM through a
port forwarded on 127.0.0.1, with the standard library only.

    pi_client.py mint SECRET_FILE                  print a token (HS256, 2 h)
    pi_client.py pubsub PORT TOKEN CH N STATE      sub, publish N, get N acks and N msgs
    pi_client.py resume PORT TOKEN CH STATE        sub since the middle: exact replay
    pi_client.py stream PORT TOKEN CH ACKS         publish until the server goes away;
                                                   one "seq id" line per ack, flushed
    pi_client.py check PORT TOKEN CH ACKS...       every acked id is in history at its seq
    pi_client.py idle PORT TOKEN N READY           hold N open subscribed sockets until
                                                   stdin closes; READY gets "open N"

Exits non-zero with a message on any failure.
"""
import base64, hashlib, hmac, json, os, resource, selectors, socket, struct, sys, time


def mint(secret_file):
    secret = open(secret_file, "rb").read().rstrip()
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "pi-system", "exp": int(time.time()) + 7200,
                           "read": ["*"], "write": ["*"]}).encode())
    sig = b64(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


class Ws:
    """RFC 6455 text frames, masked, unfragmented: all this test needs."""

    def __init__(self, port, token, timeout=60):
        self.s = socket.create_connection(("127.0.0.1", int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.s.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed during the handshake: {head!r}")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0] + b" ":
            raise ConnectionError(f"handshake refused: {head.decode(errors='replace')}")

    def _exact(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, obj):
        data = json.dumps(obj).encode()
        mask, n = os.urandom(4), len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        self.s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self):
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload, op = self._exact(n), b0 & 0x0F
            if op == 0x1:
                return json.loads(payload)
            if op == 0x8:
                raise ConnectionError(f"server closed: {payload!r}")
            if op == 0x9:  # ping: answer, or the server drops the idle socket
                self.s.sendall(bytes([0x8A, 0x80 | n]) + b"\0\0\0\0" + payload)

    def poll_control(self):
        """Reads what arrived (a ping is answered by recv); data frames of an
        idle subscriber would be a surprise, and are dropped."""
        self.s.settimeout(0.2)
        try:
            self.recv()
        except socket.timeout:
            pass
        finally:
            self.s.settimeout(120)

    def until(self, pred, what):
        seen = []
        while True:
            m = self.recv()
            if m.get("op") == "err":
                sys.exit(f"waiting for {what}: error {m}")
            if pred(m):
                return m
            seen.append(m)
            if len(seen) > 10000:
                sys.exit(f"no {what} in 10000 messages")


def subscribe(ws, ch, **extra):
    ws.send({"op": "sub", "ch": ch, "id": "s", **extra})
    return ws.until(lambda m: m.get("op") == "subok", "subok")


def pubsub(port, token, ch, n, state):
    ws = Ws(port, token)
    subok = subscribe(ws, ch)
    for i in range(int(n)):
        ws.send({"op": "pub", "ch": ch, "data": {"i": i}, "id": f"p{i}"})
    acks, msgs = {}, {}
    while len(acks) < int(n) or len(msgs) < int(n):
        m = ws.recv()
        if m["op"] == "ack":
            acks[m["id"]] = m["seq"]
        elif m["op"] == "msg":
            msgs[m["seq"]] = m["data"]["i"]
        else:
            sys.exit(f"unexpected {m}")
    for i in range(int(n)):
        assert msgs[acks[f"p{i}"]] == i, (i, acks, msgs)
    last = max(acks.values())
    assert sorted(acks.values()) == list(range(subok["seq"] + 1, last + 1)), acks
    json.dump({"epoch": subok["epoch"], "first": subok["seq"] + 1, "last": last}, open(state, "w"))
    print(f"pubsub: {n} acked and delivered on {ch}, seqs {subok['seq'] + 1}..{last}")


def resume(port, token, ch, state):
    st = json.load(open(state))
    since = (st["first"] + st["last"]) // 2
    ws = Ws(port, token)
    subok = subscribe(ws, ch, since=since, epoch=st["epoch"])
    if subok.get("gap"):
        sys.exit(f"resume since {since}: unexpected gap: {subok}")
    got = [ws.until(lambda m: m.get("op") == "msg", "msg")["seq"] for _ in range(st["last"] - since)]
    if got != list(range(since + 1, st["last"] + 1)):
        sys.exit(f"resume since {since}: got seqs {got}")
    print(f"resume: since {since} replayed {since + 1}..{st['last']}, no gap, no duplicate")


def stream(port, token, ch, acks_path):
    ws = Ws(port, token)
    subscribe(ws, ch)
    out, window, sent, acked = open(acks_path, "w"), 8, 0, 0
    try:
        while True:
            while sent - acked < window:
                ws.send({"op": "pub", "ch": ch, "data": {"k": f"k{sent}"}, "id": f"k{sent}"})
                sent += 1
            m = ws.recv()
            if m["op"] == "ack":
                out.write(f"{m['seq']} {m['id']}\n")
                out.flush()
                acked += 1
    except (ConnectionError, OSError) as e:
        print(f"stream: {acked} acked of {sent} sent, then: {e}")


def history(ws, ch):
    since, out = 0, {}
    while True:
        ws.send({"op": "hist", "ch": ch, "since": since, "limit": 1000, "id": "h"})
        page = ws.until(lambda m: m.get("op") == "hist", "hist")
        for m in page["msgs"]:
            out[m["seq"]] = m["data"]
            since = m["seq"]
        if not page["more"]:
            return out


def check(port, token, ch, *ack_files):
    ws = Ws(port, token)
    hist = history(ws, ch)
    n = 0
    for path in ack_files:
        for line in open(path):
            seq, id_ = line.split()
            if hist.get(int(seq)) != {"k": id_}:
                sys.exit(f"check: acked {id_} at seq {seq} is lost: history has {hist.get(int(seq))}")
            n += 1
    if n == 0:
        sys.exit("check: no acks to check")
    print(f"check: all {n} acked messages are in the history of {ch} ({len(hist)} stored)")


def idle(port, token, n, ready):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, int(n) + 256)), hard))
    socks = []
    for i in range(int(n)):
        ws = Ws(port, token, timeout=120)
        subscribe(ws, f"idle:{i % 10}")
        socks.append(ws)
    open(ready, "w").write(f"open {len(socks)}\n")
    # Idle, but alive: answer the server's pings until stdin closes (epoll:
    # select() stops at descriptor 1024).
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    for ws in socks:
        sel.register(ws.s, selectors.EVENT_READ, ws)
    while True:
        for key, _ in sel.select(5):
            if key.data is None:
                if not sys.stdin.readline():
                    print(f"idle: held {len(socks)} connections")
                    return
            else:
                key.data.poll_control()


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "mint":
        print(mint(*args))
    else:
        {"pubsub": pubsub, "resume": resume, "stream": stream, "check": check, "idle": idle}[cmd](*args)
