"""Cooldowns live in Redis through litellm's Router: one worker process's failures steer
every other worker away from the deployment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from providers.llm import ProviderError
from routing.deployments import registry

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent("""
    import asyncio, os, sys, time
    import django
    django.setup()
    from routing.deployments import registry
    from providers.llm import ProviderError

    role, model = sys.argv[1], sys.argv[2]
    reg = registry()
    (deployment,) = reg.deployments(model, "openai")
    reg.ensure([deployment])

    async def main():
        if role == "fail":
            error = ProviderError("provider_unavailable", "upstream 503", status=503, retryable=True)
            print("cooled" if reg.report_failure(deployment, error) else "not cooled", flush=True)
            await asyncio.sleep(0.2)  # let litellm's cooldown callback finish
            return
        print("watching", flush=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if deployment.id in await reg.acooling([deployment.id]):
                picked = await reg.pick(model, [deployment], set())
                print("seen", "skipped" if picked is None else "picked", flush=True)
                return
            await asyncio.sleep(0.1)
        print("never seen", flush=True)

    asyncio.run(main())
""")


def spawn(role: str, model: str, namespace: str) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "MAGEAGENT_ROUTING_REDIS_NAMESPACE": namespace,
           "MAGEAGENT_LLM_API_BASE": "http://127.0.0.1:9/v1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", WORKER, role, model], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_cooldown_set_by_one_worker_process_is_seen_by_another(routing_namespace):
    watcher = spawn("watch", "gpt-4o-mini", routing_namespace)
    assert watcher.stdout is not None and watcher.stdout.readline().strip() == "watching"

    failer = spawn("fail", "gpt-4o-mini", routing_namespace)
    failed_out, failed_err = failer.communicate(timeout=60)
    watched_out, watched_err = watcher.communicate(timeout=60)

    assert failed_out.strip() == "cooled", failed_err
    assert watched_out.strip() == "seen skipped", watched_err


def test_a_cooldown_covers_only_the_failed_deployment(routing_namespace, llm_settings):
    llm_settings(LLM_API_BASE="http://127.0.0.1:9/v1")
    reg = registry()
    (bad,) = reg.deployments("gpt-4.1", "openai")
    (good,) = reg.deployments("gpt-4.1-mini", "openai")

    async def scenario() -> tuple[set[str], object, object]:
        reg.report_failure(bad, ProviderError("rate_limited", "slow down", status=429, retryable=True))
        return await reg.acooling([bad.id, good.id]), await reg.pick("gpt-4.1", [bad], set()), \
            await reg.pick("gpt-4.1-mini", [good], set())

    cooling, picked_bad, picked_good = asyncio.run(scenario())

    assert cooling == {bad.id}
    assert picked_bad is None and picked_good == good


def test_an_oversized_request_does_not_cool_the_deployment_down(llm_settings):
    llm_settings(LLM_API_BASE="http://127.0.0.1:9/v1")
    reg = registry()
    (deployment,) = reg.deployments("gpt-4o", "openai")

    async def scenario() -> set[str]:
        reg.report_failure(deployment, ProviderError("context_window_exceeded", "too long", status=400))
        return await reg.acooling([deployment.id])

    assert asyncio.run(scenario()) == set()
