#!/usr/bin/env python3
"""Hold N idle MQTT 3.1.1 subscribers open against a broker (e.g. Mosquitto).

Peer tool for roostd's side-by-side benchmarks (issue #7): it gives the
broker's idle memory per client, to set beside roostd's idle memory per
WebSocket connection. Each client is a raw TCP socket that sends a hand-built
CONNECT (clean session, keepalive --keepalive) and a QoS 0 SUBSCRIBE to one
topic, and waits for CONNACK and SUBACK. When all N are up it prints
`READY N` to stderr, holds them for --hold seconds, then sends DISCONNECT and
closes them. Standard library only; raises RLIMIT_NOFILE's soft limit to the
hard limit so that N up to 9000 works in one process.

    python3 mqtt_idle.py --port 19100 -n 2000 --hold 120
"""

import argparse
import os
import resource
import socket
import sys
import time


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def connect_packet(client_id: str, keepalive: int) -> bytes:
    # Protocol name "MQTT", level 4 (3.1.1), flags: clean session only.
    body = utf8("MQTT") + bytes([4, 0x02]) + keepalive.to_bytes(2, "big") + utf8(client_id)
    return bytes([0x10]) + remaining_length(len(body)) + body


def subscribe_packet(packet_id: int, topic: str) -> bytes:
    body = packet_id.to_bytes(2, "big") + utf8(topic) + bytes([0])  # QoS 0
    return bytes([0x82]) + remaining_length(len(body)) + body


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def open_batch(args, first: int, count: int) -> list:
    """Open `count` clients: send CONNECT+SUBSCRIBE on all, then read the acks."""
    socks = []
    for i in range(first, first + count):
        s = socket.create_connection((args.host, args.port), timeout=args.timeout)
        s.sendall(connect_packet(f"{args.client_prefix}-{os.getpid()}-{i}", args.keepalive)
                  + subscribe_packet(1, args.topic))
        socks.append(s)
    for s in socks:
        connack = recv_exact(s, 4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"CONNACK refused: {connack.hex()}")
        suback = recv_exact(s, 5)
        if suback[0] != 0x90 or suback[4] not in (0, 1, 2):
            raise ConnectionError(f"SUBACK refused: {suback.hex()}")
    return socks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=19100)
    p.add_argument("-n", "--count", type=int, default=1000, help="clients to hold open")
    p.add_argument("--hold", type=float, default=120.0, help="seconds to hold them once READY")
    p.add_argument("--keepalive", type=int, default=0, help="MQTT keepalive in seconds (0 = none)")
    p.add_argument("--topic", default="bench/idle")
    p.add_argument("--client-prefix", default="idle")
    p.add_argument("--batch", type=int, default=200, help="clients connected per round trip")
    p.add_argument("--timeout", type=float, default=30.0, help="socket timeout in seconds")
    args = p.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("loopback only")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = args.count + 16
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        print(f"RLIMIT_NOFILE hard limit {hard} is below {need}; raise it (ulimit -Hn)",
              file=sys.stderr)
        return 2

    socks = []
    t0 = time.monotonic()
    try:
        while len(socks) < args.count:
            socks += open_batch(args, len(socks), min(args.batch, args.count - len(socks)))
        print(f"READY {len(socks)}", file=sys.stderr, flush=True)
        print(f"connected {len(socks)} in {time.monotonic() - t0:.1f} s; holding {args.hold:g} s",
              file=sys.stderr, flush=True)
        time.sleep(args.hold)
    finally:
        for s in socks:
            try:
                s.sendall(b"\xe0\x00")  # DISCONNECT
            except OSError:
                pass
            s.close()
    print(f"closed {len(socks)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
