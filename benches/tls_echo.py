#!/usr/bin/env python3
"""Closed-loop echo over wss:// against `roostd serve --echo`: the server's CPU per message.

For issue 18's idle-TLS work (docs/benchmarks.md, "Idle TLS connections"): a
before/after check that a TLS stream change costs no CPU. `loadgen` speaks no
TLS, so this standard-library client (asyncio, ssl) opens --conns wss://
connections, each sending a --payload-byte text frame and waiting for its echo,
--messages times after a warm-up of 200. The server's user+system CPU time
(from /proc/PID/stat) over the timed part, divided by the messages echoed, is
the figure; the client's own speed only sets the rate.

    python3 benches/tls_echo.py --port 21500 --pid "$(pgrep -n roostd)" --token "$(roostd token --sub e --read '*')"
"""

import argparse
import asyncio
import json
import os
import ssl
import time

# The connection and frame helpers B1's TLS generator uses, beside this file.
from tls_idle import open_wss, read_frame, text_frame


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def echo(reader, writer, frame, n, want):
    for _ in range(n):
        writer.write(frame)
        b0, payload = await read_frame(reader)
        if len(payload) != want or b0 != 0x81:
            raise ConnectionError(f"expected a {want}-byte text echo, got opcode {b0 & 0x0F}, {len(payload)} bytes")


async def main_async(args):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conns = [await open_wss(args, ctx) for _ in range(args.conns)]
    payload = b"x" * args.payload
    frame = text_frame(payload)
    await asyncio.gather(*(echo(r, w, frame, 200, len(payload)) for r, w in conns))
    cpu0, t0 = cpu_seconds(args.pid), time.monotonic()
    await asyncio.gather(*(echo(r, w, frame, args.messages, len(payload)) for r, w in conns))
    cpu1, t1 = cpu_seconds(args.pid), time.monotonic()
    n = args.conns * args.messages
    print(json.dumps({"scenario": "echo-tls", "payload": args.payload, "messages": n,
                      "seconds": round(t1 - t0, 3), "server_cpu_s": round(cpu1 - cpu0, 3),
                      "server_us_per_msg": round((cpu1 - cpu0) / n * 1e6, 2)}))
    for _, w in conns:
        w.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True, help="the server's pid, for its CPU time")
    p.add_argument("--token", required=True)
    p.add_argument("--conns", type=int, default=10)
    p.add_argument("--messages", type=int, default=3000, help="per connection, after 200 of warm-up")
    p.add_argument("--payload", type=int, default=1024)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
