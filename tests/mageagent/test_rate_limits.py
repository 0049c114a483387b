"""The API's per-app request rate limit (mageagent/tenancy/throttling.py): 429
`rate_limited` with Retry-After past it, one bucket per app shared by its keys, atomic
under concurrency, and no outage when Redis is away."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from mageagent.ratelimit import _keys, rate_limit_try_sync
from mageagent.tenancy import throttling
from mageagent.tenancy.models import App
from mageagent.tenancy.services import api_key_create
from tasks import events
from tasks.models import Task

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = "/mageagent/api/v1/tasks"


def limit(persona, per_minute: int | None) -> None:
    App.objects.filter(pk=persona.tenant.app_id).update(requests_per_minute=per_minute)
    fresh_bucket(f"app:{persona.tenant.app_id}")


def fresh_bucket(bucket: str) -> None:
    # App ids restart with each test database; a bucket outlives it by up to 10 minutes.
    events.sync_client().delete(*_keys(bucket))


def statuses(api, persona, n: int) -> list[int]:
    return [api.get(TASKS, HTTP_AUTHORIZATION=f"Bearer {persona.key}").status_code for _ in range(n)]


def test_an_app_past_its_limit_gets_429_rate_limited_with_retry_after_and_other_apps_do_not(api, alice, bob,
                                                                                          charlie):
    limit(alice, 6)  # a burst of 10 s' worth: one request
    limit(bob, None)
    limit(charlie, None)

    assert api.get(TASKS, HTTP_AUTHORIZATION=f"Bearer {alice.key}").status_code == 200
    refused = api.get(TASKS, HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused["Retry-After"]) <= 11  # 10 s until the next request, rounded up
    assert statuses(api, bob, 3) == [200] * 3  # acme's other app has its own (no) limit
    assert statuses(api, charlie, 3) == [200] * 3


def test_an_apps_keys_share_one_bucket_and_a_refused_request_creates_nothing(api, alice):
    second_key = api_key_create(app=App.objects.get(pk=alice.tenant.app_id), name="second").raw_key
    limit(alice, 12)  # two requests at once

    first = api.post(TASKS, {"prompt": "one"}, format="json", HTTP_AUTHORIZATION=f"Bearer {alice.key}")
    second = api.post(TASKS, {"prompt": "two"}, format="json", HTTP_AUTHORIZATION=f"Bearer {second_key}")
    third = api.post(TASKS, {"prompt": "three"}, format="json", HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert (first.status_code, second.status_code, third.status_code) == (202, 202, 429)
    assert sorted(Task.objects.values_list("prompt", flat=True)) == ["one", "two"]


def test_an_app_past_its_limit_can_still_cancel_its_tasks(api, alice):
    limit(alice, 6)
    task = api.post(TASKS, {"prompt": "stop me"}, format="json", HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()
    assert statuses(api, alice, 1) == [429]

    cancelled = api.post(f"{TASKS}/{task['id']}/cancel", HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_the_default_limit_binds_apps_without_their_own_and_zero_means_none(api, alice, bob, settings):
    settings.MAGEAGENT = {**settings.MAGEAGENT, "API_RATE_PER_MIN": 6}
    limit(alice, 0)
    limit(bob, None)

    assert statuses(api, alice, 4) == [200] * 4
    assert statuses(api, bob, 2) == [200, 429]


def test_concurrent_requests_cannot_take_more_than_the_bucket_holds():
    bucket = "test:concurrent"
    fresh_bucket(bucket)

    # 6 a minute with a 50 s burst: 5 at once, the next one 10 s later.
    with ThreadPoolExecutor(20) as pool:
        waits = list(pool.map(lambda _: rate_limit_try_sync(bucket, rpm=6, burst_s=50), range(40)))

    assert sum(1 for w in waits if w == 0) == 5
    assert all(0 < w <= 10 for w in waits if w != 0)


def test_without_redis_the_limit_lets_requests_through(api, alice, monkeypatch):
    limit(alice, 6)

    def redis_down(*args, **kwargs):
        raise redis.ConnectionError("connection refused")

    monkeypatch.setattr(throttling, "rate_limit_try_sync", redis_down)

    assert statuses(api, alice, 3) == [200] * 3


def test_without_redis_a_stream_opens_too(alice, monkeypatch):
    async def redis_down(*args, **kwargs):
        raise redis.ConnectionError("connection refused")

    monkeypatch.setattr(throttling, "rate_limit_try", redis_down)
    limited = dataclasses.replace(alice.tenant, requests_per_minute=6)

    assert asyncio.run(throttling.stream_open_wait(limited)) == 0.0


@pytest.mark.django_db(transaction=True)
def test_each_subscription_on_the_multiplexed_socket_counts_and_a_refused_one_leaves_the_socket_open(alice):
    from channels.testing import WebsocketCommunicator

    from mageagent.asgi import application

    tasks = [Task.objects.create(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id, prompt="p")
             for _ in range(2)]
    for task in tasks:
        events.append(str(task.id), events.encode("status", status="queued", attempt=1))
    App.objects.filter(pk=alice.tenant.app_id).update(requests_per_minute=12)  # a bucket of 2
    events.sync_client().delete(*_keys(f"app:{alice.tenant.app_id}"))

    async def main() -> list[dict[str, Any]]:
        ws = WebsocketCommunicator(application, f"/mageagent/ws?token={alice.key}", headers=[(b"host", b"testserver")])
        connected, _ = await ws.connect(timeout=10)  # the handshake takes one
        assert connected
        frames = []
        for task in tasks:  # the first subscription takes the other; the second finds none
            await ws.send_json_to({"type": "subscribe-task", "taskId": str(task.id)})
            frames.append(await ws.receive_json_from(timeout=10))
        await ws.send_json_to({"type": "unsubscribe-task", "taskId": str(tasks[0].id)})
        await ws.send_json_to({"type": "nonsense", "taskId": "x"})  # the socket still answers
        frames.append(await ws.receive_json_from(timeout=10))
        await ws.disconnect()
        return frames

    subscribed, refused, still_open = asyncio.run(asyncio.wait_for(main(), 30))

    assert subscribed["type"] == "task-update" and subscribed["taskId"] == str(tasks[0].id)
    assert refused["type"] == "error" and refused["taskId"] == str(tasks[1].id)
    assert refused["error"]["code"] == "rate_limited"
    assert still_open["error"]["code"] == "validation_error"
