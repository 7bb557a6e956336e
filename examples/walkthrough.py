#!/usr/bin/env python3
"""The README's client steps as a script that works when pasted, also without a terminal.

Publish (step 3): subscribe to CHANNEL, publish TEXT with a new unique id,
print every answer as JSON lines, and exit once the message is acked and
delivered back:

    python3 examples/walkthrough.py "ws://127.0.0.1:8080/ws?token=$TOKEN" room:1 'hello'

Resume (step 4): subscribe with `since` and the store's epoch, print what was
published after SEQ, and exit once caught up:

    python3 examples/walkthrough.py "ws://127.0.0.1:8080/ws?token=$TOKEN" room:1 --since 1

Like any resuming client it remembers the epoch it last saw, here in
./roost-cursor.json (give --epoch to use another). Needs `websockets`
(pip install websockets). Exit status 1 on an `err` answer.
"""

import argparse
import asyncio
import json
import sys
import uuid

import websockets

CURSOR = "roost-cursor.json"
TIMEOUT = 10  # seconds to wait for any one answer


def show(answer):
    print(json.dumps(answer, separators=(",", ":")), flush=True)
    if answer.get("op") == "err":
        sys.exit(f"walkthrough.py: the server refused: {answer.get('code')}: {answer.get('msg', '')}")


def remember(epoch):
    with open(CURSOR, "w") as f:
        json.dump({"epoch": epoch}, f)


async def publish(ws, ch, text):
    await ws.send(json.dumps({"op": "sub", "ch": ch, "id": "sub"}))
    # A new id per message: the server stores a (sub, id) pair once, so a
    # resend after a lost connection is safe, but a reused id is not a new message.
    msg_id = f"m-{uuid.uuid4().hex[:12]}"
    await ws.send(json.dumps({"op": "pub", "ch": ch, "data": {"text": text}, "id": msg_id}))
    seq = None
    delivered = set()
    while seq is None or seq not in delivered:
        answer = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        show(answer)
        if answer.get("op") == "subok":
            remember(answer["epoch"])
        elif answer.get("op") == "ack" and answer.get("id") == msg_id:
            seq = answer["seq"]
        elif answer.get("op") == "msg" and answer.get("ch") == ch:
            delivered.add(answer["seq"])


async def resume(ws, ch, since, epoch):
    await ws.send(json.dumps({"op": "sub", "ch": ch, "since": since, "epoch": epoch, "id": "sub"}))
    last = None
    seen = since
    while last is None or seen < last:
        answer = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        show(answer)
        if answer.get("op") == "subok":
            last = answer["seq"]
            remember(answer["epoch"])
        elif answer.get("op") == "msg" and answer.get("ch") == ch:
            seen = answer["seq"]


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("url", help='ws://127.0.0.1:8080/ws?token=...')
    p.add_argument("channel")
    p.add_argument("text", nargs="?", help="publish this text (omit with --since)")
    p.add_argument("--since", type=int, help="resume after this seq instead of publishing")
    p.add_argument("--epoch", help=f"the store's epoch (default: the one saved in {CURSOR})")
    a = p.parse_args()
    if (a.text is None) == (a.since is None):
        p.error("give a TEXT to publish, or --since SEQ to resume")
    async with websockets.connect(a.url) as ws:
        if a.text is not None:
            await publish(ws, a.channel, a.text)
        else:
            epoch = a.epoch
            if epoch is None:
                try:
                    with open(CURSOR) as f:
                        epoch = json.load(f)["epoch"]
                except (OSError, ValueError, KeyError):
                    p.error(f"no {CURSOR} here: publish once first, or give --epoch")
            await resume(ws, a.channel, a.since, epoch)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except asyncio.TimeoutError:
        sys.exit(f"walkthrough.py: no answer within {TIMEOUT} s")
