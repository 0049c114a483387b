"""Schemathesis against the schema a real daphne serves: every operation fuzzed with all checks
(server errors, schema conformance of every response, undocumented status codes and headers,
valid input refused, invalid input accepted, authentication, stateful sequences)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.clients import API, Client, sim

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def a_real_cursor(client: Client) -> str:
    """A list's cursor is opaque: the fuzzer is given one the API made."""
    for n in range(2):
        client.create(f"cursor {n} {sim(tokens=1)}")
    page = client.http.get(f"{API}/tasks", params={"page_size": 1}).json()
    return parse_qs(urlparse(page["next"]).query)["cursor"][0]


@pytest.mark.timeout(600)
def test_schemathesis_finds_no_failure_in_the_served_schema(stack, alice):
    client = Client(stack.web_url, alice.key)
    schema = httpx.get(f"{stack.web_url}{API}/schema?format=json").json()
    operations = sum(len(methods) for methods in schema["paths"].values())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCHEMATHESIS_HOOKS": "tests.mageagent.schemathesis_hooks",
           "MAGEAGENT_SCHEMATHESIS_CURSOR": a_real_cursor(client), "NO_COLOR": "1"}

    # Every check (schemathesis.toml). A few examples per operation: enough for every phase to
    # reach every operation and field, few enough that the tasks it creates do not pile up in the
    # stack's worker.
    run = subprocess.run(
        [str(SCHEMATHESIS), "--config-file", str(HERE / "schemathesis.toml"), "run",
         f"{stack.web_url}{API}/schema?format=json", "-H", f"Authorization: Bearer {alice.key}",
         "--max-examples", "5", "--seed", "1", "--generation-database", "none", "--request-timeout", "10",
         "--no-color"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)

    report = run.stdout + run.stderr
    assert f"Tested: {operations}" in report, report[-5000:]
    assert run.returncode == 0, report[-20000:]
