"""The direct stream parsers of providers/families.py on the families' own bytes, fed in pieces
that split events anywhere (what a socket's reads do)."""

from __future__ import annotations

import orjson
import pytest

from providers.families import _AnthropicEvents, _CohereEvents, _GeminiEvents
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


def sse(events: list[dict]) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps(e)) for e in events)


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
def test_cohere_v2_stream_read_as_the_sse_cohere_sends(size):
    parser = _CohereEvents()

    text, calls, finish, usage = merged(feed_in_pieces(parser, sse(COHERE_EVENTS), size))

    assert parser.done and text == "Hello world" and finish == "tool_calls"
    assert calls[0] == {"index": 0, "id": "c1", "type": "function", "function": {"name": "search", "arguments": ""}}
    assert "".join(c["function"]["arguments"] for c in calls) == "{\"q\": 1}"
    assert usage == {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}


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


@pytest.mark.parametrize(("provider", "model", "api_base", "variables"), [
    ("anthropic", "claude-haiku-4-5", "http://127.0.0.1:9", ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")),
    ("gemini", "gemini-2.5-flash", "http://127.0.0.1:9/v1beta", ("GEMINI_API_KEY", "GOOGLE_API_KEY")),
])
def test_a_deployment_without_any_key_fails_as_an_auth_error_not_a_crash(monkeypatch, provider, model, api_base,
                                                                          variables):
    import asyncio

    from providers.llm import Deployment, stream_chat

    for name in variables:
        monkeypatch.delenv(name, raising=False)
    deployment = Deployment(model=model, provider=provider, litellm_model=f"{provider}/{model}", api_base=api_base)

    async def first() -> None:
        async for _ in stream_chat(deployment, [{"role": "user", "content": "hi"}]):
            pass

    with pytest.raises(ProviderError) as raised:
        asyncio.run(first())

    assert raised.value.code == "provider_auth_error" and not raised.value.retryable


def test_anthropic_json_mode_streams_the_json_tools_input_as_the_answer():
    events = [ANTHROPIC_EVENTS[0],
              {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_j",
                                                                            "name": "json_tool_call", "input": {}}},
              *({"type": "content_block_delta", "index": 0,
                 "delta": {"type": "input_json_delta", "partial_json": piece}} for piece in ("{\"a\"", ": 1}")),
              {"type": "content_block_stop", "index": 0},
              {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 4}},
              {"type": "message_stop"}]
    parser = _AnthropicEvents(json_mode=True)

    text, calls, finish, _ = merged(feed_in_pieces(parser, sse(events), 9))

    assert (text, calls, finish) == ("{\"a\": 1}", [], "stop")


def anthropic_request_for(response_format: dict, **fields) -> tuple[dict, dict]:
    from providers.families import anthropic_request
    from providers.wire import Deployment

    deployment = Deployment(model="claude-haiku-4-5", provider="anthropic", litellm_model="anthropic/claude-haiku-4-5",
                            api_key="k")
    return anthropic_request(deployment, {"messages": [{"role": "user", "content": "JSON please"}],
                                          "response_format": response_format, **fields})


def test_anthropic_json_mode_with_the_tasks_own_tools_lets_the_model_call_any_of_them():
    tool = {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {}}}}

    body, _ = anthropic_request_for({"type": "json_object"}, tools=[tool])

    assert [t["name"] for t in body["tools"]] == ["search", "json_tool_call"]
    assert body["tool_choice"] == {"type": "any"} and "json_mode" not in body


def test_an_anthropic_json_schema_is_structured_output_with_its_beta_header():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}

    body, headers = anthropic_request_for({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})

    assert body["output_format"]["schema"]["properties"] == schema["properties"] and "json_mode" not in body
    assert headers["anthropic-beta"].startswith("structured-outputs-")


@pytest.mark.parametrize(("response_format", "sent"), [
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "json_schema", "json_schema": {"name": "place", "schema": {"type": "object", "required": ["city"]}}},
     {"type": "json_object", "json_schema": {"type": "object", "required": ["city"]}}),
    ({"type": "text"}, {"type": "text"}),
])
def test_cohere_json_mode_is_sent_in_chat_v2s_own_form(response_format, sent):
    from providers.families import cohere_request
    from providers.wire import Deployment

    deployment = Deployment(model="command-r7b-12-2024", provider="cohere_chat",
                            litellm_model="cohere_chat/command-r7b-12-2024", api_key="k")

    body = cohere_request(deployment, {"messages": [{"role": "user", "content": "JSON please"}],
                                       "response_format": response_format, "temperature": 0.1})

    assert body["response_format"] == sent and body["temperature"] == 0.1


def gemini_sse(events: list[dict]) -> bytes:
    return b"".join(b"data: %s\r\n\r\n" % orjson.dumps(e) for e in events)


def gemini_chunk(parts: list[dict], **extra) -> dict:
    candidate = {"content": {"role": "model", "parts": parts}, "index": 0}
    if "finishReason" in extra:
        candidate["finishReason"] = extra.pop("finishReason")
    return {"candidates": [candidate], **extra}


GEMINI_EVENTS = [
    gemini_chunk([{"text": "weighing the refund question", "thought": True}]),
    gemini_chunk([{"text": "Let me "}], usageMetadata={"promptTokenCount": 11}),
    gemini_chunk([{"text": "look."}]),
    gemini_chunk([{"functionCall": {"name": "search", "args": {"q": 1}}, "thoughtSignature": "c2ln"}]),
    gemini_chunk([{"text": ""}], finishReason="STOP", usageMetadata={
        "promptTokenCount": 11, "candidatesTokenCount": 5, "thoughtsTokenCount": 3, "totalTokenCount": 19}),
]


@pytest.mark.parametrize("size", [1, 6, 4096])
def test_gemini_stream_with_a_function_call_and_thinking(size):
    parser = _GeminiEvents()

    text, calls, finish, usage = merged(feed_in_pieces(parser, gemini_sse(GEMINI_EVENTS), size))

    assert parser.done and text == "Let me look." and finish == "tool_calls"
    [call] = calls
    assert call["index"] == 0 and call["function"] == {"name": "search", "arguments": "{\"q\":1}"}
    assert call["id"].startswith("call_") and "c2ln" in call["id"]  # the thought signature goes back next turn
    # thinking tokens are billed as output
    assert usage == {"prompt_tokens": 11, "completion_tokens": 8, "total_tokens": 19}


@pytest.mark.parametrize(("status", "code"), [("RESOURCE_EXHAUSTED", "rate_limited"),
                                              ("UNAVAILABLE", "provider_unavailable")])
def test_a_gemini_error_mid_stream_is_a_retryable_provider_error(status, code):
    parser = _GeminiEvents()
    parser.feed(gemini_sse(GEMINI_EVENTS[1:3]))

    with pytest.raises(ProviderError) as raised:
        parser.feed(gemini_sse([{"error": {"code": 429, "message": "Resource has been exhausted", "status": status}}]))

    assert raised.value.code == code and raised.value.retryable and not parser.done


def test_a_gemini_prompt_refused_by_its_safety_filter_ends_as_content_filter():
    parser = _GeminiEvents()

    _, _, finish, _ = merged(parser.feed(gemini_sse([{"promptFeedback": {"blockReason": "SAFETY"}}])))

    assert parser.done and finish == "content_filter"


def test_a_gemini_request_leaves_the_conversation_as_it_was_for_a_fallback():
    from providers.families import gemini_request
    from providers.wire import Deployment

    deployment = Deployment(model="gemini-2.5-flash", provider="gemini", litellm_model="gemini/gemini-2.5-flash",
                            api_key="k", api_base="http://127.0.0.1:9/v1beta")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]

    url, body, headers = gemini_request(deployment, {"messages": messages, "max_tokens": 7})

    assert url == "http://127.0.0.1:9/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert body["system_instruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
    assert body["generationConfig"] == {"max_output_tokens": 7} and headers["x-goog-api-key"] == "k"
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("status", "body", "code"), [
    (400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": (
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).")}},
     "context_window_exceeded"),
    (400, {"id": "x", "message": "too many tokens: total number of tokens in the prompt cannot exceed 128000"},
     "context_window_exceeded"),
    (429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "too many tokens per minute"}},
     "rate_limited"),
])
def test_each_familys_http_error_is_told_apart(status, body, code):
    from providers.wire import error_for_status

    error = error_for_status(status, orjson.dumps(body))

    assert error.code == code and error.retryable == (code == "rate_limited")
