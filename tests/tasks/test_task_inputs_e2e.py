"""The conversation and parameters of a task reach the provider (the simulator echoes the
request it received)."""

from __future__ import annotations

import json

import pytest

from tests.clients import Client, sim

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_history_system_and_parameters_reach_the_provider(stack, alice):
    client = Client(stack.web_url, alice.key)
    history = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada."}]

    task = client.create(f"What is my name? {sim(echo=True)}", messages=history, system="Be brief.",
                         temperature=0.3, top_p=0.5, max_tokens=500, stop=["END"], seed=11,
                         response_format={"type": "json_object"}, model="gpt-4o-mini")
    done = client.wait_terminal(task["id"])

    assert done["status"] == "completed", done
    received = json.loads(done["result"]["content"])
    assert received["messages"] == [{"role": "system", "content": "Be brief."}, *history,
                                    {"role": "user", "content": f"What is my name? {sim(echo=True)}"}]
    assert {k: received[k] for k in ("temperature", "top_p", "max_tokens", "stop", "seed", "response_format")} == {
        "temperature": 0.3, "top_p": 0.5, "max_tokens": 500, "stop": ["END"], "seed": 11,
        "response_format": {"type": "json_object"}}
