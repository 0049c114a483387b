"""mageagent/channel_layer.py against the real Redis: subscriptions batched, none lost."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from django.conf import settings
from redis.asyncio.client import PubSub

from mageagent.channel_layer import BatchingPubSubChannelLayer
from tasks import events


def new_layer() -> BatchingPubSubChannelLayer:
    return BatchingPubSubChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])


@pytest.fixture
def subscribe_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Every SUBSCRIBE sent (its channels), still sent to Redis."""
    calls: list[tuple[str, ...]] = []
    real = PubSub.subscribe

    async def counted(self: PubSub, *channels: Any, **kwargs: Any) -> Any:
        calls.append(channels)
        return await real(self, *channels, **kwargs)

    monkeypatch.setattr(PubSub, "subscribe", counted)
    return calls


async def receive(layer: BatchingPubSubChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), 10)


def redis_channel(group: str) -> str:
    return f"{settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}__group__{group}"


async def subscribers(group: str) -> int:
    (_, count), = await events.async_client().pubsub_numsub(redis_channel(group))
    return int(count)


async def test_followers_opening_together_share_one_subscribe_and_each_gets_its_group(subscribe_calls):
    layer = new_layer()
    channels = [await layer.new_channel() for _ in range(40)]
    subscribe_calls.clear()
    groups = [f"task.{uuid.uuid4()}" for _ in channels]

    await asyncio.gather(*(layer.group_add(g, c) for g, c in zip(groups, channels, strict=True)))
    # Sent through Redis (another layer publishes), not delivered in-process.
    sender = new_layer()
    for group in groups:
        await sender.group_send(group, {"type": "task.event", "raw": group})
    received = await asyncio.gather(*(receive(layer, c) for c in channels))

    assert [m["raw"] for m in received] == groups
    assert sum(len(call) for call in subscribe_calls) == 40
    assert len(subscribe_calls) <= 2  # the first alone, the 39 that asked meanwhile together
    await layer.flush()
    await sender.flush()


async def test_a_follower_cancelled_while_waiting_does_not_cancel_the_others_subscriptions():
    layer = new_layer()
    first, second = await layer.new_channel(), await layer.new_channel()
    group_a, group_b = f"task.{uuid.uuid4()}", f"task.{uuid.uuid4()}"

    leaving = asyncio.ensure_future(layer.group_add(group_a, first))
    staying = asyncio.ensure_future(layer.group_add(group_b, second))
    await asyncio.sleep(0)
    leaving.cancel()
    await staying
    with pytest.raises(asyncio.CancelledError):
        await leaving
    sender = new_layer()
    await sender.group_send(group_b, {"type": "task.event", "raw": "b"})

    assert (await receive(layer, second))["raw"] == "b"
    assert await subscribers(group_b) == 1
    await layer.flush()
    await sender.flush()


async def test_the_last_change_asked_for_a_channel_wins():
    layer = new_layer()
    channel = await layer.new_channel()
    group = f"task.{uuid.uuid4()}"

    await asyncio.gather(layer.group_add(group, channel), layer.group_discard(group, channel))
    after_discard = await subscribers(group)
    await layer.group_add(group, channel)
    after_add = await subscribers(group)

    assert (after_discard, after_add) == (0, 1)
    await layer.flush()
