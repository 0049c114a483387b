from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def routing_namespace(settings: Any) -> Iterator[str]:
    """Each test gets its own Redis namespace for cooldowns, rate limits and budgets, and a
    fresh deployment registry (it is built from settings)."""
    from routing.deployments import registry_reset
    from routing.selectors import catalog_invalidate
    from tasks import events

    namespace = f"ma:test:{uuid.uuid4().hex[:10]}"
    settings.MAGEAGENT_ROUTING = {**settings.MAGEAGENT_ROUTING, "REDIS_NAMESPACE": namespace}
    registry_reset()
    catalog_invalidate()
    yield namespace
    registry_reset()
    catalog_invalidate()
    client = events.sync_client()
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        client.delete(key)


@pytest.fixture
def policy(settings: Any) -> Any:
    """Change the settings routing policy for one test: policy(prefer={...})."""
    from routing.selectors import catalog_invalidate

    def change(**values: Any) -> None:
        routing = dict(settings.MAGEAGENT_ROUTING)
        routing["POLICY"] = {**routing["POLICY"], **values}
        settings.MAGEAGENT_ROUTING = routing
        catalog_invalidate()

    return change


@pytest.fixture
def llm_settings(settings: Any) -> Any:
    """Change settings.MAGEAGENT's LLM keys (API base, config file) and rebuild the registry."""
    from routing.deployments import registry_reset

    def change(**values: Any) -> None:
        settings.MAGEAGENT = {**settings.MAGEAGENT, **values}
        registry_reset()

    return change
