#!/usr/bin/env python3
"""Tables and plots from a benches/run.sh run.

    python3 benches/report.py OUT                 # OUT: run.sh's directory (or its results.jsonl)
    python3 benches/report.py OUT --no-plots --check

Reads OUT/results.jsonl (one JSON line per sample), OUT/plan.jsonl (the
samples run.sh meant to take) and OUT/meta.json (machine, command). For each
cell (benchmark, parameters, server) it takes the median and the range
(min-max) over the runs, the ratios roostd / peer of the medians, and each
goal of issue #7 as met or missed from those numbers. It writes:

- the markdown between `<!-- suite:begin -->` and `<!-- suite:end -->` in
  --doc (default docs/benchmarks.md; for a --smoke run, or results without
  OUT/meta.json, OUT/benchmarks.md, so a smoke run never rewrites the docs). Markers missing: they are added before
  the file's first `## ` heading. The rest of the file is left alone.
- PNG plots into --plots (default docs/bench/; likewise OUT/bench/):
  rss-vs-conns.png (B1), latency.png and latency-spectrum.png (B4), b2-cpu-per-msg.png,
  b3-cpu-per-delivery.png. They need matplotlib: when it cannot be imported,
  this script makes the venv benches/.venv (python3 -m venv), installs it
  there with pip and runs itself again with that Python.

--check: exit 1 when a planned sample has no result, a result has an
"error", or a scenario did no work (nothing echoed, delivered, acked,
upgraded; connections not ready; no server CPU or RSS figure). No timing
thresholds. The check runs before anything is written: with --check, or when
the tables or plots would go into the repository's docs/, a run with a
problem writes nothing (exit 1). --no-doc: write no markdown.

Verdicts come only from data: a goal over several cells (or servers) gets
"–", never "met", while any of them lacks its figure (a planned cell with no
result, a result with an "error", a missing field such as B8's fd_growth).
Each figure says how many samples it rests on ("n=3"). Results of different
commits (each row's "git", else its run's meta.json) are never pooled: the
script refuses them (exit 2) and says which came from where; report each run
on its own. Tests: benches/test_report.py.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "benches" / ".venv"
MATPLOTLIB = "matplotlib>=3.6,<4"
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"

ORDER = ["roostd", "roostd-tls", "uws", "tokio", "node", "mosquitto"]
NAMES = {
    "roostd": "roostd",
    "roostd-tls": "roostd (TLS)",
    "uws": "uWebSockets",
    "tokio": "tokio-tungstenite",
    "node": "Node ws",
    "mosquitto": "Mosquitto",
    "heedbench-plain": "heedbench",
    "heedbench-like-roostd": "heedbench --like-roostd",
    "roostd-ack": "roostd pub → ack (commit)",
}
COLORS = {"roostd": "#d62728", "roostd-tls": "#8c564b", "roostd-ack": "#f2a0a0", "uws": "#1f77b4", "tokio": "#ff7f0e", "node": "#2ca02c", "mosquitto": "#9467bd"}
PEERS = ["uws", "tokio", "node"]
SEND_CAP = 1 << 20  # roostd's default --max-send-buffer-bytes (B7's bound per slow subscriber)


# ---------------------------------------------------------------- matplotlib


def ensure_matplotlib():
    """Import matplotlib, or re-run this script in benches/.venv where it is installed."""
    try:
        import matplotlib  # noqa: F401

        return
    except ImportError:
        pass
    py = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", MATPLOTLIB],
                       check=True)
        return
    if not py.exists():
        print(f"report.py: making {VENV} for matplotlib", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    check = subprocess.run([str(py), "-c", "import matplotlib"], capture_output=True)
    if check.returncode != 0:
        print(f"report.py: installing {MATPLOTLIB} into {VENV}", file=sys.stderr)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", MATPLOTLIB],
                       check=True)
    os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])


# ---------------------------------------------------------------- numbers


def get(row, path):
    """row["a"]["b"] for path "a.b"; None when absent."""
    v = row
    for k in path.split("."):
        if isinstance(v, list) and k.isdigit() and int(k) < len(v):
            v = v[int(k)]
        elif isinstance(v, dict) and k in v:
            v = v[k]
        else:
            return None
    return v


class Results:
    def __init__(self, rows, plan=()):
        self.rows = [r for r in rows if "error" not in r]
        self.all = rows
        # A planned cell with no usable result still gets its row (of "–")
        # and takes the verdict of every goal it belongs to away.
        self.plan = list(plan)

    def select(self, bench, cell=None, server=None):
        return [r for r in self.rows if r.get("bench") == bench and (cell is None or r.get("cell") == str(cell))
                and (server is None or r.get("server") == server)]

    def cells(self, bench):
        seen = []
        for r in self.rows + self.plan:
            if r.get("bench") == bench and str(r.get("cell")) not in seen:
                seen.append(str(r.get("cell")))
        return seen

    def servers(self, bench, cell=None):
        present = {r["server"] for r in self.select(bench, cell)}
        present |= {p["server"] for p in self.plan if p.get("bench") == bench
                    and (cell is None or str(p.get("cell")) == str(cell))}
        return [s for s in ORDER if s in present] + sorted(present - set(ORDER))

    def params(self, bench, cell=None):
        """The params of the first result (or planned sample) of bench (and cell); {} when none."""
        for r in self.select(bench, cell) + [p for p in self.plan if p.get("bench") == bench
                                             and (cell is None or str(p.get("cell")) == str(cell))]:
            if isinstance(r.get("params"), dict):
                return r["params"]
        return {}

    def meds(self, bench, cells, server, metric):
        """{cell: median} when every cell has a figure for server, else None: a goal over
        several cells gets no verdict while one of them is missing."""
        out = {c: self.med(bench, c, server, metric) for c in cells}
        return None if not cells or None in out.values() else out

    def missing(self, bench, cells, servers, metric):
        """ "cell server" for each (cell, server) without a figure, for a goal's text."""
        return [f"{c} {NAMES.get(s, s)}" for c in cells for s in servers if self.med(bench, c, s, metric) is None]

    def stat(self, bench, cell, server, metric):
        """(median, min, max, n) of metric over the runs, or None."""
        vals = []
        for r in self.select(bench, cell, server):
            v = metric(r) if callable(metric) else get(r, metric)
            if isinstance(v, (int, float)):
                vals.append(float(v))
        if not vals:
            return None
        return statistics.median(vals), min(vals), max(vals), len(vals)

    def med(self, bench, cell, server, metric):
        s = self.stat(bench, cell, server, metric)
        return s[0] if s else None


def fmt_num(v, digits=None):
    if v is None:
        return "–"
    if digits is None:
        a = abs(v)
        digits = 0 if a >= 100 else 1 if a >= 10 else 2 if a >= 0.1 else 3
    if abs(v) < 0.5 * 10 ** -digits:
        v = 0.0  # no "-0.00"
    return f"{v:,.{digits}f}"


def fmt_stat(s, scale=1.0, digits=None):
    """"median (min–max, n=N)": how many samples each figure rests on is always shown."""
    if s is None:
        return "–"
    med, lo, hi, n = s
    text = fmt_num(med * scale, digits)
    a, b = fmt_num(lo * scale, digits), fmt_num(hi * scale, digits)
    if n > 1 and a != b:
        return text + f" ({a}–{b}, n={n})"
    return text + f" (n={n})"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}×"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def verdict(ok):
    return "–" if ok is None else ("**met**" if ok else "**missed**")


# ---------------------------------------------------------------- the benchmarks


def gen_load(r):
    """The generator's CPU against its budget (loadgen --threads), else its CPU share of one core."""
    v = r.get("generator_load_pct")
    return r.get("generator_cpu_pct") if v is None else v


def server_cpu_pct(r):
    """The server's CPU over a fan-out run, % of one core: CPU-µs per delivery × deliveries/s."""
    per, rate = r.get("server_cpu_us_per_delivered"), r.get("delivered_per_s")
    if not isinstance(per, (int, float)) or not isinstance(rate, (int, float)):
        return None
    return per * rate / 1e4


def warnings(R):
    """Lines for the results run.sh flagged (a generator above 70 % of its CPU budget)."""
    return [f"- {r.get('bench')} {NAMES.get(r.get('server'), r.get('server'))} {r.get('cell')} run {r.get('run')}: {w}"
            for r in R.rows for w in r.get("warnings") or []]


def ratio_goal(R, bench, label, cells, num, den, metric, ok, unit, prefix=""):
    """A goal on num ÷ den at every cell: (bench, label, text, verdict), the verdict
    None when there is no cell or any cell lacks either figure."""
    a, b = R.meds(bench, cells, num, metric), R.meds(bench, cells, den, metric)
    if not cells:
        return bench, label, "no cell", None
    if a is None or b is None:
        return bench, label, "no figure for " + ", ".join(R.missing(bench, cells, [num, den], metric)), None
    rs = [(c, ratio(a[c], b[c])) for c in cells]
    text = prefix + ", ".join(f"{fmt_ratio(r)} at {int(c):,} {unit}" for c, r in rs)
    return bench, label, text, None if any(r is None for _, r in rs) else all(ok(r) for _, r in rs)


def b1(R, goals):
    cells = sorted(R.cells("B1"), key=int)
    if not cells:
        return None
    servers = [s for s in ORDER if any(R.select("B1", c, s) for c in cells)
               or any(p.get("bench") == "B1" and p.get("server") == s for p in R.plan)]
    peers = [s for s in servers if s not in ("roostd", "roostd-tls")]
    head = ["connections"] + [f"{NAMES[s]} B/conn" for s in servers]
    head += [f"roostd ÷ {NAMES[p]}" for p in peers]
    rows = []
    for c in cells:
        row = [f"{int(c):,}"] + [fmt_stat(R.stat("B1", c, s, "bytes_per_conn"), digits=0) for s in servers]
        mine = R.med("B1", c, "roostd", "bytes_per_conn")
        row += [fmt_ratio(ratio(mine, R.med("B1", c, p, "bytes_per_conn"))) for p in peers]
        rows.append(row)
    rss = [["connections"] + [f"{NAMES[s]} MiB" for s in servers]]
    for c in cells:
        rss.append([f"{int(c):,}"] + [fmt_stat(R.stat("B1", c, s, "rss_after_bytes"), 1 / 1048576, 1) for s in servers])
    split = R.params("B1").get("split") or 9000
    text = [
        "### B1: memory per idle connection",
        "",
        "N idle connections (roostd: authenticated and subscribed; roostd (TLS): the same over `wss://`, held by "
        "benches/tls_idle.py; WebSocket peers: open on `/idle`; Mosquitto: "
        f"MQTT clients subscribed to one topic), from two generator processes when N > {split:,}. Server VmRSS read by run.sh before they connect and 2 s after every generator said READY; "
        "bytes per connection = difference ÷ N. **Lower is better**, so is each ratio.",
        "",
        table(head, rows),
        "",
        "Server VmRSS with the connections held:",
        "",
        table(rss[0], rss[1:]),
    ]
    # Issue 18: an idle TLS connection under 4 KiB at every N measured.
    if "roostd-tls" in servers:
        tls = R.meds("B1", cells, "roostd-tls", "bytes_per_conn")
        if tls is None:
            goals.append(("B1", "TLS: < 4 KiB per idle connection", "no figure for "
                          + ", ".join(R.missing("B1", cells, ["roostd-tls"], "bytes_per_conn")), None))
        else:
            goals.append(("B1", "TLS: < 4 KiB per idle connection",
                          ", ".join(f"{tls[c]:,.0f} B at {int(c):,}" for c in cells),
                          all(v < 4096 for v in tls.values())))
    # The goal is about N ≥ 5k: without such a cell, or with one of them
    # missing a figure, there is no verdict (never "met" from nothing).
    big = [c for c in cells if int(c) >= 5000]
    mine = R.meds("B1", big, "roostd", "bytes_per_conn")
    if not big:
        goals.append(("B1", "≤ 1 KiB per idle connection (N ≥ 5k)", "no cell at N ≥ 5k", None))
    elif mine is None:
        goals.append(("B1", "≤ 1 KiB per idle connection (N ≥ 5k)",
                      "no figure for " + ", ".join(R.missing("B1", big, ["roostd"], "bytes_per_conn")), None))
    else:
        worst = max(mine.values())
        goals.append(("B1", "≤ 1 KiB per idle connection (N ≥ 5k)",
                      f"worst median {worst:,.0f} B at N = {', '.join(big)}", worst <= 1024))
    theirs = R.meds("B1", big, "uws", "bytes_per_conn")
    if mine is None or theirs is None:
        gaps = R.missing("B1", big, ["roostd", "uws"], "bytes_per_conn")
        goals.append(("B1", "moonshot: below uWS per connection",
                      "no figure for " + ", ".join(gaps) if gaps else "no cell at N ≥ 5k", None))
    else:
        moon = [(c, ratio(mine[c], theirs[c])) for c in big]
        goals.append(("B1", "moonshot: below uWS per connection",
                      ", ".join(f"{fmt_ratio(r)} at {int(c):,}" for c, r in moon),
                      None if None in (r for _, r in moon) else all(r < 1 for _, r in moon)))
    return "\n".join(text)


def b2(R, goals):
    cells = sorted(R.cells("B2"), key=int)
    if not cells:
        return None
    servers = R.servers("B2")
    peers = [s for s in servers if s != "roostd"]
    metric = "server_cpu_us_per_msg"
    head = ["payload"] + [f"{NAMES[s]} µs/msg" for s in servers] + [f"roostd ÷ {NAMES[p]}" for p in peers]
    rows, rate_rows = [], []
    for c in cells:
        mine = R.med("B2", c, "roostd", metric)
        rows.append([f"{int(c):,} B"] + [fmt_stat(R.stat("B2", c, s, metric)) for s in servers]
                    + [fmt_ratio(ratio(mine, R.med("B2", c, p, metric))) for p in peers])
        rate_rows.append([f"{int(c):,} B"] + [fmt_stat(R.stat("B2", c, s, "msgs_per_s"), digits=0) for s in servers]
                         + [f"{fmt_num(R.med('B2', c, s, gen_load), 0)} %" for s in servers])
    conns = R.params("B2").get("conns")
    text = [
        "### B2: echo, server CPU per message",
        "",
        f"Closed loop: {conns} connections each keep one text message in flight (`loadgen echo`; roostd "
        "`serve --echo`, peers `/echo`). Server CPU-µs per echoed message (`/proc/PID/stat`, all threads): "
        "**lower is better**, so is each ratio.",
        "",
        table(head, rows),
        "",
        "Messages echoed per second, and the generator's own CPU (near 100 %: it, not the server, was the limit):",
        "",
        table(["payload"] + [f"{NAMES[s]} msg/s" for s in servers] + [f"gen. CPU ({NAMES[s]})" for s in servers],
              rate_rows),
    ]
    # Issue 18: at every payload, 16 KiB included (issue 7 allowed 1.3× there).
    goals.append(ratio_goal(R, "B2", "≤ 1.0× uWS CPU/msg at every payload", cells, "roostd", "uws", metric,
                            lambda r: r <= 1.0, "B"))
    goals.append(ratio_goal(R, "B2", "≥ 1.4× less CPU/msg than tokio-tungstenite", cells, "tokio", "roostd", metric,
                            lambda r: r >= 1.4, "B", prefix="tokio ÷ roostd: "))
    return "\n".join(text)


def b3(R, goals):
    cells = sorted(R.cells("B3"), key=int)
    if not cells:
        return None
    servers = R.servers("B3")
    peers = [s for s in servers if s != "roostd"]
    metric = "server_cpu_us_per_delivered"
    head = ["subscribers, publishes/s"] + [f"{NAMES[s]} µs/delivery" for s in servers]
    head += [f"roostd ÷ {NAMES[p]}" for p in peers]
    rows, rate_rows = [], []
    for c in cells:
        rate = R.params("B3", c).get("rate")
        label = f"{int(c):,}, {rate}/s"
        mine = R.med("B3", c, "roostd", metric)
        rows.append([label] + [fmt_stat(R.stat("B3", c, s, metric)) for s in servers]
                    + [fmt_ratio(ratio(mine, R.med("B3", c, p, metric))) for p in peers])
        rate_rows.append([label] + [fmt_stat(R.stat("B3", c, s, "delivered_per_s"), digits=0) for s in servers])
    text = [
        "### B3: fan-out, server CPU per delivery",
        "",
        "One publisher paced at the given rate, S subscribers on one channel (roostd: the real protocol, each "
        "publish committed and acked; peers: `/pub` → every `/sub`). Server CPU-µs per delivered message: "
        "**lower is better**, so is each ratio.",
        "",
        table(head, rows),
        "",
        "Deliveries per second:",
        "",
        table(["subscribers, publishes/s"] + [f"{NAMES[s]}" for s in servers], rate_rows),
    ]
    goals.append(ratio_goal(R, "B3", "≤ 1.0× uWS CPU per delivery", cells, "roostd", "uws", metric,
                            lambda r: r <= 1.0, "subs"))
    return "\n".join(text)


LAT = [("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9"), ("max_us", "max")]


def b4_cells(R):
    """B4's cells, the issue's rate first: 'SUBSxRATE' (older runs: 'SUBS')."""
    def rate(c):
        return -(R.params("B4", c).get("rate") or 0)
    return sorted(R.cells("B4"), key=rate)


def b4_samples(R, c, servers):
    """Lines under a B4 table: the generator's CPU in each sample, and what the
    delivery check and the bulk-drained sockets' backlog showed."""
    def each(s, f):
        return ", ".join("–" if f(r) is None else f"{f(r):,.0f}" for r in sorted(R.select("B4", c, s), key=lambda r: r.get("run", 0)))
    out = ["", "Generator CPU in each sample (% of its budget, the higher of the whole run and the sending window): "
           + "; ".join(f"{NAMES[s]} {each(s, gen_load)}" for s in servers) + "."]
    rows = R.select("B4", c)
    checks = [r.get("delivery_check") for r in rows]
    if rows and None not in checks:
        lost = sum(k.get("gaps") or 0 for k in checks)
        disorder = sum(k.get("out_of_order") or 0 for k in checks)
        late = [f"{NAMES[s]} {each(s, lambda r: get(r, 'delivery_check.min_per_subscriber'))}" for s in servers]
        out += ["", f"Every delivery checked, over {len(rows)} samples: {lost:,} lost (gaps in a subscriber's numbers), "
                f"{disorder:,} out of order. Fewest messages one subscriber had by the end, per sample (expected: "
                "every publish): " + "; ".join(late) + "."]
        backlog = [get(r, "delivery_check.bulk_max_backlog_bytes") for r in rows]
        if any(isinstance(b, (int, float)) for b in backlog):
            p0 = R.params("B4", c)
            rcv = [get(r, "delivery_check.rcvbuf_bytes") for r in rows]
            rmem = [get(r, "delivery_check.bulk_max_rmem_bytes") or 0 for r in rows]
            used, size = max(zip(rmem, rcv), key=lambda p: p[0] / (p[1] or 1))
            out += ["", f"One subscriber in {p0.get('timed_every')} timed; the others drained every {p0.get('drain')}: "
                    f"the most one drained socket held at a drain was {max(b or 0 for b in backlog):,} bytes of data; "
                    f"the fullest receive queue took {used:,} bytes of kernel memory (SO_MEMINFO) of its {size or 0:,} "
                    "(SO_RCVBUF)."]
    return out


def b4_check_goals(R, c, where, planned, goals):
    """B4's delivery check and drained-socket bound as goals, verdicts only when every sample has them."""
    rows = R.select("B4", c)
    checks = [r.get("delivery_check") for r in rows]
    label = f"no message lost or out of order at any subscriber ({where})"
    if not rows or None in checks or len(rows) < planned:
        goals.append(("B4", label, "no delivery check for some samples", None))
        return
    bad = sum((k.get("gaps") or 0) + (k.get("out_of_order") or 0) for k in checks)
    goals.append(("B4", label, f"{bad:,} lost or out of order over {len(rows)} samples", bad == 0))
    pairs = [(k.get("bulk_max_rmem_bytes"), k.get("rcvbuf_bytes")) for k in checks]
    if all(k.get("bulk_max_backlog_bytes") is None for k in checks):
        return  # every subscriber read at once: nothing drained
    label = f"a drained socket never held half its receive buffer, so no server write waited ({where})"
    if any(not isinstance(b, (int, float)) or not isinstance(r, (int, float)) for b, r in pairs):
        goals.append(("B4", label, "no backlog figure for some samples", None))
        return
    worst = max(b / r for b, r in pairs if r) if all(r for _, r in pairs) else None
    if worst is None:
        goals.append(("B4", label, "no receive-buffer size for some samples", None))
        return
    goals.append(("B4", label, f"at most {worst * 100:.1f} % of SO_RCVBUF (its memory, SO_MEMINFO)", worst < 0.5))


def b4(R, goals):
    cells = b4_cells(R)
    if not cells:
        return None
    text = [
        "### B4: publish → delivery latency",
        "",
        "One publisher paced at a fixed rate to the subscribers; latency from the send time stamped in each "
        "message to its arrival, in ms (roostd delivers a message once it is committed, so its delivery includes "
        "the fsync; its pub → ack is the commit as the publisher sees it). **Lower is better.**",
    ]
    for c in cells:
        servers = R.servers("B4", c)
        p0 = R.params("B4", c)
        rows = []
        for s in servers:
            rows.append([NAMES[s], "pub → delivery"]
                        + [fmt_stat(R.stat("B4", c, s, f"delivery_latency.{k}"), 1 / 1000, 2) for k, _ in LAT]
                        + [fmt_stat(R.stat("B4", c, s, "delivered_per_s"), digits=0),
                           fmt_stat(R.stat("B4", c, s, server_cpu_pct), digits=0),
                           fmt_stat(R.stat("B4", c, s, gen_load), digits=0)])
            if s == "roostd":
                rows.append(["roostd", "pub → ack (commit)"]
                            + [fmt_stat(R.stat("B4", c, s, f"pub_latency.{k}"), 1 / 1000, 2) for k, _ in LAT]
                            + ["", "", ""])
        where = f"{p0.get('rate')} msg/s to {p0.get('subscribers')} subscribers"
        text += [
            "",
            f"{where}, for {p0.get('duration')} (server CPU: % of its one core; generator: % of its CPU budget, "
            "over 70 % it may have been the limit):",
            "",
            table(["server", "latency"] + [label + " ms" for _, label in LAT]
                  + ["deliveries/s", "server CPU %", "generator %"], rows),
        ]
        mine = R.med("B4", c, "roostd", "delivery_latency.p99_us")
        side = [f"{NAMES[s]} {fmt_ratio(ratio(mine, R.med('B4', c, s, 'delivery_latency.p99_us')))}"
                for s in servers if s != "roostd"]
        if "roostd" in servers and side:
            text += ["", "roostd's delivery p99 (its fsync included) ÷ each peer's (no fsync): " + ", ".join(side) + "."]
        text += b4_samples(R, c, servers)
        # The generator must not be the limit: a verdict only when every sample of the cell has its load.
        loads = [gen_load(r) for r in R.select("B4", c)]
        planned = len([p for p in R.plan if p.get("bench") == "B4" and str(p.get("cell")) == c])
        b4_check_goals(R, c, where, planned, goals)
        if not loads or None in loads or len(loads) < planned:
            goals.append(("B4", f"the generator under 70 % of its CPU budget in every sample ({where})",
                          "no generator load for some samples", None))
        else:
            goals.append(("B4", f"the generator under 70 % of its CPU budget in every sample ({where})",
                          f"highest {max(loads):.0f} % over {len(loads)} samples", max(loads) < 70))
        d99 = R.med("B4", c, "roostd", "delivery_latency.p99_us")
        a99 = R.med("B4", c, "roostd", "pub_latency.p99_us")
        if d99 is not None and a99 is not None:
            goals.append(("B4", f"roostd: delivery p99 < commit (pub → ack) p99 + 1 ms ({where})",
                          f"delivery p99 {d99 / 1000:.2f} ms, ack p99 {a99 / 1000:.2f} ms", d99 < a99 + 1000))
        elif "roostd" in servers:
            goals.append(("B4", f"roostd: delivery p99 < commit (pub → ack) p99 + 1 ms ({where})",
                          "no roostd figure", None))
        for s in servers:
            if s == "roostd":
                continue
            v = R.med("B4", c, s, "delivery_latency.p99_us")
            goals.append(("B4", f"{NAMES[s]}: delivery p99 < 1 ms, no fsync ({where})",
                          "no figure" if v is None else f"p99 {v / 1000:.2f} ms", None if v is None else v < 1000))
    return "\n".join(text)


def b5(R, goals):
    cells = sorted(R.cells("B5"), key=int)
    if not cells:
        return None
    rows = []
    worst, gaps = None, []
    for c in cells:
        acked = R.med("B5", c, "roostd", "acked_per_s")
        plain = R.med("B5", c, "heedbench-plain", "runs.0.msgs_per_s")
        like = R.med("B5", c, "heedbench-like-roostd", "runs.0.msgs_per_s")
        r = ratio(acked, plain)
        if r is None:
            gaps.append(c)
        else:
            worst = r if worst is None else min(worst, r)
        rows.append([
            f"{int(c):,}",
            fmt_stat(R.stat("B5", c, "roostd", "acked_per_s"), digits=0),
            fmt_stat(R.stat("B5", c, "roostd", "latency.p99_us"), 1 / 1000, 2),
            fmt_stat(R.stat("B5", c, "roostd", "server_cpu_us_per_ack")),
            fmt_stat(R.stat("B5", c, "roostd", "mean_batch")),
            fmt_stat(R.stat("B5", c, "heedbench-plain", "runs.0.msgs_per_s"), digits=0),
            fmt_stat(R.stat("B5", c, "heedbench-like-roostd", "runs.0.msgs_per_s"), digits=0),
            fmt_ratio(r),
            fmt_ratio(ratio(acked, like)),
        ])
    text = [
        "### B5: durable publishes against raw LMDB",
        "",
        "P publishers each keep one publish in flight; an ack means the message is committed (fsync). Mean batch "
        "= Δ`roostd_messages_published_total` ÷ Δ`roostd_commits_total` over the run (`/metrics`). Then "
        "`heedbench` commits batches of that size (rounded) on the same disk: plain (one put per message) and "
        "`--like-roostd` (roostd's own `Store::append_batch`: dedupe, expiry, retention). "
        "**Higher is better** for msgs/s and for the ratios.",
        "",
        table(["publishers", "roostd acked/s", "ack p99 ms", "CPU µs/ack", "mean batch", "heedbench msgs/s",
               "like-roostd msgs/s", "roostd ÷ heedbench", "roostd ÷ like-roostd"], rows),
    ]
    if gaps:
        goals.append(("B5", "≥ 0.9× raw heed group commit at the same batch",
                      f"no roostd or heedbench figure at {', '.join(gaps)} publishers", None))
    else:
        goals.append(("B5", "≥ 0.9× raw heed group commit at the same batch", f"lowest ratio {worst:.2f}×",
                      worst >= 0.9))
    return "\n".join(text)


def b6(R, goals):
    if not R.select("B6"):
        return None
    text = ["### B6: upgrades and a reconnect storm", ""]
    servers = R.servers("B6", "upgrades")
    if servers:
        p0 = R.params("B6", "upgrades")
        mine = R.med("B6", "upgrades", "roostd", "server_cpu_us_per_upgrade")
        rows = []
        for s in servers:
            cpu = R.med("B6", "upgrades", s, "server_cpu_us_per_upgrade")
            rows.append([NAMES[s], fmt_stat(R.stat("B6", "upgrades", s, "upgrades_per_s"), digits=0),
                         fmt_stat(R.stat("B6", "upgrades", s, "server_cpu_us_per_upgrade")),
                         fmt_num(1e6 / cpu, 0) if cpu else "–",
                         f"{fmt_num(R.med('B6', 'upgrades', s, 'generator_cpu_pct'), 0)} %",
                         "" if s == "roostd" else fmt_ratio(ratio(mine, cpu))])
        inv = R.select("B6", "upgrades-invalid50", "roostd")
        if inv:
            cpu = R.med("B6", "upgrades-invalid50", "roostd", "server_cpu_us_per_attempt")
            rows.append(["roostd, 50 % bad tokens (per attempt)",
                         fmt_stat(R.stat("B6", "upgrades-invalid50", "roostd",
                                         lambda x: x["upgrades_per_s"] + x["refusals_per_s"]), digits=0),
                         fmt_stat(R.stat("B6", "upgrades-invalid50", "roostd", "server_cpu_us_per_attempt")),
                         fmt_num(1e6 / cpu, 0) if cpu else "–",
                         f"{fmt_num(R.med('B6', 'upgrades-invalid50', 'roostd', 'generator_cpu_pct'), 0)} %", ""])
        text += [
            f"{p0.get('connectors')} connectors each loop: connect, upgrade (roostd: with a token checked by the "
            f"server), read the 101, drop; {p0.get('duration')}. Upgrades/s as measured (the generator shares the "
            "machine: see its CPU), server CPU-µs per upgrade (**lower is better**, so is the ratio) and what that "
            "CPU cost allows on one core.",
            "",
            table(["server", "upgrades/s", "server CPU µs/upgrade", "per core (1 s ÷ CPU)", "generator CPU",
                   "roostd ÷ peer CPU"], rows),
            "",
        ]
        up = R.med("B6", "upgrades", "roostd", "upgrades_per_s")
        if up is None and "roostd" in servers:
            goals.append(("B6", "≥ 20k upgrades/s on one core", "no roostd figure", None))
        if up is not None:
            cap = 1e6 / mine if mine else None
            goals.append(("B6", "≥ 20k upgrades/s on one core",
                          f"{up:,.0f}/s measured; server CPU allows {fmt_num(cap, 0)}/s", up >= 20000))
    servers = R.servers("B6", "storm")
    if servers:
        n = R.params("B6", "storm").get("conns") or 0
        rows = [[NAMES[s], fmt_stat(R.stat("B6", "storm", s, "all_ready_s"), digits=2),
                 fmt_stat(R.stat("B6", "storm", s, "ready"), digits=0),
                 fmt_stat(R.stat("B6", "storm", s, "conn_latency.p99_us"), 1 / 1000, 0),
                 fmt_stat(R.stat("B6", "storm", s, "server_cpu_us_per_conn"))] for s in servers]
        text += [
            f"Reconnect storm: {n:,} connections started at once (roostd: each upgrades with a token and "
            "subscribes); first connect → all ready. **Lower is better.**",
            "",
            table(["server", "all ready s", "ready", "connect → ready p99 ms", "server CPU µs/conn"], rows),
        ]
        t = R.med("B6", "storm", "roostd", "all_ready_s")
        ready = R.med("B6", "storm", "roostd", "ready")
        if "roostd" in servers and (t is None or ready is None):
            goals.append(("B6", f"a storm of {n:,} absorbed in < 5 s", "no roostd figure", None))
        elif t is not None:
            goals.append(("B6", f"a storm of {n:,} absorbed in < 5 s",
                          f"{t:.2f} s, {ready:,.0f} of {n:,} ready", t < 5 and ready >= n))
    return "\n".join(text)


def b7(R, goals):
    if not R.select("B7"):
        return None
    servers = R.servers("B7")
    rows = []
    for s in servers:
        for c, label in (("slow1", "1 %"), ("slow0", "none")):
            if not R.select("B7", c, s):
                continue
            rows.append([NAMES[s], label,
                         fmt_stat(R.stat("B7", c, s, "delivery_latency.p99_us"), 1 / 1000, 2),
                         fmt_stat(R.stat("B7", c, s, "delivered_per_s"), digits=0),
                         fmt_stat(R.stat("B7", c, s, "rss_max_bytes"), 1 / 1048576, 1),
                         f"{fmt_num(R.med('B7', c, s, 'slow_closed'), 0)} of {fmt_num(R.med('B7', c, s, 'slow'), 0)}"])
    p0 = R.params("B7")
    text = [
        "### B7: slow subscribers",
        "",
        f"Fan-out of {p0.get('payload')}-byte messages at {p0.get('rate')}/s to {p0.get('subscribers')} "
        f"subscribers for {p0.get('duration')}, with 1 % of them never reading (4 KiB receive buffer), and "
        "without. The others' delivery p99, the server's peak VmRSS (sampled each second) and how many slow "
        "subscribers the server closed.",
        "",
        table(["server", "slow", "others' p99 ms", "deliveries/s", "peak RSS MiB", "slow closed"], rows),
    ]
    slow_p99 = R.med("B7", "slow1", "roostd", "delivery_latency.p99_us")
    base_p99 = R.med("B7", "slow0", "roostd", "delivery_latency.p99_us")
    slow_rss = R.med("B7", "slow1", "roostd", "rss_max_bytes")
    base_rss = R.med("B7", "slow0", "roostd", "rss_max_bytes")
    n_slow = R.med("B7", "slow1", "roostd", "slow")
    if "roostd" in servers and None in (slow_rss, base_rss, n_slow):
        goals.append(("B7", "RSS bounded by the send-queue cap (peak RSS with slow ones ≤ without + slow × 1 MiB)",
                      "no roostd figure with and without slow subscribers", None))
    if "roostd" in servers and None in (slow_p99, base_p99):
        goals.append(("B7", "others' p99 unchanged (within 25 % or 1 ms)",
                      "no roostd figure with and without slow subscribers", None))
    if None not in (slow_rss, base_rss, n_slow):
        bound = n_slow * SEND_CAP
        goals.append(("B7", "RSS bounded by the send-queue cap (peak RSS with slow ones ≤ without + slow × 1 MiB)",
                      f"{round((slow_rss - base_rss) / 1048576, 1) + 0.0:+.1f} MiB for {n_slow:.0f} slow (bound "
                      f"{bound / 1048576:.0f} MiB)", slow_rss - base_rss <= bound))
    if None not in (slow_p99, base_p99):
        goals.append(("B7", "others' p99 unchanged (within 25 % or 1 ms)",
                      f"{slow_p99 / 1000:.2f} ms with, {base_p99 / 1000:.2f} ms without",
                      slow_p99 <= max(base_p99 * 1.25, base_p99 + 1000)))
    return "\n".join(text)


def b8(R, goals):
    if not R.select("B8"):
        return None
    servers = R.servers("B8")
    rows = []
    for s in servers:
        rows.append([NAMES[s], fmt_stat(R.stat("B8", None, s, "rss_drift_pct"), digits=2),
                     fmt_stat(R.stat("B8", None, s, "fd_growth"), digits=0),
                     fmt_stat(R.stat("B8", None, s, "churned"), digits=0),
                     fmt_stat(R.stat("B8", None, s, "ready_at_end"), digits=0),
                     fmt_stat(R.stat("B8", None, s, "reconnect_latency.p99_us"), 1 / 1000, 1)])
    p0 = R.params("B8")
    text = [
        "### B8: churn soak",
        "",
        f"{p0.get('conns'):,} idle subscribers; {p0.get('churn_pct')} % of them per minute close and reconnect, "
        f"for {p0.get('duration')}. Server VmRSS and open descriptors every 10 s: drift = last vs first sample.",
        "",
        table(["server", "RSS drift %", "fd growth", "reconnects", "ready at end", "reconnect p99 ms"], rows),
    ]
    d = R.med("B8", None, "roostd", "rss_drift_pct")
    f = R.med("B8", None, "roostd", "fd_growth")
    # Both halves of the goal need their figure: no fd_growth, no verdict.
    if "roostd" in servers:
        goals.append(("B8", f"churn for {p0.get('duration')}: RSS drift < 1 %, no descriptor growth",
                      f"drift {fmt_num(d, 2)} %, fd growth {fmt_num(f, 0)}",
                      None if d is None or f is None else d < 1 and f <= 0))
    return "\n".join(text)


# ---------------------------------------------------------------- plots


def plots(R, outdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    made = []

    def bars(ax, groups, series, value, err, ylabel, log=False):
        """Grouped bars: one group per x label, one bar per series (server)."""
        n = max(len(series), 1)
        width = 0.8 / n
        for i, s in enumerate(series):
            xs, ys, lo, hi = [], [], [], []
            for j, g in enumerate(groups):
                st = value(g, s)
                if st is None:
                    continue
                xs.append(j + (i - (n - 1) / 2) * width)
                ys.append(st[0])
                lo.append(st[0] - st[1])
                hi.append(st[2] - st[0])
            if xs:
                ax.bar(xs, ys, width, label=NAMES.get(s, s), color=COLORS.get(s), yerr=[lo, hi] if err else None,
                       capsize=2)
        ax.set_xticks(range(len(groups)))
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.legend(fontsize=8)

    cells = sorted(R.cells("B1"), key=int)
    if cells:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for s in R.servers("B1"):
            pts = [(int(c), R.stat("B1", c, s, "rss_after_bytes"), R.stat("B1", c, s, "bytes_per_conn"))
                   for c in cells]
            pts = [p for p in pts if p[1]]
            if not pts:
                continue
            xs = [p[0] for p in pts]
            kw = dict(marker="o", label=NAMES[s], color=COLORS.get(s), capsize=3)
            a1.errorbar(xs, [p[1][0] / 1048576 for p in pts],
                        yerr=[[(p[1][0] - p[1][1]) / 1048576 for p in pts], [(p[1][2] - p[1][0]) / 1048576 for p in pts]],
                        **kw)
            pb = [p for p in pts if p[2] and p[2][0] > 0]
            if pb:
                a2.errorbar([p[0] for p in pb], [p[2][0] / 1024 for p in pb],
                            yerr=[[(p[2][0] - p[2][1]) / 1024 for p in pb], [(p[2][2] - p[2][0]) / 1024 for p in pb]],
                            **kw)
        a1.set_xlabel("idle connections")
        a1.set_ylabel("server VmRSS (MiB, log)")
        a1.set_yscale("log")
        a1.set_title("B1: server RSS vs connections")
        a2.set_xlabel("idle connections")
        a2.set_ylabel("KiB per connection (log)")
        a2.set_yscale("log")
        a2.axhline(1.0, color="grey", ls="--", lw=1)
        a2.text(a2.get_xlim()[0], 1.0, " 1 KiB goal", va="bottom", fontsize=8, color="grey")
        a2.set_title("B1: memory per idle connection")
        for a in (a1, a2):
            a.grid(alpha=0.3, which="both")
        handles, labels = a1.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        fig.savefig(outdir / "rss-vs-conns.png", dpi=110)
        plt.close(fig)
        made.append("rss-vs-conns.png")

    cells = b4_cells(R)
    if cells:
        c = cells[0]
        series = R.servers("B4", c)
        groups = [label for _, label in LAT]
        keys = dict((label, k) for k, label in LAT)
        if "roostd" in series:
            series.insert(1, "roostd-ack")  # the commit, beside roostd's delivery

        def value(g, s):
            metric = "pub_latency" if s == "roostd-ack" else "delivery_latency"
            st = R.stat("B4", c, "roostd" if s == "roostd-ack" else s, f"{metric}.{keys[g]}")
            return st and tuple(v / 1000 for v in st[:3])

        fig, ax = plt.subplots(figsize=(9, 4.2))
        bars(ax, groups, series, value, True, "ms (log; lower is better)", log=True)
        ax.set_xticklabels(groups)
        p0 = R.params("B4", c)
        ax.set_title(f"B4: publish → delivery latency, {p0.get('rate')} msg/s to {p0.get('subscribers')} subscribers")
        fig.tight_layout()
        fig.savefig(outdir / "latency.png", dpi=110)
        plt.close(fig)
        made.append("latency.png")

    # The whole distribution, HdrHistogram style: of each server's runs,
    # the one with the median p99, its latency at each quantile. One plot
    # per rate: the (first) is latency-spectrum.png.
    for i, c in enumerate(cells):
        p0 = R.params("B4", c)
        name = "latency-spectrum.png" if i == 0 else f"latency-spectrum-{p0.get('rate')}.png"
        fig, ax = plt.subplots(figsize=(9, 4.2))
        drawn = 0
        for s in R.servers("B4", c):
            for metric, label in (("delivery_latency", NAMES[s]),
                                  ("pub_latency", "roostd pub → ack (commit)")):
                if metric == "pub_latency" and s != "roostd":
                    continue
                runs = [r for r in R.select("B4", c, s) if get(r, f"{metric}.spectrum")]
                if not runs:
                    continue
                runs.sort(key=lambda r: get(r, f"{metric}.p99_us") or 0)
                spectrum = get(runs[len(runs) // 2], f"{metric}.spectrum")
                xs = [1 / (1 - q) if q < 1 else 1e5 for q, _ in spectrum]
                ys = [us / 1000 for _, us in spectrum]
                ax.plot(xs, ys, marker="o", markersize=3, label=label,
                        linestyle="--" if metric == "pub_latency" else "-")
                drawn += 1
        if drawn:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = [2, 10, 100, 1000, 10000, 1e5]
            ax.set_xticks(ticks)
            ax.set_xticklabels(["p50", "p90", "p99", "p99.9", "p99.99", "max"])
            ax.set_ylabel("ms (log; lower is better)")
            ax.set_xlabel("percentile")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8)
            ax.set_title(f"B4: latency distribution, {p0.get('rate')} msg/s to {p0.get('subscribers')} subscribers")
            fig.tight_layout()
            fig.savefig(outdir / name, dpi=110)
            made.append(name)
        plt.close(fig)

    for bench, metric, name, title, unit, log in (
            ("B2", "server_cpu_us_per_msg", "b2-cpu-per-msg.png", "B2: echo, server CPU per message", "B", True),
            ("B3", "server_cpu_us_per_delivered", "b3-cpu-per-delivery.png", "B3: fan-out, server CPU per delivery",
             "subscribers", False)):
        cells = sorted(R.cells(bench), key=int)
        if not cells:
            continue
        fig, ax = plt.subplots(figsize=(9, 4.2))
        bars(ax, cells, R.servers(bench), lambda g, s: R.stat(bench, g, s, metric), True,
             "server CPU-µs" + (" (log)" if log else "") + "; lower is better", log=log)
        ax.set_xticklabels([f"{int(c):,} {unit}" for c in cells])
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(outdir / name, dpi=110)
        plt.close(fig)
        made.append(name)
    return made


# ---------------------------------------------------------------- check


def check(rows, plan):
    """Problems: planned samples without a result, errors, scenarios that did no work."""
    problems = []
    key = lambda r: (r.get("bench"), r.get("server"), str(r.get("cell")), r.get("run"))  # noqa: E731
    have = {}
    for r in rows:
        have.setdefault(key(r), []).append(r)
    for p in plan:
        if key(p) not in have:
            problems.append(f"{'/'.join(map(str, key(p)))}: no result")
    for r in rows:
        name = "/".join(map(str, key(r)))
        if "error" in r:
            problems.append(f"{name}: {r['error']}")
            continue
        sc = r.get("scenario") or r.get("tool")
        need = []
        if sc == "idle":
            need = [("ready", r.get("ready", 0) >= r.get("conns", 1)), ("rss", r.get("bytes_per_conn") is not None)]
        elif sc == "echo":
            need = [("echoed", r.get("echoed", 0) > 0), ("no mismatch", r.get("mismatched", 1) == 0),
                    ("server CPU", r.get("server_cpu_us_per_msg") is not None)]
        elif sc == "fanout":
            need = [("delivered", r.get("delivered", 0) > 0),
                    ("server CPU", r.get("server_cpu_us_per_delivered") is not None)]
            if not r.get("peer"):
                need.append(("acked", r.get("acked", 0) > 0))
        elif sc == "publish":
            need = [("acked", r.get("acked", 0) > 0), ("server CPU", r.get("server_cpu_us_per_ack") is not None),
                    ("mean batch from /metrics", r.get("mean_batch") is not None)]
        elif sc == "upgrades":
            need = [("upgrades", r.get("upgrades", 0) > 0), ("server CPU", r.get("server_cpu_us_per_upgrade") is not None)]
            if r.get("invalid_pct", 0) > 0:
                need.append(("refusals", r.get("refusals", 0) > 0))
        elif sc == "storm":
            need = [("all ready", r.get("ready", 0) >= r.get("conns", 1) > 0)]
        elif sc == "slow":
            need = [("delivered", r.get("delivered", 0) > 0), ("rss samples", r.get("rss_max_bytes") is not None)]
        elif sc == "churn":
            need = [("churned", r.get("churned", 0) > 0), ("rss drift", r.get("rss_drift_pct") is not None),
                    ("fds", r.get("fd_growth") is not None)]
        elif sc == "heedbench":
            need = [("messages", bool(r.get("runs")) and r["runs"][0].get("messages", 0) > 0)]
        else:
            need = [("a known scenario", False)]
        problems += [f"{name}: {sc}: no {what}" for what, ok in need if not ok]
    return problems


# ---------------------------------------------------------------- the page


def machine(meta):
    cpu = meta.get("cpu_model")
    if cpu is None:
        try:
            cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        except (OSError, StopIteration):
            cpu = "?"
    return (f"{meta.get('nproc') or os.cpu_count()} × {cpu}, Linux {meta.get('kernel') or os.uname().release}, "
            f"stores on {meta.get('bench_dir_fs') or '?'} (`{meta.get('bench_dir', '?')}`)")


def render(R, meta, plot_rel, made):
    goals = []
    sections = [f(R, goals) for f in (b1, b2, b3, b4, b5, b6, b7, b8)]
    runs = sorted({r.get("run") for r in R.rows})
    out = [
        "## Side by side with peers (`benches/run.sh`)",
        "",
    ]
    if meta.get("smoke"):
        out += ["**Smoke run**: tiny N, 1–2 s per scenario, debug builds: these numbers check that the harness "
                "works; they are not measurements.", ""]
    out += [
        f"- Machine: {machine(meta)}.",
        f"- Run: {meta.get('date', '?')}, roostd `{meta.get('git', '?')}`, cargo profile `{meta.get('profile', '?')}`; "
        f"{meta.get('tools', {}).get('rustc') or ''}, Node {meta.get('tools', {}).get('node') or '–'}.",
        f"- Command: `{meta.get('command', 'benches/run.sh')}`, then `python3 benches/report.py OUT`.",
        f"- Servers: {', '.join(NAMES.get(s, s) for s in meta.get('servers', []))}"
        + (f"; skipped: {'; '.join(meta['skipped'])}" if meta.get("skipped") else "") + "."
        + (f" uWebSockets: the local build `{meta['uws_peer']['path']}` ({meta['uws_peer']['bytes']:,} bytes, "
           f"{meta['uws_peer']['mtime']} UTC), not in this repository (benches/peers/README.md)."
           if meta.get("uws_peer") else ""),
        f"- Each figure: median over {max(runs) if runs else 0} run(s) with the range (min–max) in brackets; "
        "each ratio is roostd's median ÷ the peer's. Server pinned to CPU "
        f"{meta.get('server_cpus', '0')}, generator(s) to CPU {meta.get('loadgen_cpus', '1')} (`taskset`), a "
        "fresh server (and store) per run"
        + (", after waiting for a quiet machine" if str(meta.get("quiet_wait", "600")) != "0" else "")
        + (f"; a run where other processes used more than {meta.get('max_noise', 15)} % of the CPU while it "
           f"measured was done again (at most {meta.get('retries', 3)} times)."
           if str(meta.get("retries", "3")) != "0" else "; noisy runs were not redone (RETRIES=0)."),
        "",
        "### Goals (issue #7)",
        "",
        table(["#", "goal", "measured", "verdict"], [[b, g, m or "–", verdict(ok)] for b, g, m, ok in goals]),
        "",
    ]
    flagged = warnings(R)
    if flagged:
        out += ["**Warnings** (these samples may have measured the generator, not the server):", "", *flagged, ""]
    pics = {"B1": ("rss-vs-conns.png", "B1: RSS vs connections"), "B2": ("b2-cpu-per-msg.png", "B2: CPU per message"),
            "B3": ("b3-cpu-per-delivery.png", "B3: CPU per delivery"), "B4": ("latency.png", "B4: latency")}
    for bench, s in zip(("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8"), sections):
        if s:
            out += [s, ""]
            out += [f"Goal: {g}: {m or '–'} → {verdict(ok)}.  " for b, g, m, ok in goals if b == bench]
            if out[-1].startswith("Goal: "):
                out[-1] = out[-1].rstrip()
                out.append("")
            if bench in pics and pics[bench][0] in made:
                out += [f"![{pics[bench][1]}]({plot_rel}/{pics[bench][0]})", ""]
            if bench == "B4":
                out += [f"![B4: latency distribution]({plot_rel}/{m})" + "\n" for m in made
                        if m.startswith("latency-spectrum")]
    return "\n".join(out).rstrip() + "\n"


def write_doc(path, body):
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n<!-- written by benches/report.py: edits here are overwritten -->\n{body}{END}"
    if BEGIN in text and END in text:
        a = text.index(BEGIN)
        b = text.index(END) + len(END)
        text = text[:a] + block + text[b:]
    else:
        lines = text.splitlines(keepends=True)
        at = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
        text = "".join(lines[:at]) + block + "\n\n" + "".join(lines[at:])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def is_under(path, folder):
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def commits_of(rows, metas, outs):
    """{commit: [where]}: each result's own "git" tag, else its run's meta.json."""
    meta_git = {str(o): m.get("git") for o, m in zip(outs, metas)}
    seen = {}
    for r in rows:
        c = r.get("git") or meta_git.get(r.get("_from"))
        if c:
            seen.setdefault(c, []).append(r.get("_from", "?"))
    for o, m in zip(outs, metas):  # a run with no rows still names its commit
        if m.get("git") and not any(r.get("_from") == str(o) for r in rows):
            seen.setdefault(m["git"], []).append(str(o))
    return seen


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+",
                    help="run.sh's output directory (or its results.jsonl); several: their results together")
    ap.add_argument("--doc", help="markdown file to write the tables into (default: see above)")
    ap.add_argument("--no-doc", action="store_true", help="write no markdown")
    ap.add_argument("--plots", help="directory for the PNGs (default: see above)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--check", action="store_true", help="exit 1 on missing results or scenarios that did no work")
    args = ap.parse_args()
    if not args.no_plots:
        ensure_matplotlib()

    rows, plan, metas, outs = [], [], [], []
    for arg in args.results:
        res = Path(arg)
        out = res if res.is_dir() else res.parent
        res = out / "results.jsonl" if res.is_dir() else res
        outs.append(out)
        these = [json.loads(line) for line in res.read_text().splitlines() if line.strip()]
        for r in these:
            r.setdefault("_from", str(out))
        rows += these
        plan_path = out / "plan.jsonl"
        if plan_path.exists():
            plan += [json.loads(line) for line in plan_path.read_text().splitlines() if line.strip()]
        metas.append(json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {})
    # Runs of different commits measure different programs: never one table.
    commits = commits_of(rows, metas, outs)
    if len(commits) > 1:
        print("report.py: these results come from different commits: "
              + "; ".join(f"{c} ({', '.join(sorted(set(w)))})" for c, w in commits.items())
              + ". Report each run on its own (python3 benches/report.py OUT for each OUT).", file=sys.stderr)
        return 2
    meta = dict(metas[0])
    if len(metas) > 1:  # several runs: every command, every server, smoke if any was
        meta["command"] = "`; `".join(m.get("command", "?") for m in metas)
        meta["servers"] = list(dict.fromkeys(s for m in metas for s in m.get("servers", [])))
        meta["skipped"] = list(dict.fromkeys(s for m in metas for s in m.get("skipped", [])))
        meta["smoke"] = any(m.get("smoke") for m in metas)
        meta["date"] = ", ".join(dict.fromkeys(m.get("date", "?") for m in metas))
    R = Results(rows, plan)

    # Into docs/ only by default for a full run that run.sh described (meta.json).
    local = meta.get("smoke", True)
    out = outs[0]
    doc = Path(args.doc) if args.doc else (out / "benchmarks.md" if local else ROOT / "docs" / "benchmarks.md")
    plot_dir = Path(args.plots) if args.plots else (out / "bench" if local else ROOT / "docs" / "bench")

    # The check comes first: with --check, or when the tables would go into
    # the repository's docs/, a run with problems writes nothing.
    problems = check(rows, plan)
    for p in problems:
        print(f"report.py --check: {p}", file=sys.stderr)
    into_docs = any(is_under(p, ROOT / "docs") for p in (None if args.no_doc else doc,
                                                          None if args.no_plots else plot_dir) if p)
    if (args.check or into_docs) and (problems or not rows):
        print(f"report.py --check: {len(rows)} results for {len(plan)} planned samples, {len(problems)} problems: "
              "nothing written" + (" (docs/ is written only from a complete run)" if into_docs else ""))
        return 1
    made = []
    if not args.no_plots:
        made = plots(R, plot_dir)
        print(f"report.py: plots in {plot_dir}: {', '.join(made) or 'none'}", file=sys.stderr)
    if not args.no_doc:
        rel = os.path.relpath(plot_dir.resolve(), doc.resolve().parent)
        write_doc(doc, render(R, meta, rel, made))
        print(f"report.py: tables written into {doc}", file=sys.stderr)

    if args.check:
        print(f"report.py --check: {len(rows)} results for {len(plan)} planned samples, 0 problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
