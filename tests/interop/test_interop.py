"""Interop: roostd driven by a client nobody here wrote.

Python's `websockets` (the asyncio client) speaks to the real server binary,
and PyJWT mints the tokens exactly as a main application would:
``jwt.encode(claims, secret, "HS256")``. Nothing here shares code with the
server: if these pass, the contract (spec §2 tokens, §3 connecting, §4
messages) holds for an independent implementation.

The binary comes from $ROOSTD_BIN (default: target/debug/roostd under the
repository root). Run with ``tests/interop/run.sh``.
"""

import asyncio
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from roostd_server import ROOT, SECRET, TIMEOUT, Server  # noqa: E402


# --------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    code = s.stop()
    assert code == 0, "roostd did not stop cleanly on SIGTERM:\n" + "\n".join(s.log)
    # The token must never reach the log (spec §2).
    assert not any("eyJ" in line for line in s.log), "a token was logged"


# --------------------------------------------------------------- helpers


def token(sub="alice", read=("*",), write=("*",), ttl=3600, secret=SECRET, headers=None, **claims):
    now = int(time.time())
    body = {"sub": sub, "iat": now, "exp": now + ttl}
    if read is not None:
        body["read"] = list(read)
    if write is not None:
        body["write"] = list(write)
    body.update(claims)
    return jwt.encode(body, secret, "HS256", headers=headers)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def open_ws(server, tok=None, **kw):
    url = server.url if tok is None else f"{server.url}?token={tok}"
    # proxy=None: never route a loopback test through an environment proxy.
    return connect(url, open_timeout=TIMEOUT, proxy=None, **kw)


async def send(ws, **frame):
    await ws.send(json.dumps(frame))


async def recv(ws, timeout=TIMEOUT):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_op(ws, op, timeout=TIMEOUT):
    """The next frame, which must have this op."""
    frame = await recv(ws, timeout)
    assert frame["op"] == op, frame
    return frame


async def refused(server, tok=None, **kw):
    """Connects expecting a refusal; returns (status, JSON body)."""
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(server, tok, **kw):
            pass
    response = info.value.response
    return response.status_code, json.loads(response.body)


async def subscribe(ws, ch, **extra):
    await send(ws, op="sub", ch=ch, id="s", **extra)
    ok = await recv_op(ws, "subok")
    assert ok["ch"] == ch and ok["id"] == "s", ok
    return ok


# --------------------------------------------------------------- tokens


def test_pyjwt_token_is_accepted(server):
    async def go():
        async with open_ws(server, token(sub="pyjwt", read=["room:*"], write=[])) as ws:
            ok = await subscribe(ws, "room:pyjwt")
            assert ok["seq"] == 0 and isinstance(ok["epoch"], str) and "gap" not in ok
            # `read` is honoured: another prefix is forbidden, the socket stays open.
            await send(ws, op="sub", ch="other", id=2)
            err = await recv_op(ws, "err")
            assert (err["code"], err["id"]) == ("forbidden", 2)
            # No `write` claim: no publishing.
            await send(ws, op="pub", ch="room:pyjwt", data=1, id=3)
            assert (await recv_op(ws, "err"))["code"] == "forbidden"

    run(go())


def test_pyjwt_header_variants_are_accepted(server):
    """PyJWT sorts header keys and may add fields; the server must not care
    about order, and a datetime exp is just a number on the wire."""
    import datetime

    exp = datetime.datetime.now(tz=datetime.timezone.utc) + datetime.timedelta(minutes=5)
    variants = [
        jwt.encode({"sub": "a", "exp": exp, "read": ["x"]}, SECRET, "HS256"),
        jwt.encode({"sub": "a", "exp": exp, "read": ["x"]}, SECRET, "HS256", headers={"typ": "JWT"}),
        jwt.encode({"sub": "a", "exp": exp, "read": ["x"]}, SECRET, algorithm="HS256", sort_headers=False),
        token(sub="a", nbf=int(time.time()) - 5, aud="anything"),  # no audience configured: aud ignored
        token(sub="a", exp=time.time() + 60.5),  # a fractional exp
    ]

    async def go():
        for tok in variants:
            async with open_ws(server, tok) as ws:
                await subscribe(ws, "x")

    run(go())


def test_kid_unknown_to_the_server_is_rejected(server):
    tok = token(headers={"kid": "k2"})
    assert jwt.get_unverified_header(tok)["kid"] == "k2"
    assert run(refused(server, tok)) == (401, {"error": "token_invalid"})


@pytest.mark.parametrize(
    "tok",
    [
        pytest.param(lambda: token(secret="another-secret-of-at-least-32-bytes!!"), id="wrong-secret"),
        pytest.param(lambda: jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, SECRET * 2, "HS384"), id="HS384"),
        pytest.param(lambda: jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, None, "none"), id="alg-none"),
        pytest.param(lambda: jwt.encode({"sub": "a"}, SECRET, "HS256"), id="no-exp"),
        pytest.param(lambda: jwt.encode({"exp": int(time.time()) + 60}, SECRET, "HS256"), id="no-sub"),
        pytest.param(lambda: token(headers={"crit": ["exp"]}), id="crit"),
        pytest.param(lambda: token(headers={"typ": "at+jwt"}), id="typ"),
        pytest.param(lambda: token(nbf=int(time.time()) + 3600), id="nbf-future"),
    ],
)
def test_bad_tokens_are_refused_as_invalid(server, tok):
    assert run(refused(server, tok())) == (401, {"error": "token_invalid"})


def test_missing_token(server):
    assert run(refused(server)) == (401, {"error": "token_missing"})


def test_expired_token_is_refused_with_401(server):
    # Past the server's 30 s leeway.
    tok = token(ttl=-120)
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(tok, SECRET, algorithms=["HS256"])  # PyJWT agrees it is expired
    status, body = run(refused(server, tok))
    assert status == 401
    assert body == {"error": "token_expired"}


def test_expired_within_leeway_is_accepted(server):
    async def go():
        async with open_ws(server, token(ttl=-5)) as ws:
            await subscribe(ws, "leeway")

    run(go())


@pytest.fixture(scope="module")
def keyring_server():
    """A server whose key ring has two keys with ids, as during a rotation."""
    tmp = tempfile.TemporaryDirectory(prefix="roostd-keys-")
    d = Path(tmp.name)
    (d / "new").write_text("new-secret-0123456789abcdef-0123456789\n")
    (d / "old").write_text("old-secret-0123456789abcdef-0123456789\n")
    (d / "roostd.toml").write_text(
        f'[[keys]]\nid = "new"\nsecret_file = "{d / "new"}"\n\n[[keys]]\nid = "old"\nsecret_file = "{d / "old"}"\n'
    )
    s = Server("--config", str(d / "roostd.toml"), env_secret=None)
    yield s
    assert s.stop() == 0
    tmp.cleanup()


def test_pyjwt_kid_header_selects_the_key(keyring_server):
    new = "new-secret-0123456789abcdef-0123456789"
    old = "old-secret-0123456789abcdef-0123456789"

    async def go():
        for tok in [
            token(secret=new, headers={"kid": "new"}),
            token(secret=old, headers={"kid": "old"}),
            token(secret=new),  # no kid: the first key is the default
        ]:
            async with open_ws(keyring_server, tok) as ws:
                await subscribe(ws, "rotation")
        for tok in [
            token(secret=old, headers={"kid": "new"}),  # kid and key disagree
            token(secret=old),  # no kid never tries the other keys
            token(secret=new, headers={"kid": "newer"}),  # unknown kid
            token(secret=SECRET),  # ROOSTD_SECRET is not consulted when [[keys]] exist
        ]:
            assert await refused(keyring_server, tok) == (401, {"error": "token_invalid"})

    run(go())


def test_audience_when_configured():
    s = Server("--audience", "roost")
    try:

        async def go():
            for tok in [token(aud="roost"), token(aud=["other", "roost"])]:
                async with open_ws(s, tok) as ws:
                    await subscribe(ws, "aud")
            for tok in [token(aud="other"), token()]:
                assert await refused(s, tok) == (401, {"error": "token_invalid"})

        run(go())
    finally:
        assert s.stop() == 0


# --------------------------------------------------------------- connecting


def test_token_as_subprotocol(server):
    tok = token(sub="subproto")

    async def go():
        async with open_ws(server, subprotocols=["roost.v1", "roost.token." + tok]) as ws:
            assert ws.subprotocol == "roost.v1"
            await subscribe(ws, "room:subproto")
            await send(ws, op="pub", ch="room:subproto", data={"via": "subprotocol"}, id="p")
            ack = await recv(ws)
            msg = await recv(ws)
            if ack["op"] == "msg":
                ack, msg = msg, ack
            assert (ack["op"], ack["id"], ack["seq"]) == ("ack", "p", 1)
            assert (msg["op"], msg["from"], msg["data"]) == ("msg", "subproto", {"via": "subprotocol"})

    run(go())


def test_subprotocol_is_selected_with_a_url_token(server):
    async def go():
        async with open_ws(server, token(), subprotocols=["roost.v1"]) as ws:
            assert ws.subprotocol == "roost.v1"
        async with open_ws(server, token()) as ws:
            assert ws.subprotocol is None  # not offered, not selected

    run(go())


def test_bad_token_in_subprotocol_is_refused(server):
    async def go():
        return await refused(server, subprotocols=["roost.v1", "roost.token." + token(ttl=-120)])

    assert run(go()) == (401, {"error": "token_expired"})


# --------------------------------------------------------------- messages


def test_pub_ack_msg_between_two_clients(server):
    ch = "room:duo"

    async def go():
        async with open_ws(server, token(sub="alice")) as alice, open_ws(server, token(sub="bob")) as bob:
            await subscribe(alice, ch)
            payloads = [{"text": "hi", "n": [1, 2.5, None, True]}, "plain", 42, ["a"], {"ü": "ß ✓"}]
            seqs = []
            for i, data in enumerate(payloads):
                await send(bob, op="pub", ch=ch, data=data, id=f"m{i}")
                ack = await recv_op(bob, "ack")
                assert (ack["id"], ack["ch"]) == (f"m{i}", ch)
                seqs.append(ack["seq"])
            assert seqs == list(range(1, len(payloads) + 1))
            for seq, data in zip(seqs, payloads):
                msg = await recv_op(alice, "msg")
                assert (msg["ch"], msg["seq"], msg["from"], msg["data"]) == (ch, seq, "bob", data)
                assert isinstance(msg["ts"], int) and abs(msg["ts"] / 1000 - time.time()) < 60
            # A numeric id is echoed as a number, a request without id gets none.
            await send(bob, op="pub", ch=ch, data=0, id=7)
            assert (await recv_op(bob, "ack"))["id"] == 7
            await send(bob, op="pub", ch=ch, data=0)
            assert "id" not in await recv_op(bob, "ack")
            # The same id again is acked with the original seq and stored once.
            await send(bob, op="pub", ch=ch, data="again", id="m0")
            assert (await recv_op(bob, "ack"))["seq"] == 1
            await send(bob, op="hist", ch=ch, id="h")
            hist = await recv_op(bob, "hist")
            assert [m["seq"] for m in hist["msgs"]] == list(range(1, len(payloads) + 3))
            assert hist["more"] is False
            # Errors keep the connection open.
            await bob.send("not json")
            assert (await recv_op(bob, "err"))["code"] == "bad_request"
            await send(bob, op="zap", id=1)
            assert (await recv_op(bob, "err"))["code"] == "unknown_op"

    run(go())


def test_resume_with_since_and_epoch_after_disconnect(server):
    ch = "room:resume"

    async def go():
        # Alice subscribes, reads two messages, and drops her connection.
        async with open_ws(server, token(sub="alice")) as alice, open_ws(server, token(sub="bob")) as bob:
            ok = await subscribe(alice, ch)
            epoch = ok["epoch"]
            for i in range(2):
                await send(bob, op="pub", ch=ch, data={"i": i}, id=f"r{i}")
                await recv_op(bob, "ack")
            last = (await recv_op(alice, "msg"))["seq"]
            last = (await recv_op(alice, "msg"))["seq"]
            assert last == 2
            await alice.close()
            # Bob goes on while she is away.
            for i in range(2, 6):
                await send(bob, op="pub", ch=ch, data={"i": i}, id=f"r{i}")
                await recv_op(bob, "ack")

            # She comes back with since + epoch: exactly what she missed, then live.
            async with open_ws(server, token(sub="alice")) as again:
                ok = await subscribe(again, ch, since=last, epoch=epoch)
                assert ok["seq"] == 6 and ok["epoch"] == epoch and "gap" not in ok
                got = [(await recv_op(again, "msg"))["data"]["i"] for _ in range(4)]
                assert got == [2, 3, 4, 5]
                await send(bob, op="pub", ch=ch, data={"i": 6}, id="r6")
                await recv_op(bob, "ack")
                live = await recv_op(again, "msg")
                assert (live["seq"], live["data"]) == (7, {"i": 6})
                with pytest.raises(asyncio.TimeoutError):
                    await recv(again, timeout=0.3)  # no duplicate

            # Another store's epoch: gap, and a replay from the oldest message.
            async with open_ws(server, token(sub="alice")) as other:
                ok = await subscribe(other, ch, since=3, epoch="not-this-store")
                assert ok["gap"] is True
                assert [(await recv_op(other, "msg"))["seq"] for _ in range(7)] == list(range(1, 8))

            # since > 0 without an epoch is a bad request.
            async with open_ws(server, token(sub="alice")) as bad:
                await send(bad, op="sub", ch=ch, since=3, id=9)
                err = await recv_op(bad, "err")
                assert (err["code"], err["id"]) == ("bad_request", 9)

    run(go())


def test_epoch_survives_a_restart():
    """The epoch is created with the store and never changes: resume works
    across a server restart on the same data folder."""
    data = tempfile.TemporaryDirectory(prefix="roostd-restart-")
    folder = str(Path(data.name) / "data")

    async def publish_and_sub(s, n):
        async with open_ws(s, token()) as ws:
            ok = await subscribe(ws, "keep")
            for i in range(n):
                await send(ws, op="pub", ch="keep", data=i, id=f"k{ok['seq'] + i}")
                # Subscribed to the same channel: the msg may come before the ack.
                while (await recv(ws))["op"] != "ack":
                    pass
            return ok

    try:
        s = Server(data=folder)
        first = run(publish_and_sub(s, 3))
        assert s.stop() == 0
        s = Server(data=folder)
        try:

            async def go():
                async with open_ws(s, token()) as ws:
                    ok = await subscribe(ws, "keep", since=1, epoch=first["epoch"])
                    assert ok["epoch"] == first["epoch"] and ok["seq"] == 3 and "gap" not in ok
                    assert [(await recv_op(ws, "msg"))["seq"] for _ in range(2)] == [2, 3]

            run(go())
        finally:
            assert s.stop() == 0
    finally:
        data.cleanup()


def test_fragmented_message_and_ping(server):
    """websockets sends an iterable as one fragmented message, and pings
    on request: both are plain RFC 6455 that the server must take."""

    async def go():
        async with open_ws(server, token(sub="frag")) as ws:
            parts = ['{"op":"pub",', '"ch":"room:frag",', '"data":{"big":"' + "x" * 5000 + '"},', '"id":"f"}']
            await ws.send(iter(parts))
            ack = await recv_op(ws, "ack")
            assert (ack["id"], ack["seq"]) == ("f", 1)
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, TIMEOUT)
            await send(ws, op="hist", ch="room:frag", id="h")
            assert (await recv_op(ws, "hist"))["msgs"][0]["data"] == {"big": "x" * 5000}

    run(go())


def test_token_expiry_closes_with_4001():
    from websockets.exceptions import ConnectionClosed

    s = Server("--leeway", "0s")
    try:

        async def go():
            async with open_ws(s, token(ttl=2)) as ws:
                await subscribe(ws, "expiring")
                started = time.monotonic()
                with pytest.raises(ConnectionClosed) as closed:
                    await recv(ws, timeout=10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
                assert time.monotonic() - started < 5

        run(go())
    finally:
        assert s.stop() == 0


def test_refusals_are_plain_http_with_a_json_body(server):
    async def go():
        # Unknown path: 404 even with a good token.
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{server.port}/nope?token={token()}", proxy=None):
                pass
        assert (info.value.response.status_code, json.loads(info.value.response.body)) == (404, {"error": "not_found"})
        # A browser page from elsewhere: 403, checked before the token.
        assert await refused(server, token(), origin="http://evil.example") == (403, {"error": "origin_forbidden"})
        assert await refused(server, None, origin="http://evil.example") == (403, {"error": "origin_forbidden"})
        # The page served by roostd itself (same host and port) may connect.
        async with open_ws(server, token(), origin=f"http://127.0.0.1:{server.port}") as ws:
            await subscribe(ws, "origin")

    run(go())


def raw_request(port, data):
    """Sends raw bytes; returns (status, JSON body) of the answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_malformed_requests(server):
    tok = token()
    plain_get = f"GET /ws?token={tok} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    assert raw_request(server.port, plain_get) == (400, {"error": "bad_request"})
    huge = f"GET /ws?token={tok} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {'a' * 9000}\r\n\r\n".encode()
    assert raw_request(server.port, huge) == (431, {"error": "headers_too_large"})


def test_replay_hands_over_to_live_without_gap_or_duplicate():
    """Subscribers join with since=0 (replay) or without since (live only)
    while a publisher streams pipelined publishes: each must see a
    contiguous run of seqs up to the last one, nothing twice."""
    import random

    s = Server("--publish-rate", "0")
    count, ch = 1500, "handover"
    try:

        async def publisher(ws):
            for i in range(count):
                await send(ws, op="pub", ch=ch, data=i, id=f"h{i}")
                if i % 50 == 0:
                    await asyncio.sleep(0.001)
            acked = 0
            while acked < count:
                assert (await recv_op(ws, "ack", timeout=20))["seq"] >= 1
                acked += 1

        async def subscriber(k):
            await asyncio.sleep(random.random() * 0.3)
            async with open_ws(s, token(sub=f"s{k}")) as ws:
                ok = await subscribe(ws, ch, **({"since": 0} if k % 2 == 0 else {}))
                last = 0 if k % 2 == 0 else ok["seq"]
                while last < count:
                    msg = await recv_op(ws, "msg", timeout=10)
                    assert msg["seq"] == last + 1, f"subscriber {k}: {msg['seq']} after {last}"
                    assert msg["data"] == last  # data i was published as seq i+1
                    last = msg["seq"]
                with pytest.raises(asyncio.TimeoutError):
                    await recv(ws, timeout=0.2)

        async def go():
            async with open_ws(s, token(sub="streamer")) as pub:
                await asyncio.gather(publisher(pub), *[subscriber(k) for k in range(12)])

        run(go())
    finally:
        assert s.stop() == 0


def test_gap_when_since_is_past_the_end(server):
    """A since above the channel's last seq (a store restored from an older
    backup) gets gap:true and a replay from the oldest message."""

    async def go():
        async with open_ws(server, token()) as ws:
            epoch = (await subscribe(ws, "past-end"))["epoch"]
            for i in range(2):
                await send(ws, op="pub", ch="past-end", data=i, id=f"pe{i}")
            frames = [await recv(ws) for _ in range(4)]  # 2 acks + 2 msgs, any order
            assert sorted(f["op"] for f in frames) == ["ack", "ack", "msg", "msg"]
        async with open_ws(server, token()) as ws:
            ok = await subscribe(ws, "past-end", since=10, epoch=epoch)
            assert ok["gap"] is True and ok["seq"] == 2
            assert [(await recv_op(ws, "msg"))["seq"] for _ in range(2)] == [1, 2]
            await send(ws, op="hist", ch="past-end", since=10, id="h")
            hist = await recv_op(ws, "hist")
            assert hist["gap"] is True and hist["msgs"] == [] and hist["more"] is False

    run(go())
