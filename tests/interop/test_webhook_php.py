"""Interop: the PHP webhook receiver (examples/php/webhook.php) under `php -S`.

1. The receiver alone, fed by this test with bodies signed by Python's own
   hmac (not PHP's): a correctly signed batch is recorded (200), a repeated
   event id is recorded once, a wrong, missing or differently-keyed signature
   and a tampered body are refused (401) and record nothing; not a batch:
   400; GET on the hook: 405.
2. NEEDS THE SERVER SIDE OF ISSUE 15 (webhooks, contract §9; fails on a
   roostd without it): roostd started with `--webhook` to the receiver; a
   client joining and leaving `presence-room:1` makes roostd deliver
   channel_occupied, member_added, member_removed and channel_vacated,
   signed with the shared secret, so the receiver records all four.

Skipped where `php` is missing (tests/interop/php_app.sh installs php-cli).
Run with ``tests/interop/run.sh``.
"""

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from roostd_server import ROOT, SECRET, SMALL, RawWS, Server, token_all

RECEIVER = ROOT / "examples" / "php" / "webhook.php"
TIMEOUT = 50.0 if SMALL else 10.0


def sign(body, secret=SECRET):
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Receiver:
    """`php -S` on a free loopback port running webhook.php, with its own data folder."""

    def __init__(self, secret=SECRET):
        if shutil.which("php") is None:
            pytest.skip("php is not installed (apt-get install php-cli)")
        self.tmp = tempfile.TemporaryDirectory(prefix="roostd-webhook-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = dict(os.environ, ROOSTD_SECRET=secret, WEBHOOK_DATA=self.tmp.name)
        self.proc = subprocess.Popen(
            ["php", "-S", f"127.0.0.1:{self.port}", str(RECEIVER)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("php -S did not start")
                time.sleep(0.05)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/"

    def request(self, path="/", body=None, headers=None):
        """(status, decoded JSON) of one request."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as res:
                return res.status, json.loads(res.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def post(self, body, signature):
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["X-Roost-Signature"] = signature
        return self.request("/", body, headers)

    def events(self):
        return self.request("/events")[1]

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.tmp.cleanup()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def batch(*events):
    return json.dumps({"time_ms": 1764100000123, "events": list(events)}, separators=(",", ":")).encode()


def test_the_php_receiver_records_a_signed_batch_once_and_refuses_bad_signatures(receiver):
    added = {"id": "e1-1", "name": "member_added", "channel": "presence-room:1", "user_id": "alice"}
    body = batch(added)
    assert receiver.post(body, sign(body)) == (200, {"recorded": 1, "duplicates": 0})
    # The hex may come in upper case; the same event again (a retried batch)
    # is acknowledged and not recorded twice.
    occupied = {"id": "e1-2", "name": "channel_occupied", "channel": "presence-room:1"}
    again = batch(added, occupied)
    assert receiver.post(again, sign(again).upper()) == (200, {"recorded": 1, "duplicates": 1})

    forged = batch({"id": "e1-3", "name": "member_removed", "channel": "presence-room:1", "user_id": "alice"})
    refusals = {
        "no signature": receiver.post(forged, None),
        "an empty signature": receiver.post(forged, ""),
        "another key's signature": receiver.post(forged, sign(forged, "another-secret-0123456789abcdef-0123456789")),
        "the signature of another body": receiver.post(forged, sign(body)),
        "a truncated signature": receiver.post(forged, sign(forged)[:-2]),
        "a base64 (not hex) signature": receiver.post(forged, base64.b64encode(hmac.new(SECRET.encode(), forged, hashlib.sha256).digest()).decode()),
    }
    for what, answer in refusals.items():
        assert answer == (401, {"error": "bad_signature"}), what
    tampered = body.replace(b"alice", b"mallory")
    assert receiver.post(tampered, sign(body)) == (401, {"error": "bad_signature"}), "a tampered body"

    not_a_batch = b'{"events":{"id":"x"}}'
    status, answer = receiver.post(not_a_batch, sign(not_a_batch))
    assert (status, answer["error"]) == (400, "bad_request")
    no_id = batch({"name": "member_added", "channel": "c"})
    assert receiver.post(no_id, sign(no_id))[0] == 400
    assert receiver.request("/")[0] == 405

    assert receiver.events() == [added, occupied], "only the signed events, each once, in order"
    assert receiver.request("/state") == (200, {"occupied": ["presence-room:1"], "members": {"presence-room:1": ["alice"]}})


def wait_for_events(receiver, names, what):
    deadline = time.monotonic() + TIMEOUT
    while True:
        got = [(e["name"], e["channel"], e.get("user_id")) for e in receiver.events()]
        if all(n in got for n in names):
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: the receiver recorded {got}, not all of {names}")
        time.sleep(0.1)


def test_roostd_delivers_presence_and_occupancy_events_to_the_php_receiver(receiver):
    # NEEDS the server side of issue 15 (webhooks).
    server = Server("--webhook", receiver.url, "--presence-grace", "1s", "--webhook-backoff-min", "100ms")
    try:
        ws = RawWS(server.port, token_all("alice"))
        ws.send({"op": "sub", "ch": "presence-room:1", "id": "s"})
        assert ws.recv()["op"] == "subok"
        CH = "presence-room:1"
        wait_for_events(receiver, [("channel_occupied", CH, None), ("member_added", CH, "alice")], "alice joined")
        ws.close()
        got = wait_for_events(receiver, [("member_removed", CH, "alice"), ("channel_vacated", CH, None)], "alice left")
        assert got.index(("member_added", CH, "alice")) < got.index(("member_removed", CH, "alice"))
        ids = [e["id"] for e in receiver.events()]
        assert len(ids) == len(set(ids)) == 4, f"four events, each once ({receiver.events()})"
        assert receiver.request("/state")[1] == {"occupied": [], "members": {}}
    finally:
        server.stop()
