"""Task inputs beyond the prompt: a conversation, a system prompt and sampling parameters,
validated, recorded, echoed, part of the idempotency hash, and sent to the provider."""

from __future__ import annotations

import pytest

from tasks.models import Task

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = "/mageagent/api/v1/tasks"

HISTORY = [{"role": "user", "content": "My name is Ada."},
           {"role": "assistant", "content": "Hello Ada."}]
PARAMS = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 64, "stop": ["END"], "seed": 7,
          "response_format": {"type": "json_schema",
                              "json_schema": {"name": "person", "schema": {"type": "object"}}}}


def post(api, persona, body, **headers):
    return api.post(TASKS, body, format="json", HTTP_AUTHORIZATION=f"Bearer {persona.key}", **headers)


def test_a_task_records_and_echoes_its_conversation_and_parameters(api, alice):
    response = post(api, alice, {"messages": HISTORY, "prompt": "What is my name?", "system": "Be brief.",
                                 **PARAMS})

    assert response.status_code == 202, response.content
    task = response.json()
    assert task["messages"] == [*HISTORY, {"role": "user", "content": "What is my name?"}]
    assert task["prompt"] == "What is my name?" and task["system"] == "Be brief."
    assert {k: task[k] for k in PARAMS} == PARAMS
    stored = Task.objects.get(pk=task["id"])
    assert stored.messages[-1]["content"] == "What is my name?" and stored.seed == 7


def test_messages_alone_make_their_last_user_message_the_prompt(api, alice):
    messages = [*HISTORY, {"role": "user", "content": [{"type": "text", "text": "And my age?"}]}]

    task = post(api, alice, {"messages": messages}).json()

    assert task["prompt"] == "And my age?" and task["messages"] == messages


def test_a_prompt_alone_is_a_task_without_messages_or_parameters(api, alice):
    task = post(api, alice, {"prompt": "hi"}).json()

    assert task["messages"] == [] and task["system"] is None
    assert task["temperature"] is None and task["response_format"] is None


@pytest.mark.parametrize(("body", "field"), [
    ({}, "prompt"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "hi", "colour": "red"}]}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"prompt": "hi", "temperature": 3}, "temperature"),
    ({"prompt": "hi", "top_p": -1}, "top_p"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "stop": [1]}, "stop"),
    ({"prompt": "hi", "seed": "x"}, "seed"),
    ({"prompt": "hi", "response_format": {"type": "xml"}}, "response_format"),
    ({"prompt": "hi", "response_format": {"type": "json_schema"}}, "response_format"),
])
def test_malformed_inputs_are_a_400_naming_the_field(api, alice, body, field):
    response = post(api, alice, body)

    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["message"]


def test_the_same_idempotency_key_with_other_parameters_is_a_conflict(api, alice):
    first = post(api, alice, {"prompt": "hi", "temperature": 0.1}, HTTP_IDEMPOTENCY_KEY="k-1")
    again = post(api, alice, {"prompt": "hi", "temperature": 0.1}, HTTP_IDEMPOTENCY_KEY="k-1")
    other = post(api, alice, {"prompt": "hi", "temperature": 0.9}, HTTP_IDEMPOTENCY_KEY="k-1")

    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 409)
    assert again.json()["id"] == first.json()["id"]


def test_routing_counts_the_whole_conversation(api, alice):
    long_history = [{"role": "user", "content": "word " * 3000}, {"role": "assistant", "content": "ok"}]
    short = api.post("/mageagent/api/v1/route", {"prompt": "hi"}, format="json",
                     HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()
    long = api.post("/mageagent/api/v1/route", {"prompt": "hi", "messages": long_history}, format="json",
                    HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()

    assert long["estimated_prompt_tokens"] > short["estimated_prompt_tokens"] + 2900


def test_a_prompt_as_long_as_the_largest_context_window_is_accepted_and_one_longer_is_not(api, alice, settings):
    from routing.selectors import largest_context_window, max_prompt_chars

    window = largest_context_window()
    fits = "word " * (max_prompt_chars() // 5)
    too_long = "x" * (max_prompt_chars() + 1)

    accepted = post(api, alice, {"prompt": fits})
    refused = post(api, alice, {"messages": [{"role": "user", "content": too_long}]})

    assert max_prompt_chars() == 4 * window > 400_000
    assert accepted.status_code == 202, accepted.content[:300]
    assert refused.status_code == 400
    assert f"({window} tokens)" in refused.json()["error"]["message"]


def test_the_body_limit_of_the_prompt_paths_follows_the_longest_prompt(settings):
    from mageagent.handlers import max_request_bytes
    from routing.selectors import max_prompt_chars

    assert max_request_bytes("/mageagent/api/v1/tasks") > 2 * max_prompt_chars()


IMAGE = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                      {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}]}]


def test_images_go_to_vision_models_only(api, alice):
    from routing.selectors import models_all

    blind = next(s.id for s in models_all().values() if s.enabled and not s.supports_vision)
    refused = post(api, alice, {"messages": IMAGE, "model": blind})
    routed = api.post("/mageagent/api/v1/route", {"messages": IMAGE}, format="json",
                      HTTP_AUTHORIZATION=f"Bearer {alice.key}").json()

    assert refused.status_code == 400 and "does not take images" in refused.json()["error"]["message"]
    assert models_all()[routed["model"]].supports_vision and "vision" in routed["characteristics"]
