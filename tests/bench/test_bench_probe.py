"""The in-process CPU probes (bench/probe.py) run end to end against the real database,
Redis and simulator; their figures are numbers, never checked against a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_every_probe_runs_the_real_code_path_and_reports_cpu(tmp_path):
    out = tmp_path / "probe.json"
    done = subprocess.run([sys.executable, "-m", "bench.probe", "all", "--n", "5", "--warmup", "2", "--streams", "3",
                           "--duration-ms", "200", "--rounds", "1", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    expected = {"post": {"cpu_ms_per_post"}, "execute": {"cpu_ms_per_task"},
                "stream": {"cpu_ms_per_task_10_tokens", "cpu_ms_per_task_200_tokens", "cpu_us_per_chunk_marginal",
                           "loop_ms_per_task_200_tokens", "loop_us_per_chunk_marginal"},
                "families": {"openai_us_per_chunk", "anthropic_us_per_chunk", "gemini_us_per_chunk",
                             "cohere_us_per_chunk", "gemini_litellm_us_per_chunk"}}
    for probe, keys in expected.items():
        assert set(results[probe][0]) == keys, (probe, results[probe])
        assert all(isinstance(v, float) and v == v for v in results[probe][0].values()), results[probe]
    # Per-task CPU is positive; a probe that measured nothing would show 0.
    assert results["post"][0]["cpu_ms_per_post"] > 0 and results["execute"][0]["cpu_ms_per_task"] > 0
