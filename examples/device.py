#!/usr/bin/env python3
"""A device publishing keyed readings to a compacted channel (contract §8).

Every few seconds it publishes one message per reading, each with a `key`
(`cpu_temp`, `load`, `uptime`): on a compacted channel roostd keeps the
latest message of each key, so a page subscribed with `{ state: true }` (or
`GET /api/channels/{ch}/state`) always has the current value of every
reading, also after a restart of either side. Start the server with the
channel compacted, then run the device:

    roostd serve --compact 'sensors:*'
    TOKEN=$(roostd token --sub pi-kitchen --write 'sensors:*' --read 'sensors:*')
    python3 examples/device.py "ws://127.0.0.1:8080/ws?token=$TOKEN" sensors:1

and open the demo page with `&state=sensors:1` to watch the values change.

Each reading is sent with a new unique id and the device waits for its
`ack` (the message is on disk) before the next. When the connection drops
it reconnects with backoff and sends the unacked reading again with the same
id: roostd dedupes it, so a reading is never lost or stored twice. On a
Raspberry Pi `cpu_temp` is the SoC's temperature; elsewhere it is made up.
`--once` publishes one round and exits (exit status 1 on an `err` answer).
Needs `websockets` (pip install websockets).
"""

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid

import websockets

TIMEOUT = 10  # seconds to wait for an ack
THERMAL = "/sys/class/thermal/thermal_zone0/temp"
START = time.monotonic()


def readings():
    """{key: value} measured now."""
    try:
        with open(THERMAL) as f:
            temp = int(f.read().strip()) / 1000
    except (OSError, ValueError):
        temp = 45 + random.uniform(-3, 3)  # not a Pi: a plausible value
    return {
        "cpu_temp": round(temp, 1),
        "load": round(os.getloadavg()[0], 2),
        "uptime": int(time.monotonic() - START),
    }


async def publish(ws, ch, pending):
    """Sends the `pending` frames (key -> frame) and waits until each is acked (removing it)."""
    for frame in list(pending.values()):
        await ws.send(json.dumps(frame))
    while pending:
        answer = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if answer.get("op") == "ack":
            for key, frame in list(pending.items()):
                if frame["id"] == answer.get("id"):
                    del pending[key]
                    print(f"{ch} {key}={json.dumps(frame['data'])} stored as seq {answer['seq']}", flush=True)
        elif answer.get("op") == "err":
            if answer.get("code") in ("unavailable", "rate_limited"):
                raise ConnectionError(answer.get("code"))  # try again later, same ids
            sys.exit(f"device.py: the server refused: {answer.get('code')}: {answer.get('msg', '')}")


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("url", help="ws://127.0.0.1:8080/ws?token=...")
    p.add_argument("channel", help="a compacted channel, e.g. sensors:1")
    p.add_argument("--every", type=float, default=2.0, help="seconds between rounds (default 2)")
    p.add_argument("--once", action="store_true", help="publish one round and exit")
    args = p.parse_args()
    backoff = 0.25
    pending = {}
    while True:
        try:
            async with websockets.connect(args.url, subprotocols=["roost.v1"], open_timeout=TIMEOUT) as ws:
                backoff = 0.25
                while True:
                    if not pending:
                        # A new round: one message per key, each with its own new id.
                        pending = {
                            key: {"op": "pub", "ch": args.channel, "key": key, "data": value,
                                  "id": f"d-{uuid.uuid4().hex[:12]}"}
                            for key, value in readings().items()
                        }
                    await publish(ws, args.channel, pending)
                    if args.once:
                        return
                    await asyncio.sleep(args.every)
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException, ConnectionError) as e:
            # Down, restarting, or too slow: the unacked readings go again, same ids.
            print(f"device.py: {e.__class__.__name__}: {e}; retrying in {backoff:.2f} s", file=sys.stderr, flush=True)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
