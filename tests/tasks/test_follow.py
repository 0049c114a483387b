"""tasks/follow.py in-process, against the real Redis and Channels layer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from channels.layers import get_channel_layer

from tasks import events
from tasks.follow import follow


@pytest.fixture
def task_id() -> AsyncIterator[str]:
    task_id = str(uuid.uuid4())
    yield task_id
    events.sync_client().delete(events.stream_key(task_id), events.meta_key(task_id))


async def test_duplicate_live_events_do_not_hold_back_the_heartbeat(task_id):
    events.append(task_id, events.encode("status", status="queued", attempt=1))
    stream = follow(task_id, 0, idle_s=0.2)
    first = await anext(stream)
    layer = get_channel_layer()

    async def redeliver_forever() -> None:
        # A live message the follower already has (a reconnect, a replay race): sends nothing.
        while True:
            await layer.group_send(events.group_name(task_id), {"type": "task.event", "task": task_id, "raw": first})
            await asyncio.sleep(0.02)

    sender = asyncio.ensure_future(redeliver_forever())
    try:
        after_first = await asyncio.wait_for(anext(stream), timeout=20)
    finally:
        sender.cancel()
        await stream.aclose()

    assert events.peek(first) == (1, "status")
    assert after_first is None  # the ping, not starved by the duplicates


async def test_resuming_past_the_end_of_a_finished_task_gets_done_and_ends(task_id):
    events.append(task_id, events.encode("chunk", content="hi"))
    events.append(task_id, events.encode("done", done=True, status="completed", result={"content": "hi"}),
                  close=True)

    received = [raw async for raw in follow(task_id, 7, idle_s=0.2) if raw is not None]

    assert [events.peek(raw) for raw in received] == [(8, "done")]
