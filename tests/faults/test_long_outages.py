"""Long outages, as the issue's "down for up to 60 s" means them, on a stack of their own: a
private PostgreSQL cluster stopped outright (`pg_ctl stop -m immediate`, not connections
cut) for DATABASE_DOWN_S, then its Redis killed for REDIS_DOWN_S, past
MAGEAGENT_FOLLOW_OUTAGE_S. Tasks stream through each outage, new POSTs arrive and followers
hold their streams open; afterwards every accepted task ends once, its log gapless.

One stack and one cluster for both scenarios: each outage costs its length in wall time, so
they share the set-up (initdb, migrate, start-up)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from devtools.faults import PrivatePostgres, PrivateRedis, postgres_bindir
from tests.clients import API, Client, sim, tokens, wait_for
from tests.faults.checks import assert_ended_once, record_recovery
from tests.faults.test_web_outages import EventSource, SocketFollower, assert_each_event_once_then_done
from tests.stack import ROOT, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

DATABASE_DOWN_S = 60.0
REDIS_DOWN_S = 60.0
PING_S = 2.0  # MAGEAGENT_SSE_PING_S: the contract's 15 s, shortened so an outage holds several
# The defaults a client meets (MAGEAGENT_FOLLOW_OUTAGE_S 30 s, MAGEAGENT_DEPENDENCY_WAIT_S
# 60 s) are what is under test: the stack does not shorten them.
FOLLOW_OUTAGE_S = 30.0
CLIENT_TIMEOUT_S = 15.0  # MAGEAGENT_DB_POOL_TIMEOUT (5 s) with room for a loaded machine


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    if postgres_bindir() is None:
        pytest.skip("no PostgreSQL server binaries (pg_config --bindir)")
    server = PrivatePostgres().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def long_stack(cluster: PrivatePostgres, private_redis: PrivateRedis) -> Iterator[tuple[Stack, str]]:
    """A stack on the private cluster, and an API key made there."""
    stack = Stack(cluster.create_database("mageagent_outage"),
                  {"REDIS_URL": private_redis.url, "MAGEAGENT_SSE_PING_S": str(PING_S)})
    env = stack.env()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=300)
    made = subprocess.run([sys.executable, "manage.py", "create_api_key", "--company", "outage", "--app", "web"],
                          cwd=ROOT, env=env, check=True, timeout=120, capture_output=True, text=True)
    key = made.stdout.strip().splitlines()[-1]
    try:
        yield stack.start(), key
    finally:
        stack.stop()


def post_for(client: Client, seconds: float, label: str) -> tuple[list[str], list[httpx.Response]]:
    """POST /tasks about once a second for `seconds`: (ids accepted, every answer). Each must
    be answered within CLIENT_TIMEOUT_S (a client's patience): a request left hanging fails."""
    accepted, answers = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = client.http.post(f"{API}/tasks", json={"prompt": f"{label} {sim(tokens=20)}"},
                                    timeout=CLIENT_TIMEOUT_S)
        answers.append(response)
        if response.status_code == 202:
            accepted.append(response.json()["id"])
        time.sleep(1)
    return accepted, answers


def streaming(client: Client, label: str, n: int, seconds: float) -> list[str]:
    """n tasks that stream for about `seconds`, returned once each is processing."""
    ids = [client.create(f"{label} {i} {sim(tokens=int(seconds * 10), interval_ms=100)}")["id"] for i in range(n)]
    wait_for(lambda: all(client.get(i)["status"] == "processing" for i in ids), f"{label} tasks to stream")
    return ids


def test_the_database_stopped_for_60_s_is_503_and_loses_nothing(long_stack, cluster):
    stack, key = long_stack
    client = Client(stack.web_url, key)
    # They stream on through the outage (the log is in Redis) and finish in it: their final
    # transition waits for the database (MAGEAGENT_DEPENDENCY_WAIT_S, 60 s).
    running = streaming(client, "through the database outage", 3, seconds=DATABASE_DOWN_S / 2)
    followers = [EventSource(stack.web_url, key, task_id) for task_id in running]
    for follower in followers:
        follower.start()
    wait_for(lambda: all(f.events for f in followers), "the followers to see events")

    cluster.stop()
    down_at = time.monotonic()
    accepted, answers = post_for(client, DATABASE_DOWN_S - 2, "during the database outage")
    polled = client.http.get(f"{API}/tasks/{running[0]}", timeout=CLIENT_TIMEOUT_S)
    while time.monotonic() - down_at < DATABASE_DOWN_S:
        time.sleep(0.2)
    cluster.start()
    up_at = time.monotonic()
    record_recovery(f"database stopped ({DATABASE_DOWN_S:.0f} s)", client, running + accepted, up_at)

    # Every API answer meanwhile was the contract's 503 with Retry-After, never a 500; a POST
    # may have been accepted only while the database still answered.
    refused = [r for r in [*answers, polled] if r.status_code != 202]
    assert refused, "no request met the outage"
    for response in refused:
        assert response.status_code == 503, (response.status_code, response.text[:300])
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["error"]["code"] == "unavailable"
    for task_id in running:
        assert assert_ended_once(client, task_id, tokens(int(DATABASE_DOWN_S / 2 * 10)))["status"] == "completed"
    for task_id in accepted:
        assert assert_ended_once(client, task_id, tokens(20))["status"] == "completed"
    # The open streams read Redis only: they kept pinging through the outage, saw every
    # event once and then `done`, without reconnecting.
    for follower in followers:
        assert follower.done.wait(60)
        assert_each_event_once_then_done(follower.events)
        assert follower.pings_between(down_at, up_at) >= 2
        assert follower.statuses == [200]


def test_redis_down_for_60_s_past_the_followers_patience_loses_nothing(long_stack, private_redis):
    stack, key = long_stack
    client = Client(stack.web_url, key)
    running = streaming(client, "through the Redis outage", 3, seconds=5)
    sse = EventSource(stack.web_url, key, running[0])
    socket = SocketFollower(stack.web_url, key, running[1])
    sse.start()
    socket.start()
    wait_for(lambda: sse.events and socket.frames, "the followers to see events")

    private_redis.kill()
    down_at = time.monotonic()
    # POST /tasks still answers 202 (the row is the ledger; the broker gets it when Redis is
    # back) or 503; never a 500.
    accepted, answers = post_for(client, 5, "during the Redis outage")
    while time.monotonic() - down_at < REDIS_DOWN_S:
        time.sleep(0.2)
    private_redis.start()
    up_at = time.monotonic()
    record_recovery(f"Redis killed ({REDIS_DOWN_S:.0f} s down, AOF)", client, running + accepted, up_at)

    assert {r.status_code for r in answers} <= {202, 503}, [(r.status_code, r.text[:200]) for r in answers]
    for task_id in running:
        task = assert_ended_once(client, task_id, tokens(50))
        assert task["status"] == "completed", (task["error"], task["attempts"], stack.logs()[-6000:])
    for task_id in accepted:
        assert assert_ended_once(client, task_id, tokens(20))["status"] == "completed"
    assert sse.done.wait(90) and socket.done.wait(90)
    # Past MAGEAGENT_FOLLOW_OUTAGE_S the SSE response ended (EventSource reconnects with
    # Last-Event-ID) and the socket closed with 4503 (the client reconnects with ?after=);
    # it pinged meanwhile, and each saw every event once, then `done`.
    assert sse.ended and sse.ended[0] - down_at >= FOLLOW_OUTAGE_S - 1
    assert sse.pings_between(down_at, down_at + FOLLOW_OUTAGE_S) >= 2
    assert 4503 in socket.close_codes
    assert_each_event_once_then_done(sse.events)
    assert_each_event_once_then_done([f for f in socket.frames if "seq" in f])
