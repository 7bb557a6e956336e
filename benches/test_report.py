#!/usr/bin/env python3
"""Tests of benches/report.py on crafted results: a verdict only from data.

    python3 -m unittest discover -s benches -p 'test_*.py'

(run by .ci/run's benchmark smoke stage). No matplotlib needed: --no-plots.
"""

import importlib.util
import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC = importlib.util.spec_from_file_location("report", HERE / "report.py")
report = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(report)


def row(bench, cell, server, run=1, git="abc1234", **fields):
    r = {"bench": bench, "cell": str(cell), "server": server, "run": run, "git": git, "params": {}}
    r.update(fields)
    return r


def plan_of(rows):
    return [{k: r[k] for k in ("bench", "server", "cell", "run")} for r in rows]


def goals_of(fn, rows, plan=None):
    goals = []
    fn(report.Results(rows, plan_of(rows) if plan is None else plan), goals)
    return {(b, g): (m, ok) for b, g, m, ok in goals}


def idle(cell, server, bpc, run=1, git="abc1234"):
    return row("B1", cell, server, run, git, scenario="idle", conns=int(cell), ready=int(cell), bytes_per_conn=bpc,
               rss_after_bytes=bpc * int(cell))


B1_GOAL = ("B1", "≤ 1 KiB per idle connection (N ≥ 5k)")
B1_MOON = ("B1", "moonshot: below uWS per connection")
B8_GOAL = ("B8", "churn for 15s: RSS drift < 1 %, no descriptor growth")
CHURN = {"conns": 100, "churn_pct": 10, "duration": "15s"}


class Verdicts(unittest.TestCase):
    def test_b1_is_met_when_every_cell_at_5k_and_above_is_under_1_kib(self):
        rows = [idle(1000, "roostd", 2000), idle(5000, "roostd", 700), idle(10000, "roostd", 800)]
        self.assertIs(goals_of(report.b1, rows)[B1_GOAL][1], True)

    def test_b1_is_missed_when_one_cell_is_over_1_kib(self):
        rows = [idle(5000, "roostd", 700), idle(10000, "roostd", 1100)]
        self.assertIs(goals_of(report.b1, rows)[B1_GOAL][1], False)

    def test_a_planned_b1_cell_at_5k_without_a_result_gives_no_verdict(self):
        rows = [idle(1000, "roostd", 700), idle(10000, "roostd", 800)]
        plan = plan_of(rows) + [{"bench": "B1", "server": "roostd", "cell": "5000", "run": 1}]
        text, ok = goals_of(report.b1, rows, plan)[B1_GOAL]
        self.assertIsNone(ok)
        self.assertIn("5000", text)

    def test_a_b1_cell_with_an_error_gives_no_verdict(self):
        rows = [idle(10000, "roostd", 800), row("B1", 5000, "roostd", error="the server did not start")]
        self.assertIsNone(goals_of(report.b1, rows)[B1_GOAL][1])

    def test_b1_without_any_cell_at_5k_gives_no_verdict(self):
        rows = [idle(1000, "roostd", 700)]
        self.assertIsNone(goals_of(report.b1, rows)[B1_GOAL][1])

    def test_the_b1_moonshot_needs_a_uws_figure_at_every_cell(self):
        rows = [idle(5000, "roostd", 200), idle(10000, "roostd", 200), idle(10000, "uws", 257)]
        plan = plan_of(rows) + [{"bench": "B1", "server": "uws", "cell": "5000", "run": 1}]
        self.assertIsNone(goals_of(report.b1, rows, plan)[B1_MOON][1])
        rows.append(idle(5000, "uws", 257))
        self.assertIs(goals_of(report.b1, rows)[B1_MOON][1], True)

    def test_b8_without_fd_growth_gives_no_verdict(self):
        rows = [row("B8", "", "roostd", params=CHURN, scenario="churn", churned=10, rss_drift_pct=0.1)]
        self.assertIsNone(goals_of(report.b8, rows)[B8_GOAL][1])

    def test_b8_with_both_figures_is_met_or_missed(self):
        ok = [row("B8", "", "roostd", params=CHURN, scenario="churn", churned=10, rss_drift_pct=0.1, fd_growth=0)]
        self.assertIs(goals_of(report.b8, ok)[B8_GOAL][1], True)
        grew = [row("B8", "", "roostd", params=CHURN, scenario="churn", churned=10, rss_drift_pct=0.1, fd_growth=3)]
        self.assertIs(goals_of(report.b8, grew)[B8_GOAL][1], False)

    def test_a_b2_ratio_with_one_uws_cell_missing_gives_no_verdict(self):
        def echo(cell, server, us):
            return row("B2", cell, server, scenario="echo", echoed=1, mismatched=0, server_cpu_us_per_msg=us)
        rows = [echo(20, "roostd", 1.0), echo(1024, "roostd", 1.0), echo(20, "uws", 2.0)]
        plan = plan_of(rows) + [{"bench": "B2", "server": "uws", "cell": "1024", "run": 1}]
        label = ("B2", "≤ 1.0× uWS CPU/msg at every payload")
        self.assertIsNone(goals_of(report.b2, rows, plan)[label][1])
        rows.append(echo(1024, "uws", 2.0))
        self.assertIs(goals_of(report.b2, rows)[label][1], True)

    def test_an_idle_tls_connection_is_judged_at_every_n_and_only_with_every_figure(self):
        label = ("B1", "TLS: < 4 KiB per idle connection")
        rows = [idle(1000, "roostd-tls", 3000), idle(10000, "roostd-tls", 3500)]
        self.assertIs(goals_of(report.b1, rows)[label][1], True)
        self.assertIs(goals_of(report.b1, rows + [idle(5000, "roostd-tls", 8500)])[label][1], False)
        plan = plan_of(rows) + [{"bench": "B1", "server": "roostd-tls", "cell": "5000", "run": 1}]
        text, ok = goals_of(report.b1, rows, plan)[label]
        self.assertIsNone(ok)
        self.assertIn("5000", text)

    def test_tls_is_not_a_peer_of_roostd_in_the_b1_ratios(self):
        rows = [idle(10000, "roostd", 800), idle(10000, "roostd-tls", 8000), idle(10000, "uws", 257)]
        text = report.b1(report.Results(rows, plan_of(rows)), [])
        self.assertIn("roostd ÷ uWebSockets", text)
        self.assertNotIn("roostd ÷ roostd (TLS)", text)

    def test_the_b4_generator_goal_needs_every_sample_under_70_percent(self):
        label = ("B4", "the generator under 70 % of its CPU budget in every sample (1000 msg/s to 1000 subscribers)")
        params = {"rate": 1000, "subscribers": 1000, "duration": "10s"}

        def fan(server, load, run=1):
            r = row("B4", "1000x1000", server, run, params=params, delivered=1, delivered_per_s=1e6,
                    delivery_latency={"p99_us": 5000}, pub_latency={"p99_us": 6000}, server_cpu_us_per_delivered=0.8)
            if load is not None:
                r["generator_load_pct"] = load
            return r
        rows = [fan("roostd", 61), fan("uws", 65)]
        self.assertIs(goals_of(report.b4, rows)[label][1], True)
        self.assertIs(goals_of(report.b4, rows + [fan("uws", 84, run=2)])[label][1], False)
        self.assertIsNone(goals_of(report.b4, rows + [fan("uws", None, run=2)])[label][1])
        plan = plan_of(rows) + [{"bench": "B4", "server": "uws", "cell": "1000x1000", "run": 2}]
        self.assertIsNone(goals_of(report.b4, rows, plan)[label][1])
        text = report.b4(report.Results(rows, plan_of(rows)), [])
        self.assertIn("| 80 (n=1) | 61 (n=1) |", text)  # server CPU 0.8 µs × 1M/s = 80 % of a core

    def test_the_b4_delivery_check_and_drained_backlog_are_judged_only_from_every_sample(self):
        where = "(1000 msg/s to 1000 subscribers)"
        lost = ("B4", "no message lost or out of order at any subscriber " + where)
        held = ("B4", "a drained socket never held half its receive buffer, so no server write waited " + where)
        params = {"rate": 1000, "subscribers": 1000, "duration": "10s", "timed_every": 10, "drain": "20ms"}

        def fan(server, run=1, gaps=0, rmem=20000, check=True):
            r = row("B4", "1000x1000", server, run, params=params, delivered=1, delivered_per_s=1e6,
                    delivery_latency={"p99_us": 5000}, generator_load_pct=40)
            if check:
                r["delivery_check"] = {"gaps": gaps, "out_of_order": 0, "min_per_subscriber": 10000,
                                       "bulk_max_backlog_bytes": 3000, "bulk_max_rmem_bytes": rmem,
                                       "rcvbuf_bytes": 131072}
            return r
        goals = goals_of(report.b4, [fan("roostd"), fan("uws")])
        self.assertIs(goals[lost][1], True)
        self.assertIs(goals[held][1], True)
        goals = goals_of(report.b4, [fan("roostd"), fan("uws", gaps=3, rmem=70000)])
        self.assertIs(goals[lost][1], False)
        self.assertIs(goals[held][1], False)
        goals = goals_of(report.b4, [fan("roostd"), fan("uws", check=False)])
        self.assertIsNone(goals[lost][1])
        self.assertNotIn(held, goals)
        text = report.b4(report.Results([fan("roostd"), fan("uws"), fan("uws", run=2)]), [])
        self.assertIn("Generator CPU in each sample", text)
        self.assertIn("uWebSockets 40, 40", text)

    def test_every_figure_says_how_many_samples_it_rests_on(self):
        rows = [idle(10000, "roostd", b, run=i) for i, b in enumerate((700, 710, 720), 1)]
        rows.append(idle(5000, "roostd", 650))
        text = report.b1(report.Results(rows, plan_of(rows)), [])
        self.assertIn("710 (700–720, n=3)", text)
        self.assertIn("650 (n=1)", text)


class Warnings(unittest.TestCase):
    def test_a_sample_whose_generator_was_busy_is_flagged_in_the_page(self):
        busy = row("B2", 20, "roostd", scenario="echo", echoed=1, mismatched=0, server_cpu_us_per_msg=1.0,
                   generator_load_pct=93, warnings=["the generator used 93 % of its CPU budget"])
        calm = row("B2", 1024, "roostd", scenario="echo", echoed=1, mismatched=0, server_cpu_us_per_msg=1.0,
                   generator_load_pct=40)
        page = report.render(report.Results([busy, calm], plan_of([busy, calm])), {}, "bench", [])
        self.assertIn("B2 roostd 20 run 1: the generator used 93 %", page)
        self.assertNotIn("B2 roostd 1024 run 1:", page)
        self.assertIn("93 %", report.b2(report.Results([busy], plan_of([busy])), []))


class Command(unittest.TestCase):
    """report.py run as CI and run.sh run it, on a directory like run.sh's OUT."""

    def run_dir(self, rows, meta=None, plan=None):
        d = Path(tempfile.mkdtemp(prefix="report-test."))
        (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "plan.jsonl").write_text("".join(json.dumps(p) + "\n" for p in (plan_of(rows) if plan is None else plan)))
        (d / "meta.json").write_text(json.dumps(meta or {"smoke": True, "git": rows[0].get("git") if rows else "x"}))
        return d

    def report(self, *args):
        return subprocess.run([sys.executable, str(HERE / "report.py"), *map(str, args), "--no-plots"],
                              capture_output=True, text=True)

    def test_runs_from_two_commits_are_refused_not_pooled(self):
        a = self.run_dir([idle(10000, "roostd", 700, git="aaaa111")])
        b = self.run_dir([idle(10000, "roostd", 900, git="bbbb222")])
        doc = a / "out.md"
        res = self.report(a, b, "--doc", doc)
        self.assertEqual(res.returncode, 2, res.stderr)
        self.assertIn("aaaa111", res.stderr)
        self.assertIn("bbbb222", res.stderr)
        self.assertFalse(doc.exists())

    def test_one_results_file_mixing_two_commits_is_refused(self):
        a = self.run_dir([idle(10000, "roostd", 700, git="aaaa111"), idle(5000, "roostd", 700, git="cccc333")])
        res = self.report(a, "--doc", a / "out.md")
        self.assertEqual(res.returncode, 2, res.stderr)
        self.assertIn("cccc333", res.stderr)

    def test_two_runs_of_one_commit_are_reported_together(self):
        a = self.run_dir([idle(10000, "roostd", 700, run=1)])
        b = self.run_dir([idle(10000, "roostd", 720, run=2)])
        res = self.report(a, b, "--doc", a / "out.md", "--check")
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("n=2", (a / "out.md").read_text())

    def test_check_fails_and_writes_nothing_when_a_planned_sample_has_no_result(self):
        rows = [idle(10000, "roostd", 700)]
        d = self.run_dir(rows, plan=plan_of(rows) + [{"bench": "B1", "server": "roostd", "cell": "5000", "run": 1}])
        res = self.report(d, "--doc", d / "out.md", "--check")
        self.assertEqual(res.returncode, 1)
        self.assertIn("B1/roostd/5000/1: no result", res.stderr)
        self.assertFalse((d / "out.md").exists())

    def test_a_full_run_with_a_problem_never_writes_into_docs(self):
        rows = [idle(10000, "roostd", 700), row("B1", 5000, "roostd", error="the server did not start")]
        d = self.run_dir(rows, meta={"smoke": False, "git": "abc1234"})
        doc = HERE.parent / "docs" / "report-test-never-written.md"
        try:
            res = self.report(d, "--doc", doc)
            self.assertEqual(res.returncode, 1, res.stderr)
            self.assertFalse(doc.exists())
        finally:
            doc.unlink(missing_ok=True)


if __name__ == "__main__":
    unittest.main()
