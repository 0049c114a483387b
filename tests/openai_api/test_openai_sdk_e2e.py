"""The official openai Python SDK against /v1, end to end: daphne, a Celery worker and the
LLM simulator as processes. Every request is a task of the key's app."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.clients import Client, answer_from_chunks, sim, tokens, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def sdk(stack, alice) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.web_url}/v1", api_key=alice.key, max_retries=0, timeout=60)


@pytest.fixture
def native(stack, alice) -> Client:
    return Client(stack.web_url, alice.key)


def task_id(openai_id: str) -> str:
    import uuid

    return str(uuid.UUID(hex=openai_id.split("_", 1)[-1].split("-", 1)[-1]))


def test_models_list_the_catalog_and_auto(sdk, native):
    ids = [m.id for m in sdk.models.list()]
    catalog = {m["id"] for m in native.http.get("/mageagent/api/v1/models").json()["results"]}

    assert ids[0] == "auto" and set(ids[1:]) == catalog and "gpt-4o-mini" in ids
    assert sdk.models.retrieve("gpt-4o-mini").owned_by == "openai"


def test_a_chat_completion_is_a_task_and_answers_in_openais_shape(sdk, native):
    completion = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {sim(text='Hello there, Ada.')}"}])

    assert completion.object == "chat.completion" and completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.content == "Hello there, Ada."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 3 and completion.usage.total_tokens > 3
    task = native.get(task_id(completion.id))
    assert task["status"] == "completed" and task["result"]["content"] == "Hello there, Ada."


def test_a_streamed_chat_completion_carries_the_text_and_the_usage(sdk):
    stream = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"count {sim(tokens=20, interval_ms=5)}"}],
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == tokens(20)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_history_and_parameters_reach_the_provider(sdk):
    history = [{"role": "system", "content": "You are terse."},
               {"role": "user", "content": "My name is Ada."},
               {"role": "assistant", "content": "Noted."},
               {"role": "user", "content": f"What is my name? {sim(echo=True)}"}]

    completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=history, temperature=0.25, top_p=0.5,
                                             max_completion_tokens=300, stop=["END"], seed=5)

    received = json.loads(completion.choices[0].message.content)
    assert received["messages"] == history  # no system prompt of the platform's added
    assert {k: received[k] for k in ("temperature", "top_p", "max_tokens", "stop", "seed")} == {
        "temperature": 0.25, "top_p": 0.5, "max_tokens": 300, "stop": ["END"], "seed": 5}


def test_structured_output_asks_the_provider_for_the_schema(sdk):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}

    completion = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"Who? {sim(echo=True)}"}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})

    received = json.loads(completion.choices[0].message.content)
    assert received["response_format"] == {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}


def test_the_clients_own_function_comes_back_as_a_tool_call_and_its_result_continues_the_chat(sdk):
    ask = {"role": "user", "content": f"Weather in Paris? {sim(tool_calls=[{'name': 'get_weather', 'arguments': {'city': 'Paris'}}], text='It is sunny.')}"}  # noqa: E501

    first = sdk.chat.completions.create(model="gpt-4o-mini", messages=[ask], tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    second = sdk.chat.completions.create(model="gpt-4o-mini", tools=[WEATHER], messages=[
        ask, first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "22 C, sunny"}])

    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert second.choices[0].message.content == "[tool:get_weather 22 C, sunny] It is sunny."


def test_a_streamed_tool_call_arrives_as_tool_call_deltas(sdk):
    chunks = list(sdk.chat.completions.create(model="gpt-4o-mini", tools=[WEATHER], stream=True, messages=[
        {"role": "user", "content": f"Weather? {sim(tool_calls=[{'name': 'get_weather', 'arguments': {'city': 'Oslo'}}])}"}]))  # noqa: E501

    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [("get_weather", {"city": "Oslo"})]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_auto_lets_the_router_choose_a_catalog_model(sdk, native):
    completion = sdk.chat.completions.create(model="auto",
                                             messages=[{"role": "user", "content": f"hi {sim(tokens=3)}"}])

    task = native.get(task_id(completion.id))
    assert completion.model == task["routing"]["model"] != "auto"
    assert task["model"] is None and "requested explicitly" not in task["routing"]["reason"]


def test_errors_come_in_openais_shape_with_the_native_statuses(sdk, stack):
    with pytest.raises(openai.BadRequestError) as unknown_model:
        sdk.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as unknown_field:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                    frequency_penalty=1.0)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve("resp_00000000000000000000000000000000")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.web_url}/v1", api_key="wrong", max_retries=0).models.list()

    assert unknown_model.value.code == "validation_error" and "no-such-model" in unknown_model.value.message
    assert unknown_field.value.param == "frequency_penalty"
    body = httpx.get(f"{stack.web_url}/v1/nothing-here").json()
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_a_client_that_leaves_a_streamed_chat_completion_cancels_its_task(sdk, native):
    stream = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"long {sim(tokens=400, interval_ms=50)}"}],
        stream=True)
    first = next(iter(stream))
    stream.close()

    wait_for(lambda: native.get(task_id(first.id))["status"] == "cancelled", "the task cancelled", 30)


def test_a_client_that_gives_up_on_a_plain_chat_completion_cancels_its_task(sdk, native, alice):
    impatient = sdk.with_options(timeout=2.0)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(
            model="gpt-4o-mini", metadata={"case": "impatient"},
            messages=[{"role": "user", "content": f"long {sim(tokens=400, interval_ms=50)}"}])

    tasks = native.http.get("/mageagent/api/v1/tasks").json()["results"]
    task = next(t for t in tasks if t["metadata"].get("case") == "impatient")
    wait_for(lambda: native.get(task["id"])["status"] == "cancelled", "the task cancelled", 30)


# --- Responses ---------------------------------------------------------------------------------
def test_a_plain_response_and_a_conversation_continued_from_it(sdk):
    first = sdk.responses.create(model="gpt-4o-mini", instructions="Be brief.",
                                 input=f"My name is Ada. {sim(text='Hello Ada.')}")
    second = sdk.responses.create(model="gpt-4o-mini", previous_response_id=first.id,
                                  input=[{"role": "user", "content": [{"type": "input_text",
                                                                       "text": f"Name? {sim(echo=True)}"}]}])

    assert first.status == "completed" and first.output_text == "Hello Ada."
    assert first.usage.output_tokens == 2 and first.instructions == "Be brief."
    received = json.loads(second.output_text)
    assert [m["role"] for m in received["messages"]] == ["user", "assistant", "user"]
    assert received["messages"][1] == {"role": "assistant", "content": "Hello Ada."}
    assert second.previous_response_id == first.id


def test_a_background_response_is_polled_streamed_broken_off_and_resumed_exactly(sdk, native):
    created = sdk.responses.create(model="gpt-4o-mini", background=True,
                                   input=f"Write. {sim(tokens=60, interval_ms=20)}")
    assert created.status in ("queued", "in_progress") and created.background

    stream = sdk.responses.retrieve(created.id, stream=True)
    seen = []
    for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta" and len(seen) > 8:
            break
    stream.close()
    rest = list(sdk.responses.retrieve(created.id, stream=True, starting_after=seen[-1].sequence_number))
    events = seen + rest

    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events][:2] == ["response.created", "response.queued"]
    assert events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = wait_for(lambda: (r := sdk.responses.retrieve(created.id)).status == "completed" and r, "completed")
    assert text == final.output_text == events[-1].response.output_text == tokens(60)
    # The native SSE stream of the same task carries the same text.
    assert answer_from_chunks([e.data for e in native.sse(task_id(created.id)).events]) == text


def test_a_streamed_response_uses_openais_event_types(sdk):
    events = list(sdk.responses.create(model="gpt-4o-mini", input=f"hi {sim(tokens=3)}", stream=True))

    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert ["response.output_item.added", "response.content_part.added", "response.output_text.delta"] == [
        k for k in kinds if k in ("response.output_item.added", "response.content_part.added")
        or k == "response.output_text.delta"][:3]
    assert kinds.index("response.output_text.done") < kinds.index("response.content_part.done") < kinds.index(
        "response.output_item.done") < kinds.index("response.completed")
    assert events[-1].response.usage.output_tokens == 3


def test_a_background_response_can_be_cancelled_and_deleted(sdk, native):
    created = sdk.responses.create(model="gpt-4o-mini", background=True,
                                   input=f"Long. {sim(tokens=400, interval_ms=50)}")
    wait_for(lambda: native.get(task_id(created.id))["status"] == "processing", "processing")

    cancelled = sdk.responses.cancel(created.id)
    sdk.responses.delete(created.id)

    assert cancelled.status == "cancelled"
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)
