"""The worker process's event loop: where every in-flight LLM stream lives.

Celery's threads pool hands each task to a thread; the thread does the task's database
work and then waits on a coroutine run here. One loop per process therefore holds
hundreds of concurrent provider streams cheaply, while Celery keeps
acks, retries, revocation and Flower's view of the tasks.

The loop also runs the process's heartbeat (tasks/runtime/heartbeat.py) and listens for
cancel requests, cancelling the asyncio task that streams the cancelled task's answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any, TypeVar

from django.conf import settings

from mageagent.redis import async_client
from tasks.events import CANCEL_CHANNEL

from .heartbeat import WORKER_ID, WORKER_KEY, heartbeat_ttl, held

logger = logging.getLogger(__name__)
T = TypeVar("T")


class CancelRequested(Exception):
    pass


class Runtime:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Event()
        self.lock = threading.Lock()
        self.running: dict[str, asyncio.Task[Any]] = {}
        self.cancel_reasons: dict[str, str] = {}
        # Cancels that arrived while their task was between two coroutine runs.
        self.recent_cancels: OrderedDict[str, float] = OrderedDict()
        self.duties: list[asyncio.Task[None]] = []
        # When the heartbeat last failed to reach Redis (monotonic): messages sent around
        # then may be lost, which the reconciler then looks for at once (lease.py).
        self.redis_failed_at = 0.0

    def ensure_started(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            if self.loop is None:
                threading.Thread(target=self._main, name="mageagent-loop", daemon=True).start()
                self.started.wait()
        assert self.loop is not None
        return self.loop

    def _main(self) -> None:
        try:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is in requirements
            loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        self.duties = [loop.create_task(self._heartbeat()), loop.create_task(self._listen_for_cancels())]
        self.started.set()
        loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop from a worker thread and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self.ensure_started())
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    # --- running attempts ---------------------------------------------------------------
    def register(self, task_id: str, task: asyncio.Task[Any]) -> None:
        self.running[task_id] = task
        if task_id in self.recent_cancels:
            self.cancel(task_id, "cancelled")

    def unregister(self, task_id: str) -> None:
        self.running.pop(task_id, None)

    def cancel(self, task_id: str, reason: str) -> None:
        task = self.running.get(task_id)
        if task is None:
            self.recent_cancels[task_id] = time.monotonic()
            while len(self.recent_cancels) > 10_000:
                self.recent_cancels.popitem(last=False)
            return
        self.cancel_reasons[task_id] = reason
        task.cancel()

    # --- background duties ----------------------------------------------------------------
    async def _heartbeat(self) -> None:
        client = async_client()
        while True:
            try:
                # The tasks it holds, so that one it dropped is not vouched for (heartbeat.held_by).
                await client.set(WORKER_KEY + WORKER_ID, held.snapshot(), ex=heartbeat_ttl())
            except Exception:
                self.redis_failed_at = time.monotonic()
                logger.exception("worker heartbeat failed")
            await asyncio.sleep(settings.MAGEAGENT["WORKER_HEARTBEAT_S"])

    async def _listen_for_cancels(self) -> None:
        while True:
            try:
                pubsub = async_client().pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(CANCEL_CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.cancel(message["data"].decode(), "cancelled")
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("cancel listener lost its connection; reconnecting")
                await asyncio.sleep(0.5)


runtime = Runtime()
