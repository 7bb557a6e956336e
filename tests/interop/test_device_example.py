"""Interop: examples/device.py publishing keyed readings to a compacted channel.

NEEDS THE SERVER SIDE OF ISSUE 15 (keys, `--compact`, and
`GET /api/channels/{ch}/state`, contract §8; fails on a roostd without it).

The device runs two rounds (`--once`, twice) against a roostd started with
`--compact 'sensors:*'`; the state endpoint then holds one message per key
(cpu_temp, load, uptime), each from the second round, and within a second
the first round's messages are compacted away from the history.

Run with ``tests/interop/run.sh``.
"""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

from roostd_server import ROOT, SMALL, Server, mint, token_all

DEVICE = ROOT / "examples" / "device.py"
TIMEOUT = 50.0 if SMALL else 10.0
KEYS = ["cpu_temp", "load", "uptime"]


def api(server, path):
    req = urllib.request.Request(server.base + path, headers={"Authorization": f"Bearer {token_all('app', api=True)}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=TIMEOUT) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_device_example_keeps_one_reading_per_key_on_a_compacted_channel():
    server = Server("--compact", "sensors:*")
    try:
        tok = mint({"sub": "pi-kitchen", "exp": int(time.time()) + 3600, "read": ["sensors:*"], "write": ["sensors:*"]})
        rounds = []
        for _ in range(2):
            out = subprocess.run(
                [sys.executable, str(DEVICE), f"{server.url}?token={tok}", "sensors:1", "--once"],
                capture_output=True, text=True, timeout=TIMEOUT * 3,
            )
            assert out.returncode == 0, out.stderr
            rounds.append(sorted(line.split()[1].split("=")[0] for line in out.stdout.splitlines()))
        assert rounds == [KEYS, KEYS], "each round stores one message per key"

        status, state = api(server, "/api/channels/sensors:1/state")
        assert status == 200, state
        assert [m["key"] for m in state["msgs"]] == KEYS, "one message per key, in key order"
        assert sorted(m["seq"] for m in state["msgs"]) == [4, 5, 6], "each from the second round"
        assert state["seq"] == 6
        assert all(m["from"] == "pi-kitchen" for m in state["msgs"])

        deadline = time.monotonic() + TIMEOUT
        while True:
            status, hist = api(server, "/api/channels/sensors:1/messages?since=0")
            seqs = [m["seq"] for m in hist["msgs"]]
            if seqs == [4, 5, 6] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert seqs == [4, 5, 6], "the first round was compacted away"
    finally:
        server.stop()
