"""The direct stream parsers of providers/families.py on the families' own bytes, fed in pieces
that split events anywhere (what a socket's reads do)."""

from __future__ import annotations

import orjson
import pytest

from providers.families import _AnthropicEvents, _CohereEvents
from providers.wire import ProviderError


def feed_in_pieces(parser, data: bytes, size: int) -> list:
    out = []
    for i in range(0, len(data), size):
        out += parser.feed(data[i:i + size])
    return out


def merged(deltas: list) -> tuple[str, list, str | None, dict | None]:
    text = "".join(d.content or "" for d in deltas)
    calls = [c for d in deltas for c in d.tool_calls or ()]
    finish = next((d.finish_reason for d in deltas if d.finish_reason), None)
    usage = next((d.usage for d in deltas if d.usage), None)
    return text, calls, finish, usage


COHERE_EVENTS = [
    {"type": "message-start", "id": "x", "delta": {"message": {"role": "assistant"}}},
    {"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Hello "}}}},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "world"}}}},
    {"type": "content-end", "index": 0},
    {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
        "id": "c1", "type": "function", "function": {"name": "search", "arguments": ""}}}}},
    {"type": "tool-call-delta", "index": 0,
     "delta": {"message": {"tool_calls": {"function": {"arguments": "{\"q\""}}}}},
    {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": ": 1}"}}}}},
    {"type": "tool-call-end", "index": 0},
    {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": {
        "billed_units": {"input_tokens": 7, "output_tokens": 5}, "tokens": {"input_tokens": 9, "output_tokens": 5}}}},
]


@pytest.mark.parametrize("size", [1, 7, 4096])
@pytest.mark.parametrize("form", ["sse", "lines"])
def test_cohere_v2_stream_as_sse_or_json_lines(form, size):
    if form == "sse":
        data = b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps(e)) for e in COHERE_EVENTS)
    else:
        data = b"".join(orjson.dumps(e) + b"\n" for e in COHERE_EVENTS)
    parser = _CohereEvents()

    text, calls, finish, usage = merged(feed_in_pieces(parser, data, size))

    assert parser.done and text == "Hello world" and finish == "tool_calls"
    assert calls[0] == {"index": 0, "id": "c1", "type": "function", "function": {"name": "search", "arguments": ""}}
    assert "".join(c["function"]["arguments"] for c in calls) == "{\"q\": 1}"
    assert usage == {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}


def sse(events: list[dict]) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps(e)) for e in events)


ANTHROPIC_EVENTS = [
    {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 10, "cache_read_input_tokens": 2,
                                                               "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "look."}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1",
                                                                  "name": "search", "input": {}}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"q\":"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " 1}"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
     "usage": {"output_tokens": 6}},
    {"type": "message_stop"},
]


@pytest.mark.parametrize("size", [1, 5, 4096])
def test_anthropic_messages_stream(size):
    parser = _AnthropicEvents()

    text, calls, finish, usage = merged(feed_in_pieces(parser, sse(ANTHROPIC_EVENTS), size))

    assert parser.done and text == "Let me look." and finish == "tool_calls"
    assert calls[0] == {"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "search",
                                                                                       "arguments": ""}}
    assert "".join(c["function"]["arguments"] for c in calls) == "{\"q\": 1}"
    assert usage == {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}


@pytest.mark.parametrize(("kind", "code"), [("overloaded_error", "provider_unavailable"),
                                            ("rate_limit_error", "rate_limited")])
def test_an_anthropic_error_event_mid_stream_is_a_retryable_provider_error(kind, code):
    parser = _AnthropicEvents()
    parser.feed(sse(ANTHROPIC_EVENTS[:4]))

    with pytest.raises(ProviderError) as raised:
        parser.feed(sse([{"type": "error", "error": {"type": kind, "message": "Overloaded"}}]))

    assert raised.value.code == code and raised.value.retryable and not parser.done


def test_an_anthropic_deployment_without_any_key_fails_as_an_auth_error_not_a_crash(monkeypatch):
    import asyncio

    from providers.llm import Deployment, stream_chat

    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    deployment = Deployment(model="claude-haiku-4-5", provider="anthropic", litellm_model="anthropic/claude-haiku-4-5",
                            api_base="http://127.0.0.1:9")

    async def first() -> None:
        async for _ in stream_chat(deployment, [{"role": "user", "content": "hi"}]):
            pass

    with pytest.raises(ProviderError) as raised:
        asyncio.run(first())

    assert raised.value.code == "provider_auth_error" and not raised.value.retryable
