"""The real roostd binary on 127.0.0.1, tokens, and a raw WebSocket client:
the one Python harness of the interop suite and the .ci scripts.

Port 0; the address is read from the file the server writes once it listens
(`--ready-file`). stderr is read for the whole life of the server (a full
pipe would block its logging). The binary comes from $ROOSTD_BIN (default:
target/debug/roostd). Standard library only, so .ci scripts can use it with
a bare python3; under pytest a start failure is a test failure.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

try:
    import pytest
except ImportError:  # a .ci script with a bare python3
    pytest = None

ROOT = Path(__file__).resolve().parents[2]
SECRET = "interop-secret-0123456789abcdef-0123456789"  # >= 32 bytes
TIMEOUT = 5.0
SMALL = os.environ.get("ROOSTD_TEST_SCALE") == "small"
# Under qemu (ROOSTD_TEST_SCALE=small) everything is ten times slower.
START_TIMEOUT = 120 if SMALL else 20


class StartError(RuntimeError):
    """The server did not start (outside pytest)."""


def fail(message):
    if pytest is not None:
        pytest.fail(message)
    raise StartError(message)


def binary():
    path = os.environ.get("ROOSTD_BIN") or str(ROOT / "target" / "debug" / "roostd")
    if not Path(path).exists():
        fail(f"no server binary at {path}: run `cargo build` or set ROOSTD_BIN")
    return path


class Server:
    """One roostd process; `extra_args` go after `serve`'s own, `env` is
    added to the environment; `data` reuses a data folder (a restart)."""

    def __init__(self, *extra_args, env_secret=SECRET, data=None, env=None, prefix="roostd-interop-"):
        self.tmp = tempfile.TemporaryDirectory(prefix=prefix)
        self.data = data = data or str(Path(self.tmp.name) / "data")
        ready = Path(self.tmp.name) / "ready"
        full_env = dict(os.environ, RUST_LOG="info")
        full_env.pop("ROOSTD_SECRET", None)
        if env_secret is not None:
            full_env["ROOSTD_SECRET"] = env_secret
        full_env.update(env or {})
        args = ["--listen", "127.0.0.1:0", "--data", data, "--ready-file", str(ready)]
        self.proc = subprocess.Popen(
            [binary(), "serve", *args, *[str(a) for a in extra_args]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.log = []

        def pump():
            for line in self.proc.stderr:
                self.log.append(line.rstrip("\n"))

        self.reader = threading.Thread(target=pump, daemon=True)
        self.reader.start()
        self.port = None
        deadline = time.monotonic() + START_TIMEOUT
        while self.port is None and self.proc.poll() is None and time.monotonic() < deadline:
            try:
                self.port = int(ready.read_text().rsplit(":", 1)[1])
            except (FileNotFoundError, IndexError, ValueError):
                time.sleep(0.02)
        if self.port is None:
            self.stop()
            fail(f"roostd did not start (exit {self.proc.returncode}):\n" + "\n".join(self.log))

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, scheme="wss", path="/ws"):
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def log_text(self):
        """The log so far; all of it once the process has exited."""
        if self.proc.poll() is not None:
            self.reader.join(2)
        return "\n".join(self.log)

    def wait_log(self, pattern, timeout=TIMEOUT):
        """The first log line matching `pattern` (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.log):
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        fail(f"no log line matching {pattern!r}:\n" + self.log_text())

    def wait(self, timeout):
        """The exit code, or None if the process still runs after `timeout` s."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        """SIGKILL if still running (for cleanup)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        """SIGTERM, as an operator would; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait(START_TIMEOUT) is None:
                self.kill()
        self.reader.join(2)
        self.tmp.cleanup()
        return self.proc.returncode


# --------------------------------------------------------------- tokens


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def mint(claims, secret=SECRET):
    """An HS256 JWT, built by hand as any main application could."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = b64url(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def token_all(sub, api=False, secret=SECRET):
    """A token for `sub` that reads and writes every channel for an hour;
    `api`: the main application's token (`"api": true`, for /api/)."""
    claims = {"sub": sub, "exp": int(time.time()) + 3600, "read": ["*"], "write": ["*"]}
    if api:
        claims["api"] = True
    return mint(claims, secret)


# --------------------------------------------------------------- a raw WebSocket client


class Closed(Exception):
    """The server sent a Close (`code`), or the connection ended (code None)."""

    def __init__(self, code, reason=""):
        super().__init__(f"closed with {code} {reason!r}")
        self.code = code
        self.reason = reason


def client_frame(op, payload):
    """One final, masked client frame (RFC 6455 5.2)."""
    m = os.urandom(4)
    n = len(payload)
    if n < 126:
        hdr = bytes([0x80 | op, 0x80 | n])
    elif n < 65536:
        hdr = bytes([0x80 | op, 0x80 | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([0x80 | op, 0x80 | 127]) + struct.pack(">Q", n)
    return hdr + m + bytes(b ^ m[i % 4] for i, b in enumerate(payload))


class RawWS:
    """A blocking WebSocket client over a plain socket: every byte it sends
    is chosen here (several frames in one write, oversize messages), which
    a library client would not allow."""

    def __init__(self, port, token, timeout=TIMEOUT, host="127.0.0.1", refusal_ok=False, path=None):
        """Opens `/ws?token=` (or `path`, e.g. the Pusher door's `/app/KEY`);
        a refusal raises, or with `refusal_ok` leaves `status` and `head`
        (and the body for `rest()`)."""
        self.s = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = path or f"/ws?token={token}"
        self.s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            d = self.s.recv(4096)
            if not d:
                raise Closed(None, "EOF in the handshake")
            self.buf += d
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head.decode("latin-1")
        self.status = int(self.head.split(" ", 2)[1])
        self.queued = []
        if self.status == 101:
            accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
            if f"Sec-WebSocket-Accept: {accept.decode()}" not in self.head:
                raise RuntimeError("a wrong Sec-WebSocket-Accept: " + self.head)
        elif not refusal_ok:
            raise RuntimeError("handshake refused: " + self.head)

    def rest(self):
        """The body of a refusal: `Content-Length` bytes, or up to EOF."""
        m = re.search(r"(?im)^content-length:\s*(\d+)", self.head)
        want = int(m.group(1)) if m else None
        out = self.buf
        while want is None or len(out) < want:
            d = self.s.recv(65536)
            if not d:
                break
            out += d
        self.buf = b""
        return out.decode(errors="replace")

    def send_frame(self, op, payload):
        self.s.sendall(client_frame(op, payload))

    def send(self, obj):
        self.send_frame(1, json.dumps(obj).encode())

    def send_many(self, objs):
        """Several frames in one write, so the server reads them in one turn
        and hands them to the writer together (one batch, one commit)."""
        self.s.sendall(b"".join(client_frame(1, json.dumps(obj).encode()) for obj in objs))

    def _need(self, n):
        while len(self.buf) < n:
            d = self.s.recv(65536)
            if not d:
                raise Closed(None, "EOF without a Close frame")
            self.buf += d

    def read_frame(self):
        """(opcode, payload) of the next server frame; Closed(None) at EOF."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, off = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
        if b1 & 0x80:
            raise RuntimeError("a masked server frame (RFC 6455 5.1 forbids it)")
        self._need(off + n)
        p, self.buf = self.buf[off:off + n], self.buf[off + n:]
        self.fin = bool(b0 & 0x80)
        return b0 & 0x0F, p

    def recv(self):
        """The next text message as JSON (pings answered, fragments joined);
        Closed on a Close."""
        if self.queued:
            return self.queued.pop(0)
        message = b""
        while True:
            op, p = self.read_frame()
            if op in (0, 1):
                message += p
                if self.fin:
                    return json.loads(message)
            elif op == 8:
                code = struct.unpack(">H", p[:2])[0] if len(p) >= 2 else None
                raise Closed(code, p[2:].decode(errors="replace"))
            elif op == 9:
                self.send_frame(10, p)

    def close(self):
        """Sends Close 1000 and hangs up."""
        try:
            self.send_frame(8, struct.pack(">H", 1000))
        finally:
            self.s.close()

    def req(self, obj):
        """Sends `obj` and returns the reply with its `id`; other frames are kept."""
        self.send(obj)
        skipped = []
        while True:
            r = self.recv()
            if r.get("id") == obj.get("id"):
                self.queued.extend(skipped)
                return r
            skipped.append(r)

    def close_code(self, timeout):
        """Reads until the server closes; returns (close code, frames read before)."""
        self.s.settimeout(timeout)
        frames = []
        try:
            while True:
                frames.append(self.recv())
        except Closed as e:
            return e.code, frames
        except (socket.timeout, OSError):
            return "no close", frames
