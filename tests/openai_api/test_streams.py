"""OpenAI's streams as functions of a task's event log: a retry's `reset`, sequence numbers,
client tool calls, and how each stream ends."""

from __future__ import annotations

import uuid

import orjson
from django.utils import timezone

from openai_api.streams import ChatChunks, ResponseEvents
from tasks.models import Task

LOG = [
    {"type": "status", "status": "queued", "attempt": 1},
    {"type": "status", "status": "processing", "attempt": 1},
    {"type": "step", "name": "model_selected", "detail": {"model": "gpt-4o-mini"}},
    {"type": "chunk", "content": "Hel"},
    {"type": "status", "status": "queued", "attempt": 2},
    {"type": "status", "status": "processing", "attempt": 2},
    {"type": "reset", "attempt": 2},
    {"type": "chunk", "content": "Hello"},
    {"type": "chunk", "content": " Ada."},
    {"type": "done", "done": True, "status": "completed",
     "result": {"content": "Hello Ada.", "finishReason": "stop",
                "usage": {"prompt_tokens": 5, "completion_tokens": 2}}},
]


def task() -> Task:
    return Task(id=uuid.uuid4(), prompt="hi", created_at=timezone.now(), metadata={})


def responses(log: list[dict], of: Task | None = None) -> list[dict]:
    translator = ResponseEvents(of or task())
    return [out for event in log for out in translator.feed(event)]


def test_response_events_are_numbered_from_zero_without_gaps():
    events = responses(LOG)

    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"


def test_a_retry_ends_the_partial_message_incomplete_and_starts_a_new_one():
    events = responses(LOG)

    done_items = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [(i["status"], i["content"][0]["text"]) for i in done_items] == [("incomplete", "Hel"),
                                                                            ("completed", "Hello Ada.")]
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == [0, 1] and added[0]["item"]["id"] != added[1]["item"]["id"]
    final = events[-1]["response"]
    assert [item["content"][0]["text"] for item in final["output"]] == ["Hello Ada."]
    assert final["model"] == "gpt-4o-mini" and final["usage"]["output_tokens"] == 2


def test_the_same_log_gives_the_same_events_so_a_resume_is_exact():
    one = task()

    assert responses(LOG, one) == responses(LOG, one)


def test_a_client_tool_call_is_a_function_call_item_and_a_platform_one_is_not_shown():
    log = [LOG[0], LOG[1],
           {"type": "tool_call", "id": "call_1", "name": "web_search", "arguments": "{}"},
           {"type": "tool_call", "id": "call_2", "name": "get_weather", "arguments": '{"city": "Oslo"}',
            "client": True},
           {"type": "done", "done": True, "status": "completed", "result": {"content": "", "tool_calls": [
               {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}}]

    events = responses(log)

    items = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [(i["type"], i["name"], i["call_id"]) for i in items] == [("function_call", "get_weather", "call_2")]
    assert events[-1]["response"]["output"] == items


def test_a_cancelled_or_failed_task_ends_its_response_stream_so():
    cancelled = responses([LOG[0], {"type": "done", "done": True, "status": "cancelled", "result": None}])
    failed = responses([LOG[0], {"type": "done", "done": True, "status": "failed",
                                 "error": {"code": "provider_error", "message": "boom"}}])

    assert cancelled[-1]["type"] == "response.cancelled" and cancelled[-1]["response"]["status"] == "cancelled"
    assert failed[-1]["type"] == "response.failed" and failed[-1]["response"]["error"]["code"] == "provider_error"


def chat(log: list[dict], include_usage: bool = True) -> list[bytes]:
    chunks = ChatChunks(task(), include_usage=include_usage)
    return [frame for event in log for frame in chunks.feed(event)]


def test_a_chat_stream_marks_a_retry_and_ends_with_finish_usage_and_done():
    frames = chat(LOG)
    objects = [orjson.loads(f[6:]) for f in frames[:-1]]

    assert frames[-1] == b"data: [DONE]\n\n"
    assert [o["choices"][0]["delta"].get("content") for o in objects if o["choices"]] == [
        "", "Hel", None, "Hello", " Ada.", None]
    assert [o.get("mageagent_reset", False) for o in objects if o["choices"]] == [
        False, False, True, False, False, False]
    assert objects[-2]["choices"][0]["finish_reason"] == "stop"
    assert objects[-1]["choices"] == [] and objects[-1]["usage"]["total_tokens"] == 7
    assert {o["model"] for o in objects[1:]} == {"gpt-4o-mini"}


def test_a_failed_task_ends_a_chat_stream_with_an_error_object():
    frames = chat([LOG[0], {"type": "done", "done": True, "status": "failed",
                            "error": {"code": "provider_error", "message": "boom"}}])

    assert orjson.loads(frames[-1][6:])["error"]["code"] == "provider_error"
