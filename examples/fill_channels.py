#!/usr/bin/env python3
"""Creates N channels on a running roostd: one message each to fill-0 .. fill-(N-1).

    python3 examples/fill_channels.py URL TOKEN N

URL is ws://127.0.0.1:PORT/ws; TOKEN needs write on fill-* (e.g. from
`roostd token --sub fill --write 'fill-*'`). Publishes are pipelined, 1000 in
flight, so the fill takes seconds, not minutes. Used with `loadgen publish`
to measure publish → ack latency next to many channels (docs/benchmarks.md).
"""
import asyncio
import json
import sys
import time

import websockets

WINDOW = 1000


async def main(url, token, n):
    started = time.monotonic()
    async with websockets.connect(f"{url}?token={token}", max_size=None) as ws:
        sent = acked = 0
        while acked < n:
            while sent < n and sent - acked < WINDOW:
                await ws.send(json.dumps({"op": "pub", "ch": f"fill-{sent}", "data": sent, "id": sent}))
                sent += 1
            reply = json.loads(await ws.recv())
            if reply.get("op") != "ack":
                sys.exit(f"publish refused: {reply}")
            acked += 1
    print(f"{n} channels in {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
