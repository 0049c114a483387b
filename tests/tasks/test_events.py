"""The event log's async appends (tasks/events.py), against the real Redis."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
import uuid

import orjson

from mageagent.redis import async_client_close
from tasks import events, progress


def fresh_task() -> str:
    return str(uuid.uuid4())


def logged(task_id: str) -> list[dict]:
    return [orjson.loads(raw) for raw in events.read_after(task_id, 0) or []]


def run(coro):
    async def main():
        try:
            return await coro
        finally:  # each test's loop gets its own clients; close them with it
            events._batchers.clear()
            await async_client_close()
    return asyncio.run(main())


def test_concurrent_appends_of_many_tasks_land_gapless_and_in_order():
    tasks = [fresh_task() for _ in range(20)]

    async def write(task_id: str) -> list[int]:
        return [await events.aappend(task_id, events.encode("chunk", content=f"{task_id[:4]}-{i}"))
                for i in range(30)]

    async def main():
        return await asyncio.gather(*(write(t) for t in tasks))

    seqs = run(main())

    assert seqs == [list(range(1, 31))] * 20
    for task_id in tasks:
        assert [e["content"] for e in logged(task_id)] == [f"{task_id[:4]}-{i}" for i in range(30)]
        assert [e["seq"] for e in logged(task_id)] == list(range(1, 31))


def test_a_fenced_append_fails_alone_in_its_batch():
    owned, other = fresh_task(), fresh_task()
    events.claim(owned, "attempt-2")

    async def main():
        return await asyncio.gather(
            events.aappend(owned, events.encode("chunk", content="zombie"), owner="attempt-1"),
            events.aappend(other, events.encode("chunk", content="fine")),
            events.aappend(owned, events.encode("chunk", content="current"), owner="attempt-2"),
        )

    assert run(main()) == [events.FENCED, 1, 1]
    assert [e["content"] for e in logged(owned)] == ["current"]


def test_the_token_count_an_append_carries_is_the_running_tasks_progress():
    task_id, fenced = fresh_task(), fresh_task()
    events.claim(fenced, "attempt-2")

    async def main():
        await events.aappend(task_id, events.encode("chunk", content="a"), tokens=7)
        await events.aappend(task_id, events.encode("chunk", content="b"))  # none this time: 7 stays
        return await events.aappend(fenced, events.encode("chunk", content="zombie"), owner="attempt-1", tokens=5)

    assert run(main()) == events.FENCED
    assert progress.tokens_get(task_id) == 7
    assert [e["content"] for e in logged(task_id)] == ["a", "b"]
    assert progress.tokens_get(fenced) == 0  # a refused append records nothing


def test_appends_go_on_after_redis_forgets_the_script():
    task_id = fresh_task()

    async def main():
        first = await events.aappend(task_id, events.encode("chunk", content="a"))
        await events.async_client().script_flush()  # as after a Redis restart
        second = await events.aappend(task_id, events.encode("chunk", content="b"))
        return first, second

    assert run(main()) == (1, 2)
    assert [e["content"] for e in logged(task_id)] == ["a", "b"]


def test_an_async_append_that_closes_the_log_seals_it_for_every_later_writer():
    task_id = fresh_task()

    async def main():
        done = await events.aappend(task_id, events.encode("done", status="completed"), close=True)
        late = await events.aappend(task_id, events.encode("chunk", content="late"))
        return done, late

    assert run(main()) == (1, events.SEALED)
    assert events.is_closed(task_id) and [e["type"] for e in logged(task_id)] == ["done"]


def test_event_timestamps_are_utc_with_milliseconds_and_now():
    before = time.time()
    stamp = orjson.loads(b"{" + events.encode("chunk", content="x"))["ts"]
    after = time.time()

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    parsed_ms = round(dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)
    assert int(before * 1000) <= parsed_ms <= int(after * 1000)  # whole ms, no float edge


def test_a_log_redis_lost_is_numbered_on_after_the_last_event_its_attempt_wrote():
    lost, kept = str(uuid.uuid4()), str(uuid.uuid4())
    # Redis restarted empty: `lost` has no log any more; `kept` has one.
    events.append(kept, events.encode("status", status="queued", attempt=1))
    assert events.reopen(lost, 41)
    assert not events.reopen(kept, 41)
    assert events.append(lost, events.encode("status", status="queued", attempt=2)) == 42
    assert [events.peek(raw)[0] for raw in events.read_after(lost, 41) or []] == [42]
    assert events.append(kept, events.encode("status", status="processing", attempt=1)) == 2
