"""The code's static checks run with the suite, so CI holds them: ruff's rules and mypy's
types, as configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def check(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.timeout(600)  # mypy without a cache, on a busy 2-core machine, takes minutes
@pytest.mark.parametrize("argv", [("ruff", "check", "."), ("mypy", ".")], ids=["ruff", "mypy"])
def test_the_code_passes_its_static_checks(argv):
    result = check(*argv)

    assert result.returncode == 0, result.stdout + result.stderr
