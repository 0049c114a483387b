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


def test_a_150k_token_document_is_accepted_and_routed_to_a_model_whose_window_holds_it(stack, alice):
    client = Client(stack.web_url, alice.key)
    document = "word " * 150_000  # 750,000 characters: past the old 400,000 and the old 2.5 MB body is close

    task = client.create(f"Summarize this document. {sim(tokens=5)}\n\n{document}")
    done = client.wait_terminal(task["id"])

    assert done["status"] == "completed", done["error"]
    assert done["routing"]["estimated_prompt_tokens"] > 150_000
    window = {m["id"]: m["context_window"] for m in client.http.get("/mageagent/api/v1/models").json()["results"]}
    assert window[done["routing"]["model"]] > 150_000
    assert "long_context" in done["routing"]["characteristics"]
