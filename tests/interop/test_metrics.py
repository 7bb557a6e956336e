"""Interop: roostd's /metrics read by the official Prometheus Python client.

``prometheus_client.parser.text_string_to_metric_families`` parses the
exposition text exactly as a scraper would; nothing here shares code with the
server. After known traffic — a WebSocket pub/sub round trip, HTTP publishes
(one repeated with the same Idempotency-Key) and one refused token — the
families must exist, have the right types, and count exactly that traffic
(spec §5: every family is named ``roostd_...``).

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
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from roostd_server import ROOT, Server  # noqa: E402

SECRET = "metrics-secret-0123456789abcdef-0123456789"  # >= 32 bytes
TIMEOUT = 5.0


@pytest.fixture
def server():
    s = Server(env_secret=SECRET, prefix="roostd-metrics-")
    yield s
    assert s.stop() == 0, "roostd did not stop cleanly on SIGTERM:\n" + "\n".join(s.log)


def token(sub, secret=SECRET, read=("*",), write=("*",), api=False):
    now = int(time.time())
    claims = {"sub": sub, "iat": now, "exp": now + 3600, "read": list(read), "write": list(write)}
    if api:
        claims["api"] = True  # the main application's own token: only these may use /api/
    return jwt.encode(claims, secret, "HS256")


# A plain opener: never route loopback requests through an environment proxy.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(server, method, path, body=None, headers=None):
    """(status, headers, body text) of one request."""
    req = urllib.request.Request(server.base + path, data=body, method=method, headers=headers or {})
    try:
        with HTTP.open(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def scrape(server):
    """{(sample name, frozenset(labels)): value} and {family name: type}."""
    status, headers, text = http(server, "GET", "/metrics")
    assert status == 200, text
    assert headers["Content-Type"].startswith("text/plain"), headers
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types, text


def value(samples, name, **labels):
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}; have {sorted(n for n, _ in samples)}"
    return samples[key]


def ws_url(server, tok):
    return f"ws://127.0.0.1:{server.port}/ws?token={tok}"


async def recv(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


def test_metrics_count_the_traffic_and_parse_with_prometheus_client(server):
    app = token("app", api=True)

    async def go():
        async with connect(ws_url(server, token("viewer")), open_timeout=TIMEOUT, proxy=None) as viewer, connect(
            ws_url(server, token("alice")), open_timeout=TIMEOUT, proxy=None
        ) as alice:
            await viewer.send(json.dumps({"op": "sub", "ch": "room:1", "id": "s"}))
            assert (await recv(viewer))["op"] == "subok"

            # A WebSocket round trip.
            await alice.send(json.dumps({"op": "pub", "ch": "room:1", "data": {"text": "hi"}, "id": 1}))
            assert (await recv(alice))["op"] == "ack"
            assert (await recv(viewer))["from"] == "alice"

            # An HTTP publish, then the same key again (a duplicate, not stored).
            headers = {"Authorization": f"Bearer {app}", "Idempotency-Key": "order-1"}
            for expected in (201, 200):
                status, _, body = await asyncio.to_thread(
                    http, server, "POST", "/api/channels/room:1/messages", b'{"text":"shipped"}', headers
                )
                assert status == expected, body
            msg = await recv(viewer)
            assert (msg["from"], msg["seq"]) == ("app", 2), msg

            # One refused token: signed with another secret.
            with pytest.raises(InvalidStatus) as info:
                async with connect(
                    ws_url(server, token("mallory", secret="another-secret-of-at-least-32-bytes!!")),
                    open_timeout=TIMEOUT,
                    proxy=None,
                ):
                    pass
            assert info.value.response.status_code == 401

            # Scraped while both WebSockets are open.
            return await asyncio.to_thread(scrape, server)

    samples, types, text = asyncio.run(asyncio.wait_for(go(), 30))

    # Every family, and every sample line, is roostd_...
    assert types, text
    assert all(name.startswith("roostd_") for name in types), sorted(types)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert line.startswith("roostd_"), line

    # Types as a scraper sees them (counter families drop their _total).
    assert types["roostd_connections"] == "gauge"
    assert types["roostd_websockets"] == "gauge"
    assert types["roostd_messages_published"] == "counter"
    assert types["roostd_refused"] == "counter"
    assert types["roostd_commit_duration_seconds"] == "histogram"
    assert types["roostd_commit_batch_messages"] == "histogram"

    # Gauges while the sockets are open: two WebSockets, plus this scrape.
    assert value(samples, "roostd_connections") >= 3
    assert value(samples, "roostd_websockets") == 2
    assert value(samples, "roostd_subscriptions") == 1

    # Counters: exactly the traffic above.
    assert value(samples, "roostd_messages_published_total") == 2
    assert value(samples, "roostd_messages_duplicate_total") == 1
    assert value(samples, "roostd_messages_delivered_total") == 2
    assert value(samples, "roostd_refused_total", code="token_invalid") == 1
    assert value(samples, "roostd_auth_failures_total", reason="token_invalid") == 1
    assert value(samples, "roostd_http_requests_total") >= 2
    assert value(samples, "roostd_connections_accepted_total") >= 6
    commits = value(samples, "roostd_commits_total")
    assert 1 <= commits <= 3, commits
    assert value(samples, "roostd_commit_failures_total") == 0

    # Histograms: count == commits, cumulative buckets ending at +Inf == count.
    for name in ("roostd_commit_duration_seconds", "roostd_commit_batch_messages"):
        count = value(samples, f"{name}_count")
        assert count == commits, (name, count)
        buckets = sorted(
            (float(dict(labels)["le"]), v) for (n, labels), v in samples.items() if n == f"{name}_bucket"
        )
        assert buckets[-1] == (float("inf"), count), buckets
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), buckets
    assert 0 <= value(samples, "roostd_commit_duration_seconds_sum") < 10
    # Every publish taken went through a commit: 2 new + 1 duplicate.
    assert value(samples, "roostd_commit_batch_messages_sum") == 3

    assert value(samples, "roostd_store_map_bytes") > 0
    assert 0 < value(samples, "roostd_store_used_bytes") <= value(samples, "roostd_store_map_bytes")

    # Once the WebSockets are closed the gauges come back down.
    deadline = time.monotonic() + TIMEOUT
    while True:
        samples, _, _ = scrape(server)
        if value(samples, "roostd_websockets") == 0:
            break
        assert time.monotonic() < deadline, "roostd_websockets stays above 0 after the sockets closed"
        time.sleep(0.05)
    assert value(samples, "roostd_subscriptions") == 0
    assert value(samples, "roostd_connections") >= 1  # this scrape
