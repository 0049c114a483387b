from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.webhooks.receiver import Receiver


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def local_hooks(settings: object) -> None:
    """Endpoints on 127.0.0.1 admitted, as MAGEAGENT_FETCH_ALLOWED_HOSTS=127.0.0.1 does."""
    settings.MAGEAGENT = {**settings.MAGEAGENT, "FETCH_ALLOWED_HOSTS": ["127.0.0.1"]}  # type: ignore[attr-defined]
