"""Interop over TLS: roostd serving wss:// and https:// to clients nobody here wrote.

Python's ``ssl`` module (OpenSSL) does the TLS, ``websockets`` the WebSocket
and ``urllib`` the HTTP API, trusting exactly the self-signed certificate
that ``roostd cert`` wrote (an ``ssl`` context with ``cafile``), as a LAN
deployment would. Covered: both ways of passing the token, pub/sub, resume
with since + epoch, the HTTP API, an untrusted client failing the handshake,
plain ws:// and http:// to the TLS port getting no HTTP answer, and SIGHUP
swapping the certificate for new connections while old ones keep going.

The binary comes from $ROOSTD_BIN (default: target/debug/roostd under the
repository root). Run with ``tests/interop/run.sh``.
"""

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage

import roostd_server
from roostd_server import TIMEOUT, binary

SECRET = "interop-tls-secret-0123456789abcdef-0123456789"  # >= 32 bytes


# --------------------------------------------------------------- certificates


def make_cert(folder, stem="cert"):
    """`roostd cert --name localhost --ip 127.0.0.1`; returns (cert, key, fingerprint)."""
    cert, key = Path(folder) / f"{stem}.pem", Path(folder) / f"{stem}-key.pem"
    out = subprocess.run(
        [binary(), "cert", "--name", "localhost", "--ip", "127.0.0.1", "--cert", str(cert), "--key", str(key)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    fingerprint = out.stdout.strip()
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", fingerprint), out.stdout
    assert (key.stat().st_mode & 0o777) == 0o600, oct(key.stat().st_mode)
    return cert, key, fingerprint


def fingerprint_of_der(der):
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def trusting(cafile):
    """A client context that trusts exactly this certificate (and checks the host name)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    return ctx


# --------------------------------------------------------------- the server


class Server(roostd_server.Server):
    """One roostd process on 127.0.0.1 with a port the OS picked, serving TLS."""

    def __init__(self, cert, key, *extra_args):
        super().__init__(
            "--tls-cert", cert, "--tls-key", key, *extra_args, env_secret=SECRET, prefix="roostd-tls-interop-"
        )
        # The startup line says TLS (it is logged before the ready file is written).
        self.wait_log(r"listening on .*TLS\)")

    def url(self, scheme="wss", path="/ws"):
        return self.url_for(scheme, path)

@pytest.fixture(scope="module")
def certs():
    with tempfile.TemporaryDirectory(prefix="roostd-tls-certs-") as d:
        yield make_cert(d)


@pytest.fixture(scope="module")
def server(certs):
    cert, key, _ = certs
    s = Server(cert, key)
    yield s
    code = s.stop()
    assert code == 0, "roostd did not stop cleanly on SIGTERM:\n" + "\n".join(s.log)
    assert not any("eyJ" in line for line in s.log), "a token was logged"


@pytest.fixture(scope="module")
def ctx(certs):
    return trusting(certs[0])


# --------------------------------------------------------------- helpers


def token(sub="alice", read=("*",), write=("*",), ttl=3600, api=False):
    now = int(time.time())
    claims = {"sub": sub, "iat": now, "exp": now + ttl, "read": list(read), "write": list(write)}
    if api:
        claims["api"] = True  # the main application's own token: only these may use /api/
    return jwt.encode(claims, SECRET)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def open_wss(server, context, tok=None, **kw):
    url = server.url() if tok is None else f"{server.url()}?token={tok}"
    # proxy=None: never route a loopback test through an environment proxy.
    return connect(url, ssl=context, open_timeout=TIMEOUT, proxy=None, **kw)


def peer_fingerprint(ws):
    return fingerprint_of_der(ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True))


async def send(ws, **frame):
    await ws.send(json.dumps(frame))


async def recv(ws, timeout=TIMEOUT):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_op(ws, op, timeout=TIMEOUT):
    frame = await recv(ws, timeout)
    assert frame["op"] == op, frame
    return frame


async def subscribe(ws, ch, **extra):
    await send(ws, op="sub", ch=ch, id="s", **extra)
    ok = await recv_op(ws, "subok")
    assert ok["ch"] == ch, ok
    return ok


async def publish(ws, ch, data, id):
    """Publishes and returns the ack (a msg for our own subscription may come first)."""
    await send(ws, op="pub", ch=ch, data=data, id=id)
    while True:
        frame = await recv(ws)
        if frame["op"] == "ack":
            assert frame["id"] == id, frame
            return frame
        assert frame["op"] == "msg", frame


def https(server, context, method, path, tok=None, body=None):
    """One HTTP API request over https with urllib; returns (status, parsed JSON or text)."""
    headers = {}
    if tok:
        headers["Authorization"] = f"Bearer {tok}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(server.url("https", path), data=data, headers=headers, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(req, timeout=TIMEOUT) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def tls_healthz(server, context, server_hostname=None):
    """GET /healthz over a bare ssl socket; returns (status line, peer fingerprint)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname or "127.0.0.1") as s:
            fp = fingerprint_of_der(s.getpeercert(binary_form=True))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
            return answer.split(b"\r\n", 1)[0].decode(), fp


# --------------------------------------------------------------- connecting


def test_cert_fingerprint_matches_what_clients_see(server, ctx, certs):
    status, fp = tls_healthz(server, ctx)
    assert status == "HTTP/1.1 200 OK"
    assert fp == certs[2]
    # The certificate names localhost too.
    assert tls_healthz(server, ctx, server_hostname="localhost") == ("HTTP/1.1 200 OK", certs[2])


def test_tls_versions_and_alpn(server, certs):
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:
        ctx13 = trusting(certs[0])
        ctx13.set_alpn_protocols(["h2", "http/1.1"])
        with ctx13.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.version() == "TLSv1.3"
            assert s.selected_alpn_protocol() == "http/1.1"  # never h2
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        c = trusting(certs[0])
        c.minimum_version = c.maximum_version = version
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:
            with c.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                assert s.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]


def test_token_in_url_and_as_subprotocol(server, ctx, certs):
    async def go():
        async with open_wss(server, ctx, token(sub="url")) as a:
            assert peer_fingerprint(a) == certs[2]
            await subscribe(a, "room:tls")
            tok = token(sub="subproto")
            async with open_wss(server, ctx, subprotocols=["roost.v1", "roost.token." + tok]) as b:
                assert b.subprotocol == "roost.v1"
                ack = await publish(b, "room:tls", {"via": "subprotocol"}, "p1")
                msg = await recv_op(a, "msg")
                assert (msg["seq"], msg["from"], msg["data"]) == (ack["seq"], "subproto", {"via": "subprotocol"})
                # And the other way round.
                await subscribe(b, "room:tls")
                ack = await publish(a, "room:tls", "hi", "p2")
                msg = await recv_op(b, "msg")
                assert (msg["seq"], msg["from"], msg["data"]) == (ack["seq"], "url", "hi")

    run(go())


def test_pub_sub_between_clients(server, ctx):
    ch = "room:many"

    async def go():
        async with contextlib.AsyncExitStack() as stack:
            bob = await stack.enter_async_context(open_wss(server, ctx, token(sub="bob")))
            subs = [await stack.enter_async_context(open_wss(server, ctx, token(sub=f"s{i}"))) for i in range(5)]
            for s in subs:
                await subscribe(s, ch)
            # Up to 12 KB: several TLS records per message.
            payloads = [{"n": i, "text": "ü ✓ " + "x" * (i * 3000)} for i in range(5)]
            seqs = [(await publish(bob, ch, data, f"m{i}"))["seq"] for i, data in enumerate(payloads)]
            assert seqs == [1, 2, 3, 4, 5]
            for s in subs:
                got = [await recv_op(s, "msg") for _ in payloads]
                assert [(m["seq"], m["data"]) for m in got] == list(zip(seqs, payloads))

    run(go())


def test_resume_with_since_and_epoch_after_reconnect(server, ctx):
    ch = "room:resume-tls"

    async def go():
        async with open_wss(server, ctx, token(sub="bob")) as bob:
            async with open_wss(server, ctx, token(sub="alice")) as alice:
                epoch = (await subscribe(alice, ch))["epoch"]
                for i in range(2):
                    await publish(bob, ch, {"i": i}, f"r{i}")
                last = [(await recv_op(alice, "msg"))["seq"] for _ in range(2)][-1]
                assert last == 2
            # Alice is gone; bob goes on.
            for i in range(2, 6):
                await publish(bob, ch, {"i": i}, f"r{i}")
            async with open_wss(server, ctx, token(sub="alice")) as again:
                ok = await subscribe(again, ch, since=last, epoch=epoch)
                assert ok["seq"] == 6 and ok["epoch"] == epoch and "gap" not in ok
                assert [(await recv_op(again, "msg"))["data"]["i"] for _ in range(4)] == [2, 3, 4, 5]
                await publish(bob, ch, {"i": 6}, "r6")
                live = await recv_op(again, "msg")
                assert (live["seq"], live["data"]) == (7, {"i": 6})
                with pytest.raises(asyncio.TimeoutError):
                    await recv(again, timeout=0.3)  # nothing twice

    run(go())


def test_http_api_over_https(server, ctx):
    app = token(sub="app", api=True)
    ch = "orders:tls"

    async def go():
        async with open_wss(server, ctx, token(sub="watcher", write=())) as w:
            await subscribe(w, ch)
            loop = asyncio.get_running_loop()
            status, body = await loop.run_in_executor(
                None, lambda: https(server, ctx, "POST", f"/api/channels/{ch}/messages", app, {"text": "shipped"})
            )
            assert status == 201, body
            assert (body["ch"], body["seq"]) == (ch, 1)
            msg = await recv_op(w, "msg")
            assert (msg["seq"], msg["from"], msg["data"]) == (1, "app", {"text": "shipped"})

    run(go())
    status, body = https(server, ctx, "GET", f"/api/channels/{ch}/messages?since=0", app)
    assert status == 200, body
    assert [(m["seq"], m["data"]) for m in body["msgs"]] == [(1, {"text": "shipped"})] and body["more"] is False
    assert https(server, ctx, "GET", f"/api/channels/{ch}/messages") == (401, {"error": "token_missing"})
    # A client token (no "api": true) is for the WebSocket only.
    client = token(sub="watcher")
    assert https(server, ctx, "GET", f"/api/channels/{ch}/messages", client) == (403, {"error": "api_forbidden"})
    assert https(server, ctx, "GET", "/healthz") == (200, "ok")


# --------------------------------------------------------------- refusals


def test_untrusted_client_fails_the_handshake(server, ctx):
    # The system's authorities do not know a self-signed certificate.
    untrusted = ssl.create_default_context()

    async def go():
        with pytest.raises(ssl.SSLCertVerificationError):
            async with open_wss(server, untrusted, token()):
                pass
        # Trusted certificate, but a name it was not made for.
        with pytest.raises(ssl.SSLCertVerificationError):
            async with open_wss(server, ctx, token(), server_hostname="other.example"):
                pass

    run(go())
    with pytest.raises(urllib.error.URLError) as info:
        https(server, untrusted, "GET", "/healthz")
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError), info.value
    # The server is unharmed.
    assert tls_healthz(server, ctx)[0] == "HTTP/1.1 200 OK"


def raw_exchange(port, data):
    """Sends bytes over plain TCP; returns everything read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(data)
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def test_plain_ws_and_http_to_the_tls_port_get_no_http_answer(server, ctx):
    tok = token()

    # A plain WebSocket client: no HTTP answer, so no handshake.
    async def plain_ws():
        with pytest.raises(InvalidMessage):  # "did not receive a valid HTTP response"
            async with connect(f"ws://127.0.0.1:{server.port}/ws?token={tok}", open_timeout=TIMEOUT, proxy=None):
                pass

    run(plain_ws())
    # A plain HTTP client: what comes back is not HTTP (at most a TLS alert).
    with pytest.raises((http.client.HTTPException, urllib.error.URLError, ConnectionError)) as info:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        opener.open(server.url("http", "/healthz"), timeout=TIMEOUT).read()
    assert not isinstance(info.value, urllib.error.HTTPError), info.value
    for request in [
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        f"GET /ws?token={tok} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode(),
    ]:
        answer = raw_exchange(server.port, request)
        assert b"HTTP/" not in answer, answer
        assert answer == b"" or answer[0] == 0x15, f"only a TLS alert may come back: {answer!r}"

    # TLS clients are still served.
    async def tls_client():
        async with open_wss(server, ctx, token()) as ws:
            await subscribe(ws, "after-plain")
            await publish(ws, "after-plain", 1, "a")

    run(tls_client())
    assert tls_healthz(server, ctx)[0] == "HTTP/1.1 200 OK"


# --------------------------------------------------------------- SIGHUP


def test_sighup_swaps_the_certificate_for_new_connections():
    with tempfile.TemporaryDirectory(prefix="roostd-tls-reload-") as d:
        cert, key, old_fp = make_cert(d)
        s = Server(cert, key)
        try:

            async def go():
                old_ctx = trusting(cert)  # reads the file now, before it is replaced
                async with open_wss(s, old_ctx, token(sub="before")) as before:
                    assert peer_fingerprint(before) == old_fp
                    await subscribe(before, "reload")

                    # A new certificate in the same files, as a renewal would.
                    new_cert, new_key, new_fp = make_cert(d, "next")
                    assert new_fp != old_fp
                    new_ctx = trusting(new_cert)
                    os.replace(new_key, key)
                    os.replace(new_cert, cert)
                    s.proc.send_signal(signal.SIGHUP)
                    line = s.wait_log(r"SIGHUP: reloaded")
                    assert new_fp in line, line

                    # New connections get the new certificate...
                    async with open_wss(s, new_ctx, token(sub="after")) as after:
                        assert peer_fingerprint(after) == new_fp
                        # ... while the old one keeps its session and works both ways.
                        ack = await publish(after, "reload", "to-before", "n1")
                        msg = await recv_op(before, "msg")
                        assert (msg["seq"], msg["from"], msg["data"]) == (ack["seq"], "after", "to-before")
                        await subscribe(after, "reload")
                        ack = await publish(before, "reload", "to-after", "o1")
                        msg = await recv_op(after, "msg")
                        assert (msg["seq"], msg["from"], msg["data"]) == (ack["seq"], "before", "to-after")
                        assert peer_fingerprint(before) == old_fp
                    # A client trusting only the old certificate can no longer connect.
                    with pytest.raises(ssl.SSLCertVerificationError):
                        async with open_wss(s, old_ctx, token()):
                            pass

                    # A broken file on the next SIGHUP keeps the certificate in use.
                    Path(cert).write_text("not a certificate\n")
                    s.proc.send_signal(signal.SIGHUP)
                    s.wait_log(r"SIGHUP: kept the old certificate")
                    async with open_wss(s, new_ctx, token()) as third:
                        assert peer_fingerprint(third) == new_fp
                    # The first connection still works after both reloads.
                    await publish(before, "reload", "still here", "o2")

            run(go())
        finally:
            code = s.stop()
        assert code == 0, "\n".join(s.log)
