#!/usr/bin/env python3
"""Growth curves (issue 18, item 5): store size and start-up time against
the number of messages stored.

    python3 benches/growth.py [--messages 10000,100000,300000,440000] [--payload 1024] [--runs 3]
                              [--out DIR] [--plots docs/bench]

For each count N: `heedbench --like-roostd --retention 0 --keep` writes N
messages of --payload bytes of pad into a fresh store through roostd's own
`Store::append_batch` (batches of 1000, each committed and synced; one
channel), so the store is byte for byte what roostd writes. Then, --runs
times, `roostd serve --data` on it, timed from exec to its "listening on"
line (opening LMDB, checking the file, reading what start-up reads), and its
VmRSS then. Results: one JSON line per N in OUT/growth.jsonl; plots
growth-store.png and growth-startup.png into --plots (matplotlib from
benches/.venv, as report.py makes it). Binaries: target/release (build them
first: cargo build --release --bin roostd --example heedbench). Stores go
under OUT (default a new /tmp/roostd-growth.XXXX): the disk under test.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "growth-secret-0123456789abcdef0123456789abcdef"


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


def vmrss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def start_once(roostd, store, port):
    """Seconds from exec to "listening on", and VmRSS then."""
    env = dict(os.environ, ROOSTD_SECRET=SECRET)
    t0 = time.monotonic()
    p = subprocess.Popen([str(roostd), "serve", "--listen", f"127.0.0.1:{port}", "--data", str(store), "--no-demo"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in p.stdout:
            if "listening on" in line:
                return time.monotonic() - t0, vmrss(p.pid)
        raise RuntimeError(f"roostd exited ({p.wait()}) before listening on {store}")
    finally:
        p.terminate()
        p.wait()


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


def plots(rows, outdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    xs = [r["messages"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, [r["store_bytes"] / 2**20 for r in rows], marker="o", label="data.mdb (file length)")
    ax.plot(xs, [r["store_disk_bytes"] / 2**20 for r in rows], marker="s", ls="--", label="on disk (allocated)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("messages stored (one channel)")
    ax.set_ylabel("MiB (log)")
    ax.set_title(f"Store size vs messages ({rows[0]['payload']} B of pad each)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "growth-store.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    med = [r["startup_s"]["median"] * 1000 for r in rows]
    lo = [m - r["startup_s"]["min"] * 1000 for m, r in zip(med, rows)]
    hi = [r["startup_s"]["max"] * 1000 - m for m, r in zip(med, rows)]
    ax.errorbar([r["store_bytes"] / 2**20 for r in rows], med, yerr=[lo, hi], marker="o", capsize=3)
    ax.axhline(1000, color="grey", ls="--", lw=1)
    ax.text(ax.get_xlim()[0], 1000, " 1 s goal", va="bottom", fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("store size (MiB, log)")
    ax.set_ylabel("exec → listening (ms)")
    ax.set_title("Start-up time vs store size")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(outdir / "growth-startup.png", dpi=110)
    plt.close(fig)
    return ["growth-store.png", "growth-startup.png"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 440,000 messages of 1 KiB fill about 1 GiB, near roostd's default --max-store-bytes.
    ap.add_argument("--messages", default="10000,100000,300000,440000")
    ap.add_argument("--payload", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out")
    ap.add_argument("--plots", default=str(ROOT / "docs" / "bench"))
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--port", type=int, default=18990)
    args = ap.parse_args()
    if not args.no_plots and not have_matplotlib():
        sys.exit("growth.py: no matplotlib: run python3 benches/report.py once (it makes benches/.venv), "
                 "or give --no-plots")
    out = Path(args.out or tempfile.mkdtemp(prefix="roostd-growth."))
    roostd, heedbench = ROOT / "target/release/roostd", ROOT / "target/release/examples/heedbench"
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
    rows = []
    for n in [int(x) for x in args.messages.split(",")]:
        store, rate = build_store(heedbench, out, n, args.payload)
        size = (store / "data.mdb").stat().st_size
        disk = (store / "data.mdb").stat().st_blocks * 512
        starts = [start_once(roostd, store, args.port + i) for i in range(args.runs)]
        secs = [s for s, _ in starts]
        row = {"messages": n, "payload": args.payload, "git": git.stdout.strip(), "store_bytes": size,
               "store_disk_bytes": disk, "bytes_per_message": round(size / n, 1), "heedbench_msgs_per_s": rate,
               "startup_s": {"median": statistics.median(secs), "min": min(secs), "max": max(secs), "n": len(secs)},
               "rss_after_start_bytes": statistics.median(r for _, r in starts)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(out / "growth.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        shutil.rmtree(store.parent, ignore_errors=True)
    if not args.no_plots:
        made = plots(rows, Path(args.plots))
        print(f"growth.py: plots in {args.plots}: {', '.join(made)}", file=sys.stderr)
    print(f"growth.py: results in {out / 'growth.jsonl'}", file=sys.stderr)


if __name__ == "__main__":
    main()
