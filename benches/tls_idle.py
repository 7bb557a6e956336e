#!/usr/bin/env python3
"""Hold N idle wss:// connections to roostd, each subscribed to one channel.

B1's generator for roostd over TLS (benches/run.sh, server `roostd-tls`;
issue 18: an idle TLS connection's memory, rustls' buffers included): the
plain-WebSocket generator (`loadgen idle`) speaks no TLS. Each connection is
a TLS handshake (certificate not checked: loopback, the server's own
self-signed one), the upgrade with --token, one `sub` to --channel, and is
ready at its `subok`. At most --connecting handshakes are in flight at once
(loadgen's default, 1000, so the server holds as many half-done handshakes
as in the plain run). When all N are ready (or after --timeout) it prints
`READY n` to stderr, holds them --hold seconds, closes them and prints one
JSON line. Standard library only (asyncio, ssl); raises RLIMIT_NOFILE's soft
limit to the hard one.

    python3 benches/tls_idle.py --port 18443 -n 1000 --hold 13 --token "$(roostd token --sub idle --read '*')"
"""

import argparse
import asyncio
import json
import resource
import ssl
import sys
import time


async def open_wss(args, ctx):
    """A wss:// connection upgraded with --token: (reader, writer)."""
    reader, writer = await asyncio.open_connection(args.host, args.port, ssl=ctx, server_hostname="localhost")
    writer.write(f"GET /ws?token={args.token} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"upgrade refused: {head[:80]!r}")
    return reader, writer


def text_frame(payload):
    """A masked text frame; an all-zero mask (servers unmask whatever the key)."""
    if len(payload) < 126:
        head = bytes([0x81, 0x80 | len(payload)])
    else:
        head = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload


async def read_frame(reader):
    """The next frame from the server (unmasked): (first byte, payload)."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0, await reader.readexactly(n)


async def one(args, ctx, gate, held):
    async with gate:
        reader, writer = await open_wss(args, ctx)
        writer.write(text_frame(f'{{"op":"sub","ch":"{args.channel}"}}'.encode()))
        while True:
            b0, payload = await read_frame(reader)
            if b'"op":"subok"' in payload:
                break
            if b'"op":"err"' in payload or b0 & 0x0F == 0x8:
                raise ConnectionError(f"sub refused: {payload[:200]!r}")
        held.append(writer)


async def main_async(args):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    gate = asyncio.Semaphore(args.connecting)
    held = []
    t0 = time.monotonic()
    tasks = [asyncio.create_task(one(args, ctx, gate, held)) for _ in range(args.count)]
    done, pending = await asyncio.wait(tasks, timeout=args.timeout)
    for t in pending:
        t.cancel()
    errors = {}
    for t in done:
        if t.exception() is not None:
            key = type(t.exception()).__name__ + ": " + str(t.exception())[:120]
            errors[key] = errors.get(key, 0) + 1
    setup = time.monotonic() - t0
    print(f"READY {len(held)}", file=sys.stderr, flush=True)
    print(f"{len(held)} of {args.count} wss:// connections subscribed in {setup:.1f} s; holding {args.hold:g} s",
          file=sys.stderr, flush=True)
    for e, n in errors.items():
        print(f"  {n} failed: {e}", file=sys.stderr)
    await asyncio.sleep(args.hold)
    for w in held:
        w.close()
    print(json.dumps({"scenario": "idle-tls", "conns": args.count, "subscribed": len(held),
                      "setup_s": round(setup, 2), "errors": errors}))
    return 0 if len(held) == args.count else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-n", "--count", type=int, default=1000)
    p.add_argument("--hold", type=float, default=10.0, help="seconds to hold them once READY")
    p.add_argument("--token", required=True, help="a token that may read --channel")
    p.add_argument("--channel", default="bench")
    p.add_argument("--connecting", type=int, default=1000, help="handshakes in flight at once")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for the setup")
    args = p.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("loopback only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
