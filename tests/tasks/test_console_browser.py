"""The task console in a real browser with the network cut: headless Chromium, whose only
reachable server is the service, driven over its DevTools protocol as a person would use the
page: open it, sign in (a key, or the admin's login form), read the list, follow a task to its
`done`, press cancel."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.clients import Client, sim, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True),
              pytest.mark.skipif(shutil.which("chromium") is None,
                                 reason="chromium is not installed (scripts/test.sh installs it as root)")]


class Page:
    """One Chromium tab, over the DevTools protocol (Runtime.evaluate, Page.navigate)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        sent = next(self.ids)
        self.ws.send(json.dumps({"id": sent, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == sent:
                assert "error" not in message, message
                return message["result"]

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && location.href !== 'about:blank'", "the page to load")

    def wait(self, expression: str, what: str, timeout: float = 60) -> Any:
        return wait_for(lambda: self.eval(expression), what, timeout=timeout)

    def text(self, element_id: str) -> str:
        return self.eval(f"document.getElementById({json.dumps(element_id)}).textContent")

    def fill(self, element_id: str, value: str) -> None:
        self.eval(f"document.getElementById({json.dumps(element_id)}).value = {json.dumps(value)}")

    def click(self, selector: str) -> None:
        self.eval(f"document.querySelector({json.dumps(selector)}).click()")

    def row(self, task_id: str) -> list[str] | None:
        """The list's cells for a task, once it is listed."""
        return self.eval(f"""(() => {{
            const row = document.querySelector('tr[data-task-id="{task_id}"]');
            return row && [...row.cells].map(c => c.textContent); }})()""")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Page]:
    # Loopback is never proxied, so the service answers; any other host goes to a proxy that
    # does not exist (the network is cut). Port 0: Chromium writes the one it took to the profile.
    argv = [shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path}", "--proxy-server=127.0.0.1:9", "--remote-debugging-port=0", "about:blank"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        active = tmp_path / "DevToolsActivePort"
        port = wait_for(lambda: active.exists() and active.read_text().split("\n")[0], "Chromium's DevTools port")
        targets = wait_for(lambda: [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json()
                                    if t["type"] == "page"], "a Chromium tab")
        with connect(targets[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            yield Page(ws)
    finally:
        process.kill()
        process.wait(10)


def sign_in_with_key(page: Page, base: str, key: str) -> None:
    page.goto(f"{base}/console/")
    assert page.eval("!document.getElementById('key-form').hidden")
    page.fill("key", key)
    page.click("#key-form button[type=submit]")
    page.wait("!document.getElementById('tasks-section').hidden", "the task list")


def test_a_tenant_lists_follows_a_running_task_to_done_and_cancels_another(stack, browser, alice, charlie):
    client, other = Client(stack.web_url, alice.key), Client(stack.web_url, charlie.key)
    finished = client.wait_terminal(client.create(f"short {sim(tokens=5)}")["id"])
    foreign = other.create(f"theirs {sim(tokens=3)}")["id"]

    sign_in_with_key(browser, stack.web_url, "mk_not-a-key")
    browser.wait("!document.getElementById('key-error').hidden", "the refused key's message")
    assert "refused" in browser.text("key-error")
    assert browser.eval("sessionStorage.length") == 0  # a refused key is not kept

    sign_in_with_key(browser, stack.web_url, alice.key)
    cells = wait_for(lambda: browser.row(finished["id"]), "the finished task in the list")
    # created, status, model, cost, duration, follow button
    assert cells[1] == "completed"
    assert cells[2] == finished["result"]["model"]
    assert float(cells[3]) == pytest.approx(finished["result"]["cost_usd"], abs=1e-6)
    assert cells[4].endswith(" s")
    assert browser.row(foreign) is None  # another company's task is not listed

    running = client.create(f"stream {sim(tokens=80, interval_ms=40)}")["id"]
    wait_for(lambda: browser.row(running), "the running task in the list")
    browser.click(f'tr[data-task-id="{running}"] button.follow')
    # Followed live: part of the answer shows while the task still runs.
    browser.wait("document.getElementById('output').textContent.length > 0"
                 " && document.getElementById('follow-note').textContent !== 'done'", "the first chunks", timeout=60)
    assert client.get(running)["status"] in ("queued", "processing")
    browser.wait("document.getElementById('follow-note').textContent === 'done'", "the task's done event", timeout=90)
    done = client.get(running)
    assert done["status"] == "completed"
    assert browser.text("output") == done["result"]["content"]
    assert browser.text("follow-status") == "completed"

    long = client.create(f"long {sim(tokens=3000, interval_ms=20)}")["id"]
    wait_for(lambda: browser.row(long), "the long task in the list")
    browser.click(f'tr[data-task-id="{long}"] button.follow')
    browser.wait("document.getElementById('output').textContent.length > 0", "the long task's first chunks")
    browser.click("#cancel")
    browser.wait("document.getElementById('follow-note').textContent === 'done'", "the cancelled task's done event")
    assert browser.text("follow-status") == "cancelled"
    cancelled = client.wait_terminal(long)
    assert cancelled["status"] == "cancelled"
    assert browser.text("output") == cancelled["result"]["content"]  # the partial answer, kept
    wait_for(lambda: (browser.row(long) or [None, None])[1] == "cancelled", "the list to show the cancel")


def test_staff_signed_in_through_the_admin_see_every_company_and_follow_any_task(stack, browser, alice, charlie):
    from django.contrib.auth.models import User

    User.objects.create_superuser("olivia", password="ops-console-pw")
    mine = Client(stack.web_url, alice.key).create(f"acme {sim(tokens=3)}")["id"]
    theirs = Client(stack.web_url, charlie.key).create(f"globex {sim(tokens=40, interval_ms=20)}")["id"]

    browser.goto(f"{stack.web_url}/admin/login/?next=/console/")
    browser.fill("id_username", "olivia")
    browser.fill("id_password", "ops-console-pw")
    browser.click("input[type=submit]")
    browser.wait("location.pathname === '/console/' && document.readyState === 'complete'", "the console")
    browser.wait("!document.getElementById('tasks-section').hidden", "the task list")

    assert browser.eval("document.getElementById('key-form').hidden")  # no key asked of staff
    assert wait_for(lambda: browser.row(mine), "acme's task")[1] == "acme / web"
    assert wait_for(lambda: browser.row(theirs), "globex's task")[1] == "globex / web"
    browser.click(f'tr[data-task-id="{theirs}"] button.follow')
    browser.wait("document.getElementById('follow-note').textContent === 'done'", "globex's task's done event")
    assert browser.text("output") == Client(stack.web_url, charlie.key).wait_terminal(theirs)["result"]["content"]
    # The page's only requests went to the service: the admin's and the console's own files.
    hosts = browser.eval("[...new Set(performance.getEntriesByType('resource').map(e => new URL(e.name).host))]")
    assert set(hosts) <= {stack.web_url.removeprefix("http://")}
