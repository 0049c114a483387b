"""The task event log: one ordered, gapless log per task, with live fan-out.

Layout in Redis (all keys expire EVENT_TTL_S after the last write):
  ma:ev:<id>   a stream whose entry ids are "<seq>-0"; field "e" holds the event JSON
  ma:em:<id>   a hash: seq (last assigned), owner (the attempt allowed to write), closed

One Lua script assigns the next seq, appends, and publishes the event into the task's
Channels group (the pub/sub layer's wire format, JSON serializer), all atomically. So
every event a subscriber sees live is already in the log, in seq order, and a subscriber
that joins the group first and then replays the log misses nothing (tasks/follow.py).

Writers are fenced: an attempt "claims" the log with a token and its appends fail once
another attempt claims it or the log is closed by a `done` event. A zombie worker
therefore cannot write into a task that was re-run or finished elsewhere.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import math
import time
from typing import Any

import orjson
import redis
from django.conf import settings

from mageagent.redis import async_client, sync_client, sync_script

# The pub/sub channel of cancel requests: task_cancel publishes a task id, every worker's
# loop (tasks/runtime/loop.py) cancels the stream it holds for it.
CANCEL_CHANNEL = "ma:cancel"
ANY_OWNER = "*"
# The largest position a reader may resume after: a signed 64-bit integer. The stream's
# ids are "<seq>-0" with an unsigned 64-bit seq, and a read starts at position + 1.
MAX_POSITION = 2**63 - 1
SEALED = -1
FENCED = -2

_APPEND = """
local m = redis.call('HMGET', KEYS[2], 'closed', 'owner')
if m[1] then return -1 end
if ARGV[1] ~= '*' and (m[2] or '') ~= ARGV[1] then return -2 end
local ttl = tonumber(ARGV[2])
local close = ARGV[3] == '1'
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'tokens', ARGV[6]) end
local seq = 0
for i = 7, #ARGV do
  seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
  local ev = '{"seq":' .. seq .. ',' .. ARGV[i]
  redis.call('XADD', KEYS[1], seq .. '-0', 'e', ev)
  redis.call('PUBLISH', ARGV[4],
    '{"type":"task.event","task":"' .. ARGV[5] .. '","raw":' .. cjson.encode(ev) .. '}')
end
if close then redis.call('HSET', KEYS[2], 'closed', '1') end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return seq
"""

_CLAIM = """
if redis.call('HGET', KEYS[1], 'closed') then return 0 end
if ARGV[3] then
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner and owner ~= ARGV[3] then return -1 end
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


# A log that is gone (Redis restarted empty) begins again after ARGV[1]; one that exists
# keeps its numbering.
_REOPEN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'seq', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


def stream_key(task_id: str) -> str:
    return f"ma:ev:{task_id}"


def meta_key(task_id: str) -> str:
    return f"ma:em:{task_id}"


def group_name(task_id: str) -> str:
    return f"task.{task_id}"


def _group_channel(task_id: str) -> str:
    # channels_redis.pubsub names a group's Redis channel "<prefix>__group__<group>".
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"].get("prefix", "asgi")
    return f"{prefix}__group__{group_name(task_id)}"


_second: tuple[int, str] = (0, "")


def now_iso() -> str:
    """UTC now as 2026-12-03T08:01:11.123Z. Every event carries one; the date part is
    formatted once a second."""
    global _second
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second = (second, dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S."))
    return f"{_second[1]}{int((now - second) * 1000):03d}Z"


def encode(event_type: str, **fields: Any) -> bytes:
    """An event body without its seq: b'"type":...}' (the script prepends '{"seq":N,')."""
    return orjson.dumps({"type": event_type, "ts": now_iso(), **fields})[1:]


def peek(raw: str | bytes) -> tuple[int, str]:
    """(seq, type) of a raw event, read from its fixed prefix without parsing it all."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    comma = text.index(",", 7)
    seq = int(text[7:comma])
    start = comma + 9  # ,"type":"
    return seq, text[start : text.index('"', start)]


def _args(task_id: str, owner: str, bodies: list[bytes], close: bool) -> tuple[list[str], list[Any]]:
    keys = [stream_key(task_id), meta_key(task_id)]
    args: list[Any] = [owner, settings.MAGEAGENT["EVENT_TTL_S"], "1" if close else "0",
                       _group_channel(task_id), task_id, ""]  # "": no token count to record
    return keys, [*args, *bodies]


# --- sync side (web views, services, the Celery thread) ------------------------------------
def append(task_id: str, *bodies: bytes, owner: str = ANY_OWNER, close: bool = False) -> int:
    """Append events; returns the last seq, SEALED or FENCED."""
    keys, args = _args(str(task_id), owner, list(bodies), close)
    return int(sync_script(_APPEND)(keys=keys, args=args))


def claim(task_id: str, owner: str, *, unless_owned_by_other_than: str | None = None) -> int:
    """Make `owner` the log's writer: 1, or 0 when the log is closed. With
    `unless_owned_by_other_than`, -1 (and nothing changes) when another writer than that
    one holds the log: a newer attempt, which a stale decision must not fence off."""
    args: list[Any] = [owner, settings.MAGEAGENT["EVENT_TTL_S"]]
    if unless_owned_by_other_than is not None:
        args.append(unless_owned_by_other_than)
    return int(sync_script(_CLAIM)(keys=[meta_key(str(task_id))], args=args))


def reopen(task_id: str, after: int) -> bool:
    """Number a lost log's next events after `after`, the last seq its attempt wrote: a
    follower connected across an empty Redis restart keeps a valid position. True when the
    log was gone; nothing changes when it exists (it kept its data, or a newer attempt began
    it again first)."""
    args = [after, settings.MAGEAGENT["EVENT_TTL_S"]]
    return bool(sync_script(_REOPEN)(keys=[meta_key(str(task_id))], args=args))


def is_closed(task_id: str) -> bool:
    return bool(sync_client().hget(meta_key(str(task_id)), "closed"))


def wait_closed(task_id: str, timeout: float) -> bool:
    """Block until the log is closed or `timeout` seconds pass; True when it is closed. Each
    round reads the last entry and the closed flag together, then blocks in XREAD for an
    entry after it: a `done` appended at any moment wakes it, and nothing polls."""
    client = sync_client()
    deadline = time.monotonic() + timeout
    while True:
        pipe = client.pipeline(transaction=True)
        pipe.xrevrange(stream_key(str(task_id)), count=1)
        pipe.hget(meta_key(str(task_id)), "closed")
        last, closed = pipe.execute()
        if closed:
            return True
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            return False
        client.xread({stream_key(str(task_id)): last[0][0] if last else "0-0"}, block=left_ms)


def read_after(task_id: str, after: int) -> list[str] | None:
    """Events with seq > after, or None when the log does not exist (expired or never written)."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = sync_client().xrange(  # type: ignore[assignment]
        stream_key(str(task_id)), f"{after + 1}-0", "+")
    if not entries and not sync_client().exists(meta_key(str(task_id))):
        return None
    return [fields[b"e"].decode() for _, fields in entries]


# --- async side (the worker's event loop, SSE and WebSocket consumers) ---------------------
class _Batcher:
    """Appends from one event loop share Redis round trips: every append made while a
    batch is in flight joins the next one. The worker makes one append per chunk of every
    stream it holds, so this is most of its per-chunk cost: redis-py spends far less CPU per
    command in a pipeline of tens than on a lone command, and most of it packing the
    arguments (BENCHMARKS.md, "Figures behind the design"). The batch is therefore packed
    here, once per call with bytes that need no encoding, and sent on a pooled connection."""

    def __init__(self) -> None:
        self.client = async_client()
        self.pending: list[tuple[bytes, asyncio.Future[int]]] = []
        self.flushing = False
        self.task: asyncio.Task[None] | None = None

    def append(self, command: bytes) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending.append((command, future))
        if not self.flushing:
            self.flushing = True
            self.task = asyncio.ensure_future(self._flush())
        return future

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    results = await self._execute([command for command, _ in batch])
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        if isinstance(result, Exception):
                            future.set_exception(result)
                        else:
                            future.set_result(int(result))
        finally:
            self.flushing = False

    async def _execute(self, calls: list[bytes]) -> list[Any]:
        packed = b"".join(calls)
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed)  # pings first if idle past health_check_interval
            results: list[Any] = []
            # One deadline for the batch's replies, not redis-py's per reply (its socket
            # timeout arms and cancels a loop timer around every read, a visible share of
            # the loop's streaming CPU).
            async with asyncio.timeout(conn.socket_timeout):
                for _ in calls:
                    try:
                        results.append(await conn.read_response(timeout=math.inf))
                    except redis.exceptions.ResponseError as exc:  # this reply only; the rest still follow
                        results.append(exc)
        except BaseException:
            await conn.disconnect()  # replies may be left unread: the connection cannot be reused
            raise
        finally:
            await pool.release(conn)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
            # Redis restarted or flushed its scripts: load it and send again (a NOSCRIPT
            # reply means that call did nothing).
            await self.client.script_load(_APPEND)
            return await self._execute(calls)
        return results


_APPEND_SHA = hashlib.sha1(_APPEND.encode()).hexdigest().encode()  # what SCRIPT LOAD answers
_EVALSHA = b"$7\r\nEVALSHA\r\n$40\r\n" + _APPEND_SHA + b"\r\n$1\r\n2\r\n"
_heads: dict[tuple[str, str], tuple[bytes, bytes]] = {}


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _append_command(task_id: str, owner: str, bodies: tuple[bytes, ...], close: bool, tokens: int | None) -> bytes:
    """The append script's EVALSHA call in the Redis protocol (RESP), as redis-py would pack
    it. Everything but the bodies is the same for every append of one attempt, so it is
    packed once (a stream's appends cost little more than their bodies)."""
    head = _heads.get((task_id, owner))
    if head is None:
        if len(_heads) > 10_000:
            _heads.clear()
        # _args: keys (2), then owner, ttl, the close flag, channel, task id, token count;
        # the flag and the count are the ones that vary between appends.
        keys, args = _args(task_id, owner, [], close)
        before = b"".join(_bulk(str(a).encode()) for a in (*keys, *args[:2]))
        after = b"".join(_bulk(str(a).encode()) for a in args[3:5])
        head = _heads[(task_id, owner)] = (before, after)
    argc = 3 + 2 + 6 + len(bodies)  # EVALSHA sha numkeys, the keys, the fixed args, the bodies
    parts = [b"*%d\r\n" % argc, _EVALSHA, head[0], b"$1\r\n1\r\n" if close else b"$1\r\n0\r\n", head[1],
             _bulk(b"%d" % tokens) if tokens is not None else b"$0\r\n\r\n"]
    for body in bodies:
        parts.append(_bulk(body))
    return b"".join(parts)


_batchers: dict[asyncio.AbstractEventLoop, _Batcher] = {}


def aappend(task_id: str, *bodies: bytes, owner: str = ANY_OWNER, close: bool = False,
            tokens: int | None = None) -> asyncio.Future[int]:
    """The async append: await it for the last seq, SEALED or FENCED. It is the batcher's
    future itself, not a coroutine around it, so a caller may shield it without a task.
    `tokens`: the answer's token count so far, recorded with the events (tokens_get)."""
    loop = asyncio.get_running_loop()
    batcher = _batchers.get(loop)
    if batcher is None:
        batcher = _batchers[loop] = _Batcher()
    return batcher.append(_append_command(str(task_id), owner, bodies, close, tokens))


async def aread_after(task_id: str, after: int) -> list[str] | None:
    client = async_client()
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange(  # type: ignore[assignment]
        stream_key(str(task_id)), f"{after + 1}-0", "+")
    if not entries and not await client.exists(meta_key(str(task_id))):
        return None
    return [fields[b"e"].decode() for _, fields in entries]


async def aclosed_tail(task_id: str) -> str | None:
    """The last event of a closed log (its `done`); None while the log is open."""
    client = async_client()
    if not await client.hget(meta_key(str(task_id)), "closed"):
        return None
    last: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrevrange(  # type: ignore[assignment]
        stream_key(str(task_id)), count=1)
    return last[0][1][b"e"].decode() if last else None
