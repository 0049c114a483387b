"""clients/python (mageagent_client) against the running service: submit, follow with exact
resume across connections cut mid-stream, wait, cancel, list; the `mageagent` command as a
subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mageagent_client import MageAgent, MageAgentError

from tests.clients import answer_from_chunks, sim, tokens, wait_for
from tests.infra import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MAGEAGENT_CLI = Path(sys.executable).parent / "mageagent"


@pytest.fixture
def agent(stack, alice) -> Iterator[MageAgent]:
    with MageAgent(stack.web_url, alice.key, reconnect_delay=0.05) as client:
        yield client


class CuttingProxy:
    """A TCP proxy to the service that cuts its first `cuts` SSE responses in the middle
    of their `after_events`+1-th event: the client sees the connection drop mid-stream."""

    def __init__(self, upstream_port: int, *, cuts: int, after_events: int) -> None:
        self.upstream_port = upstream_port
        self.cuts_left = cuts
        self.after_events = after_events
        self.cut = 0
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(downstream, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, downstream, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, from_service: bool) -> None:
        seen = b""
        try:
            while data := source.recv(65536):
                if from_service and self.cuts_left:
                    seen += data
                    # The first bytes of the event after the last one to let through.
                    at = _nth(seen, b"\ndata: ", self.after_events + 1)
                    if at >= 0:
                        with self.lock:
                            if self.cuts_left:
                                self.cuts_left -= 1
                                self.cut += 1
                                sink.sendall(data[:max(0, at + 10 - (len(seen) - len(data)))])
                                raise ConnectionAbortedError
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self.listener.close()


def _nth(data: bytes, needle: bytes, n: int) -> int:
    at = -1
    for _ in range(n):
        at = data.find(needle, at + 1)
        if at < 0:
            return -1
    return at


def test_submit_and_follow_read_every_event_of_the_task(agent):
    task = agent.submit(f"follow {sim(tokens=30, interval_ms=5)}", metadata={"from": "client"})

    events = list(agent.events(task["id"]))

    log = agent.get(task["id"])
    assert task["status"] == "queued" and task["metadata"] == {"from": "client"}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "done" and events[-1]["status"] == "completed"
    assert answer_from_chunks(events) == tokens(30) == log["result"]["content"]


def test_connections_cut_mid_stream_resume_with_nothing_missed_or_repeated(stack, alice):
    proxy = CuttingProxy(int(stack.web_url.rsplit(":", 1)[1]), cuts=2, after_events=5)
    try:
        with MageAgent(proxy.url, alice.key, reconnect_delay=0.05) as client:
            task = client.submit(f"cut {sim(tokens=60, interval_ms=10)}")
            events = list(client.events(task["id"]))
            reference = list(client.events(task["id"]))  # the proxy cuts no more
    finally:
        proxy.close()

    assert proxy.cut == 2
    assert events == reference
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert answer_from_chunks(events) == tokens(60)


def test_wait_returns_the_finished_task_and_run_submits_and_waits(agent):
    task = agent.submit(f"wait {sim(tokens=5)}")

    finished = agent.wait(task["id"], timeout=60)
    ran = agent.run(f"run {sim(tokens=4)}")

    assert finished["status"] == "completed" and finished["result"]["content"] == tokens(5)
    assert ran["status"] == "completed" and ran["result"]["content"] == tokens(4)


def test_cancel_stops_a_running_task(agent):
    task = agent.submit(f"long {sim(tokens=400, interval_ms=50)}")
    events = agent.events(task["id"])
    first = next(e for e in events if e["type"] == "chunk")

    agent.cancel(task["id"])
    rest = list(events)
    finished = agent.wait(task["id"])

    assert rest[-1]["status"] == "cancelled"
    assert finished["status"] == "cancelled"
    assert finished["result"]["content"] == answer_from_chunks([first, *rest])


def test_list_pages_through_the_callers_tasks_newest_first_with_filters(agent, charlie, stack):
    mine = [agent.submit(f"list {i} {sim(tokens=1)}")["id"] for i in range(3)]
    with MageAgent(stack.web_url, charlie.key) as globex:
        globex.submit(f"not acme's {sim(tokens=1)}")
    for task_id in mine:
        agent.wait(task_id)

    listed = [t["id"] for t in agent.list(page_size=2)]
    completed = [t["id"] for t in agent.list(status="completed", limit=2)]

    assert listed == mine[::-1]
    assert completed == mine[::-1][:2]


def test_errors_come_in_the_contracts_shape(agent, stack):
    with MageAgent(stack.web_url, "not-a-key") as stranger, pytest.raises(MageAgentError) as refused:
        stranger.submit("hello")
    with pytest.raises(MageAgentError) as missing:
        list(agent.events("00000000-0000-0000-0000-000000000000"))

    assert (refused.value.status, refused.value.code) == (401, "authentication_failed")
    assert (missing.value.status, missing.value.code) == (404, "not_found")


def cli(stack, key: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MAGEAGENT_URL": stack.web_url, "MAGEAGENT_API_KEY": key}
    return subprocess.Popen([str(MAGEAGENT_CLI), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_the_cli_prints_the_answer_as_it_streams_with_progress_on_stderr(stack, alice):
    proc = cli(stack, alice.key, "run", f"cli {sim(tokens=25, interval_ms=5)}", "--follow")
    out, err = proc.communicate(timeout=90)

    assert proc.returncode == 0, err
    assert out == tokens(25) + "\n"
    lines = err.splitlines()
    assert lines[0].startswith("mageagent: task ") and lines[0].endswith(" queued")
    assert any(line.startswith("mageagent: processing") for line in lines)
    assert any(line.startswith("mageagent: model ") for line in lines)
    assert lines[-1].startswith("mageagent: completed · ")


def test_the_cli_exits_non_zero_on_failure_on_cancel_and_on_a_bad_key(stack, alice):
    failing = cli(stack, alice.key, "run", f"bad {sim(error=400, error_message='no such thing')}", "--follow")
    failed_out, failed_err = failing.communicate(timeout=90)

    long = cli(stack, alice.key, "run", f"long {sim(tokens=400, interval_ms=50)}", "--follow")
    assert long.stderr is not None
    task_id = long.stderr.readline().split()[2]  # "mageagent: task ID queued"
    with MageAgent(stack.web_url, alice.key) as client:
        wait_for(lambda: client.get(task_id)["status"] == "processing", "the task to start")
        cancel = cli(stack, alice.key, "cancel", task_id)
        cancel.communicate(timeout=60)
        long_out, long_err = long.communicate(timeout=90)
        # The row is cancelled at once; its partial result is written just after the log closed.
        partial = wait_for(lambda: client.get(task_id)["result"], "the partial result")["content"]

    stranger = cli(stack, "not-a-key", "list")
    _, stranger_err = stranger.communicate(timeout=60)

    assert failing.returncode == 1 and failed_out == ""
    assert "mageagent: failed after" in failed_err and "no such thing" in failed_err
    assert cancel.returncode == 0
    assert long.returncode == 3 and long_err.splitlines()[-1].startswith("mageagent: cancelled")
    assert long_out == partial + "\n"  # what streamed before the cancel, as the task kept it
    assert stranger.returncode == 4 and "401 authentication_failed" in stranger_err
