#!/usr/bin/env python3
"""Growth curves (issue 18, item 5): store size, start-up time and replay
speed against the number of messages stored; server memory against the
number of channels.

    python3 benches/growth.py [--messages 10000,100000,300000,440000] [--payload 1024] [--runs 3]
                              [--channels 1000,10000,100000] [--out DIR] [--plots docs/bench]

For each count N: `heedbench --like-roostd --retention 0 --keep` writes N
messages of --payload bytes of pad into a fresh store through roostd's own
`Store::append_batch` (batches of 1000, each committed and synced; one
channel), so the store is byte for byte what roostd writes. Then, --runs
times, `roostd serve --data` on it, timed from exec to its "listening on"
line (opening LMDB, checking the file, reading what start-up reads), and its
VmRSS then. Then replay: roostd once more on that store, pinned to
--server-cpus, and --runs times `loadgen replay` (pinned to --loadgen-cpus,
as benches/run.sh pins them): one client subscribes with `since: 0` and
reads all N messages; messages/s from the `sub` to the last message, server
CPU per message, the generator's own CPU.

For each channel count C (--channels; "" skips this part): roostd on a fresh
store (`--max-channels` C + 10), then its VmRSS (1) idle, (2) after
examples/fill_channels.py created C channels with one message each, (3) with
every one of the C channels also subscribed (C / 256 connections, 256
`sub`s each: roostd's --max-subscriptions), 2 s after the last `subok`, and
(4) after a restart on that store (nothing subscribed); each also as RssAnon
(heap and stacks, without the store pages LMDB's map brought in).

Results: one JSON line per N and per C in OUT/growth.jsonl; plots
growth-store.png, growth-startup.png, growth-replay.png and
growth-channels.png into --plots (matplotlib from benches/.venv, as
report.py makes it). Binaries: --bin-dir, default target/release (build them
first: cargo build --release --bin roostd --example heedbench --example
loadgen; `benches/run.sh growth` builds them and runs this). Stores
go under OUT (default a new /tmp/roostd-growth.XXXX): the disk under test.
"""

import argparse
import base64
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "growth-secret-0123456789abcdef0123456789abcdef"
# roostd keeps 10,000 messages per channel by default and would trim the
# store under test right after start: keep them all (heedbench --retention 0).
KEEP_ALL = ["--retention-messages", "1000000000"]


def build_store(heedbench, out, n, payload):
    """A store of n messages under out; returns (its directory, heedbench's msgs/s)."""
    parent = out / f"store-{n}"
    shutil.rmtree(parent, ignore_errors=True)
    parent.mkdir(parents=True)
    res = subprocess.run([str(heedbench), "--like-roostd", "--retention", "0", "--keep", "--batch", "1000",
                          "--messages", str(n), "--payload", str(payload), "--dir", str(parent)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"growth.py: heedbench failed for {n} messages: {res.stderr.strip()[-300:]}")
    line = [x for x in res.stdout.splitlines() if x.startswith("{")][-1]
    rate = json.loads(line)["runs"][0]["msgs_per_s"]
    (store,) = [p for p in parent.iterdir() if p.is_dir()]
    return store, rate


def vmrss(pid, field="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def rss_pair(pid):
    """VmRSS, and RssAnon: the heap and stacks alone, without the store's pages that
    LMDB's map brought in (those are the page cache's, shared, and dropped under pressure)."""
    return vmrss(pid), vmrss(pid, "RssAnon")


def start_once(roostd, store, port):
    """Seconds from exec to "listening on", and VmRSS then."""
    env = dict(os.environ, ROOSTD_SECRET=SECRET)
    t0 = time.monotonic()
    p = subprocess.Popen([str(roostd), "serve", "--listen", f"127.0.0.1:{port}", "--data", str(store), "--no-demo",
                          *KEEP_ALL],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in p.stdout:
            if "listening on" in line:
                return time.monotonic() - t0, vmrss(p.pid)
        raise RuntimeError(f"roostd exited ({p.wait()}) before listening on {store}")
    finally:
        p.terminate()
        p.wait()


def serve(roostd, store, port, cpus, *flags):
    """roostd serve on store, pinned to cpus; returns the process once it listens."""
    env = dict(os.environ, ROOSTD_SECRET=SECRET)
    p = subprocess.Popen(["taskset", "-c", cpus, str(roostd), "serve", "--listen", f"127.0.0.1:{port}", "--data",
                          str(store), "--no-demo", *KEEP_ALL, *flags],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in p.stdout:
        if "listening on" in line:
            return p
    raise RuntimeError(f"roostd exited ({p.wait()}) before listening on {store}")


def stop(p):
    p.terminate()
    p.wait()


def replay(roostd, loadgen, store, port, args):
    """--runs replays of the whole channel to one client; the JSON of each (loadgen's)."""
    p = serve(roostd, store, port, args.server_cpus)
    try:
        runs = []
        for _ in range(args.runs):
            res = subprocess.run(["taskset", "-c", args.loadgen_cpus, str(loadgen), "replay", "--url",
                                  f"ws://127.0.0.1:{port}", "--pid", str(p.pid), "--secret", SECRET],
                                 capture_output=True, text=True, timeout=300)
            line = [x for x in res.stdout.splitlines() if x.startswith("{")]
            out = json.loads(line[-1]) if line else {"error": res.stderr.strip()[-300:] or "no JSON"}
            if "error" in out:
                raise SystemExit(f"growth.py: loadgen replay failed on {store}: {out['error']}")
            runs.append(out)
        return runs
    finally:
        stop(p)


def summary(vals):
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def ws_open(port, token):
    """A raw WebSocket to roostd (no packages): the upgrade, its 101 read."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
              f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("roostd closed the connection during the upgrade")
        got += chunk
    if not got.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"upgrade refused: {got[:80]!r}")
    return s, got.split(b"\r\n\r\n", 1)[1]


def text_frame(text):
    """A masked client text frame (an all-zero mask: servers unmask whatever the key)."""
    p = text.encode()
    n = len(p)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    return head + b"\0\0\0\0" + p


def subscribe_all(port, token, channels, per_conn=256):
    """Subscribes to every channel, per_conn to a connection; returns the open sockets
    once every subok came (a refusal stops the run: its text says why)."""
    socks = []
    for first in range(0, len(channels), per_conn):
        s, rest = ws_open(port, token)
        mine = channels[first:first + per_conn]
        s.sendall(b"".join(text_frame(f'{{"op":"sub","ch":"{c}"}}') for c in mine))
        buf, ok = rest, 0
        while ok < len(mine):
            while len(buf) >= 2:
                n, at = buf[1] & 0x7F, 2
                if n == 126:
                    n, at = int.from_bytes(buf[2:4], "big"), 4
                elif n == 127:
                    n, at = int.from_bytes(buf[2:10], "big"), 10
                if len(buf) < at + n:
                    break
                payload, buf = buf[at:at + n], buf[at + n:]
                if b'"op":"subok"' in payload:
                    ok += 1
                elif b'"op":"err"' in payload:
                    raise RuntimeError(f"sub refused: {payload[:200]!r}")
            if ok < len(mine):
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("roostd closed a subscribing connection")
                buf += chunk
        socks.append(s)
    return socks


def channels_once(roostd, out, c, port, cpus):
    """Server VmRSS with c channels: idle, filled, all subscribed, after a restart."""
    store = out / f"channels-{c}"
    shutil.rmtree(store, ignore_errors=True)
    flags = ["--max-channels", str(c + 10), "--max-connections-per-ip", "20000", "--publish-rate", "0"]
    env = dict(os.environ, ROOSTD_SECRET=SECRET)
    token = subprocess.run([str(roostd), "token", "--sub", "growth", "--read", "*", "--write", "*"],
                           capture_output=True, text=True, env=env, check=True).stdout.strip()
    p = serve(roostd, store, port, cpus, *flags)
    try:
        time.sleep(0.5)
        idle, idle_anon = rss_pair(p.pid)
        t0 = time.monotonic()
        subprocess.run(["python3", str(ROOT / "examples" / "fill_channels.py"), f"ws://127.0.0.1:{port}/ws", token,
                        str(c)], check=True, timeout=600)
        fill_s = time.monotonic() - t0
        time.sleep(2)
        filled, filled_anon = rss_pair(p.pid)
        socks = subscribe_all(port, token, [f"fill-{i}" for i in range(c)])
        time.sleep(2)
        subscribed, subscribed_anon = rss_pair(p.pid)
        for s in socks:
            s.close()
    finally:
        stop(p)
    p = serve(roostd, store, port + 1, cpus, *flags)
    try:
        time.sleep(2)
        restarted, restarted_anon = rss_pair(p.pid)
    finally:
        stop(p)
    size = (store / "data.mdb").stat().st_size
    shutil.rmtree(store, ignore_errors=True)
    return {"channels": c, "rss_idle_bytes": idle, "rss_filled_bytes": filled, "rss_subscribed_bytes": subscribed,
            "rss_restarted_bytes": restarted, "anon_idle_bytes": idle_anon, "anon_filled_bytes": filled_anon,
            "anon_subscribed_bytes": subscribed_anon, "anon_restarted_bytes": restarted_anon,
            "subscribing_connections": math.ceil(c / 256),
            "fill_s": round(fill_s, 2), "store_bytes": size,
            "filled_bytes_per_channel": round((filled - idle) / c, 1),
            "subscribed_bytes_per_channel": round((subscribed - filled) / c, 1),
            "anon_filled_bytes_per_channel": round((filled_anon - idle_anon) / c, 1),
            "anon_subscribed_bytes_per_channel": round((subscribed_anon - filled_anon) / c, 1)}


def have_matplotlib():
    """True when matplotlib imports; else re-runs this script with benches/.venv's Python
    (made by `python3 benches/report.py`) when that one has it."""
    try:
        import matplotlib  # noqa: F401

        return True
    except ImportError:
        pass
    py = ROOT / "benches" / ".venv" / "bin" / "python"
    if py.exists() and Path(sys.prefix).resolve() != py.parent.parent.resolve():
        os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])
    return False


def figure(outdir):
    """A new figure and axes (matplotlib without a display), outdir made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    return plt.subplots(figsize=(7, 4))


def finish(fig, ax, outdir, name, title, xlabel, ylabel, legend=True):
    """Labels, grid, (legend), saved as outdir/name; returns [name]."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / name, dpi=110)
    plt.close(fig)
    return [name]


def median_bars(ax, xs, stats, scale, goal, goal_text, **kw):
    """Medians with min-max bars (stats: summary() dicts), and a dashed goal line."""
    med = [s["median"] * scale for s in stats]
    lo = [m - s["min"] * scale for m, s in zip(med, stats)]
    hi = [s["max"] * scale - m for m, s in zip(med, stats)]
    ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, **kw)
    ax.axhline(goal, color="grey", ls="--", lw=1)
    ax.text(xs[0], goal, goal_text, va="bottom", fontsize=8, color="grey")


def plots(rows, outdir):
    """growth-store.png, growth-startup.png and growth-replay.png from the message rows."""
    xs = [r["messages"] for r in rows]
    fig, ax = figure(outdir)
    ax.plot(xs, [r["store_bytes"] / 2**20 for r in rows], marker="o", label="data.mdb (file length)")
    ax.plot(xs, [r["store_disk_bytes"] / 2**20 for r in rows], marker="s", ls="--", label="on disk (allocated)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    made = finish(fig, ax, outdir, "growth-store.png", f"Store size vs messages ({rows[0]['payload']} B of pad each)",
                  "messages stored (one channel)", "MiB (log)")
    fig, ax = figure(outdir)
    median_bars(ax, [r["store_bytes"] / 2**20 for r in rows], [r["startup_s"] for r in rows], 1000, 1000,
                " 1 s goal")
    ax.set_xscale("log")
    made += finish(fig, ax, outdir, "growth-startup.png", "Start-up time vs store size", "store size (MiB, log)",
                   "exec → listening (ms)", legend=False)
    fig, ax = figure(outdir)
    median_bars(ax, xs, [r["replay_msgs_per_s"] for r in rows], 1 / 1000, 200, " 200k/s goal",
                label="roostd → one resuming client")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    return made + finish(fig, ax, outdir, "growth-replay.png",
                         f"Replay speed, sub since 0 ({rows[0]['payload']} B of pad each)",
                         "messages stored and replayed (one channel)", "thousand messages/s")


def plot_channels(chans, outdir):
    xs = [c["channels"] for c in chans]
    fig, ax = figure(outdir)
    for key, label, mark, color in [("subscribed", "every channel subscribed", "s", "C0"),
                                    ("filled", "after creating them (one message each)", "o", "C1"),
                                    ("restarted", "after a restart (none subscribed)", "^", "C2")]:
        ax.plot(xs, [c[f"rss_{key}_bytes"] / 2**20 for c in chans], marker=mark, color=color,
                label=f"{label}: VmRSS")
        ax.plot(xs, [c[f"anon_{key}_bytes"] / 2**20 for c in chans], marker=mark, color=color, ls="--",
                label=f"{label}: RssAnon (heap)")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    return finish(fig, ax, outdir, "growth-channels.png", "Server memory vs channels", "channels",
                  "server memory (MiB)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 440,000 messages of 1 KiB fill about 1 GiB, near roostd's default --max-store-bytes.
    ap.add_argument("--messages", default="10000,100000,300000,440000")
    ap.add_argument("--payload", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out")
    ap.add_argument("--plots", default=str(ROOT / "docs" / "bench"))
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--channels", default="1000,10000,100000", help='channel counts ("" for none)')
    ap.add_argument("--port", type=int, default=18990)
    ap.add_argument("--server-cpus", default="0", help="taskset list of roostd for the replay and channels")
    ap.add_argument("--loadgen-cpus", default="1", help="taskset list of loadgen replay")
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"),
                    help="where roostd and examples/{heedbench,loadgen} are (run.sh: its PROFILE's)")
    args = ap.parse_args()
    if not args.no_plots and not have_matplotlib():
        sys.exit("growth.py: no matplotlib: run python3 benches/report.py once (it makes benches/.venv), "
                 "or give --no-plots")
    out = Path(args.out or tempfile.mkdtemp(prefix="roostd-growth."))
    bins = Path(args.bin_dir)
    roostd, heedbench, loadgen = bins / "roostd", bins / "examples" / "heedbench", bins / "examples" / "loadgen"
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
    rows = []
    for n in [int(x) for x in args.messages.split(",") if x]:
        store, rate = build_store(heedbench, out, n, args.payload)
        size = (store / "data.mdb").stat().st_size
        disk = (store / "data.mdb").stat().st_blocks * 512
        starts = [start_once(roostd, store, args.port + i) for i in range(args.runs)]
        secs = [s for s, _ in starts]
        row = {"messages": n, "payload": args.payload, "git": git.stdout.strip(), "store_bytes": size,
               "store_disk_bytes": disk, "bytes_per_message": round(size / n, 1), "heedbench_msgs_per_s": rate,
               "startup_s": {"median": statistics.median(secs), "min": min(secs), "max": max(secs), "n": len(secs)},
               "rss_after_start_bytes": statistics.median(r for _, r in starts)}
        reps = replay(roostd, loadgen, store, args.port + args.runs, args)
        row.update({"replay_msgs_per_s": summary([r["msgs_per_s"] for r in reps]),
                    "replay_mb_per_s": summary([r["mb_per_s"] for r in reps]),
                    "replay_first_message_ms": summary([r["first_message_ms"] for r in reps]),
                    "replay_server_cpu_us_per_msg": summary([r["server_cpu_us_per_msg"] for r in reps]),
                    "replay_generator_cpu_pct": max(r["generator_cpu_pct"] for r in reps),
                    "replay_other_busy_pct": max(r.get("other_busy_pct") or 0 for r in reps),
                    "replay_messages": [r["messages"] for r in reps]})
        if any(m != n for m in row["replay_messages"]):
            raise SystemExit(f"growth.py: a replay of {n} messages delivered {row['replay_messages']}")
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(out / "growth.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        shutil.rmtree(store.parent, ignore_errors=True)
    chans = []
    for c in [int(x) for x in args.channels.split(",") if x]:
        row = channels_once(roostd, out, c, args.port + 50, args.server_cpus)
        row["git"] = git.stdout.strip()
        chans.append(row)
        print(json.dumps(row), flush=True)
        with open(out / "growth.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    if not args.no_plots:
        made = []
        if rows:
            made += plots(rows, Path(args.plots))
        if chans:
            made += plot_channels(chans, Path(args.plots))
        print(f"growth.py: plots in {args.plots}: {', '.join(made)}", file=sys.stderr)
    print(f"growth.py: results in {out / 'growth.jsonl'}", file=sys.stderr)


if __name__ == "__main__":
    main()
