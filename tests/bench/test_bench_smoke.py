"""Smoke test of the benchmark harness (bench/): a tiny run of every scenario, for this
project's configuration and the seed's, checked for well-formed results and for streams
that lost or repeated nothing. Timings are never asserted: they are the benchmark's
business, and this machine is shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("enqueue", "overhead", "capacity", "inflight", "cancel", "fanout", "openai", "fairness")
NUMERIC = {
    "enqueue": ("best_rate", "p50_ms_at_ref", "p99_ms_at_ref", "sustained_best_rate", "sustained_p99_ms_at_ref"),
    "overhead": ("pickup_p50_ms", "pickup_p99_ms", "ttft_p50_ms_at_ref", "end_p50_ms"),
    "capacity": ("tasks_per_s", "in_flight", "rss_web_worker_mb", "cpu_ms_per_task_web", "cpu_ms_per_task_worker",
                 "worker_us_per_chunk_marginal"),
    "inflight": ("tasks_per_s", "in_flight", "rss_web_worker_mb"),
    "cancel": ("p50_ms", "p99_ms"),
    "fanout": ("p50_ms", "p99_ms", "subscribers"),
    "openai": ("native_cpu_ms_per_task", "v1_cpu_ms_per_task", "v1_cpu_pct_of_native"),
    "fairness": ("late_pickup_p50_ms", "late_pickup_p99_ms"),
}

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    report, raw = out / "BENCHMARKS.md", out / "results.json"
    report.write_text("# Benchmarks\n\n<!-- bench:prose:start -->\nthe lead's words\n<!-- bench:prose:end -->\n")
    done = subprocess.run([sys.executable, "-m", "bench", "run", "--smoke", "--out", str(report), "--json", str(raw)],
                          cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(raw.read_text()), report.read_text()


def test_every_scenario_produces_numbers_for_both_configurations(smoke_run):
    results, _ = smoke_run

    for config in ("ours", "seed"):
        for scenario in SCENARIOS:
            runs = results["runs"][config][scenario]
            assert len(runs) == 1 and "summary" in runs[0], (config, scenario, runs)
            summary = runs[0]["summary"]
            for key in NUMERIC[scenario]:
                assert isinstance(summary[key], (int, float)), (config, scenario, key, summary)


def test_no_followed_stream_lost_or_repeated_an_event(smoke_run):
    results, _ = smoke_run

    for config in ("ours", "seed"):
        for scenario in ("overhead", "capacity", "inflight", "cancel", "fanout"):
            run = results["runs"][config][scenario][0]
            check = run["events_check"]
            assert check["followed"] > 0 and check["verified"] > 0, (config, scenario, check)
            assert check["lost"] == 0 and check["repeated"] == 0, (config, scenario, check)
    capacity = results["runs"]["ours"]["capacity"][0]["events_check"]
    assert capacity["sse"] > 0 and capacity["ws"] > 0


def test_the_report_has_the_results_table_and_keeps_the_hand_written_prose(smoke_run):
    results, report = smoke_run

    assert "the lead's words" in report
    assert "| metric | target | ours | seed | ours vs seed | target met |" in report
    assert "| burst | 10 |" in report and "| sustained | 10 |" in report
    assert results["meta"]["machine"]["commit"] in report
    assert results["meta"]["runs"] == 1
    # How fast the machine was: one reference measurement before each stack start.
    references = results["meta"]["reference_ms"]
    assert len(references) == 2 and all(ms > 0 for ms in references)
    assert f"over {len(references)} measurements, one before each stack start" in report
