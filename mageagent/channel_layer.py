"""channels-redis's pub/sub layer, with subscriptions batched instead of queued one by one.

Every follower subscribes twice (its own channel, then its task's group) and unsubscribes
twice when it ends. channels-redis sends each of these under one asyncio.Lock per Redis
connection, and a lock is handed to its next waiter only on the loop's next iteration. On
a loaded web process an iteration takes tens of milliseconds, so the subscriptions of the
followers that open together wait one iteration each, in a line: offered twice the
tasks the machine serves, `group_add` took 2-3 s at p90 (4 s at worst), the followers'
first events came 4-7 s after they opened and daphne refused the WebSocket handshakes left
open 5 s.

Here the changes asked for while one is being sent join one batch: one SUBSCRIBE and one
UNSUBSCRIBE per batch, for any number of channels, and every caller of the batch resumes
together when it is sent. What a follower sees is unchanged: it is in its group locally
at once (channels-redis adds it before subscribing), and the Redis subscription is sent
before `group_add` returns.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close, decode_hosts


class _BatchingShard(RedisSingleShardConnection):
    def __init__(self, host: Any, channel_layer: Any) -> None:
        super().__init__(host, channel_layer)
        self._wanted: dict[str, bool] = {}  # channel -> subscribed, still to be sent
        self._sender: asyncio.Future[None] | None = None

    async def subscribe(self, channel: str) -> None:
        await self._want(channel, True)

    async def unsubscribe(self, channel: str) -> None:
        await self._want(channel, False)

    async def _want(self, channel: str, subscribed: bool) -> None:
        if channel not in self._wanted and (channel in self._subscribed_to) == subscribed:
            return
        self._wanted[channel] = subscribed
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_wanted())
        # Shielded: a follower cancelled while waiting (its client left) must not cancel
        # the batch that carries the other followers' subscriptions.
        await asyncio.shield(self._sender)

    async def _send_wanted(self) -> None:
        async with self._lock:
            # Changes asked for while a batch is sent go in the next round of this loop;
            # it ends with nothing left, and no caller can add one between that check and
            # this task being done (no await in between).
            while self._wanted:
                wanted, self._wanted = self._wanted, {}
                subscribe = [c for c, on in wanted.items() if on and c not in self._subscribed_to]
                unsubscribe = [c for c, on in wanted.items() if not on and c in self._subscribed_to]
                self._ensure_redis()
                self._ensure_receiver()
                if subscribe:
                    await self._pubsub.subscribe(*subscribe)
                    self._subscribed_to.update(subscribe)
                if unsubscribe:
                    await self._pubsub.unsubscribe(*unsubscribe)
                    self._subscribed_to.difference_update(unsubscribe)


class _LoopLayer(RedisPubSubLoopLayer):
    def __init__(self, hosts: Any = None, **kwargs: Any) -> None:
        super().__init__(hosts, **kwargs)
        self._shards = [_BatchingShard(host, self) for host in decode_hosts(hosts)]

    async def new_channel(self, prefix: str = "specific.") -> str:
        # A channel's own Redis subscription carries only messages sent to it by name, and
        # events reach followers through their task's group. With Redis down it fails, and a
        # consumer failing here never answers its WebSocket handshake (daphne sends a 500):
        # the channel exists in-process all the same (channels-redis registers it first), so
        # it is returned, and its followers subscribe to their groups when Redis is back.
        known = set(self.channels)
        try:
            return str(await super().new_channel(prefix))
        except (redis.ConnectionError, redis.TimeoutError):
            created = set(self.channels) - known
            if len(created) != 1:
                raise
            return created.pop()


class BatchingPubSubChannelLayer(RedisPubSubChannelLayer):
    """channels_redis.pubsub.RedisPubSubChannelLayer with batched (un)subscriptions."""

    def _get_layer(self) -> RedisPubSubLoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer
