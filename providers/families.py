"""Anthropic (Messages), Gemini (streamGenerateContent) and Cohere (chat v2) streamed
directly over providers/httpstream.py (over httpx behind a proxy: wire.stream_direct),
litellm still mapping each request (AnthropicConfig, GoogleAIStudioGeminiConfig with its
transform_request_body, CohereV2ChatConfig): through litellm's streaming wrapper a chunk
costs the worker ~30 times what it costs here (BENCHMARKS.md, "Provider families: CPU per
chunk"), and litellm's Cohere stream parser reads tool calls and usage where Cohere does not
put them."""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import AsyncIterator
from functools import cache
from typing import Any

import orjson

from . import httpstream
from .wire import Delta, Deployment, ProviderError, SSEEvents, litellm_error, stream_direct


def _mapped(config: Any, deployment: Deployment, body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI parameters the family takes (the body's, then the deployment's own), mapped
    by litellm's config for the family; what it does not take is left out, as drop_params
    does on the litellm path."""
    supported = set(config.get_supported_openai_params(deployment.model))
    given = {k: v for k, v in body.items() if k in supported and k not in ("stream", "model")}
    given.update({k: v for k, v in deployment.extra.items() if k in supported})
    return dict(config.map_openai_params(given, {}, deployment.model, True))


# --- Anthropic Messages, direct -----------------------------------------------------------
ANTHROPIC_BASE = "https://api.anthropic.com"
_ANTHROPIC_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                     "pause_turn": "stop", "refusal": "content_filter"}


# The tool litellm forces for JSON mode on Anthropic (litellm.constants.RESPONSE_FORMAT_TOOL_NAME):
# its input, streamed as input_json_delta, is the answer.
JSON_TOOL = "json_tool_call"
# Anthropic's JSON mode without a schema: a forced tool taking any object
# (docs.anthropic.com, tool use, "JSON mode"; the tool litellm builds when it has no schema).
_ANY_OBJECT = {"type": "object", "additionalProperties": True, "properties": {}}


@cache
def _anthropic_config() -> Any:
    import litellm

    return litellm.AnthropicConfig()


def _json_object_tool(optional: dict[str, Any], user_tools: bool) -> None:
    """`response_format: json_object` as Anthropic supports it. litellm maps only a JSON
    schema (a forced tool, or output_format where the model has native structured output)
    and sends nothing for json_object, so the answer would not be JSON and no one would say
    so. With the task's own tools the model must call one of them or the JSON tool."""
    optional["tools"] = [*(optional.get("tools") or ()), {"name": JSON_TOOL, "input_schema": _ANY_OBJECT}]
    if "thinking" not in optional:  # with extended thinking Anthropic refuses a forced tool
        optional["tool_choice"] = {"type": "any"} if user_tools else {"type": "tool", "name": JSON_TOOL}


def anthropic_request(deployment: Deployment, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The Messages request and headers litellm would send for this OpenAI-shaped body."""
    config = _anthropic_config()
    optional = _mapped(config, deployment, body)
    if (body.get("response_format") or {}).get("type") == "json_object":
        _json_object_tool(optional, bool(body.get("tools")))
    optional.pop("json_mode", None)  # litellm's handler takes it out before the request is built
    # A config deployment may leave the key to the environment, as litellm reads it.
    api_key = deployment.api_key or os.environ.get("ANTHROPIC_API_KEY")
    headers = config.validate_environment({}, deployment.model, body["messages"], optional, {},
                                          api_key=api_key, api_base=deployment.api_base)
    # transform_request adds the beta headers the request needs (output_format's, ...) to these.
    data: dict[str, Any] = config.transform_request(deployment.model, body["messages"], optional, {}, headers)
    data["stream"] = True
    headers["accept"] = "text/event-stream"
    return data, headers


def is_anthropic(deployment: Deployment) -> bool:
    return deployment.provider == "anthropic"


async def stream_anthropic(deployment: Deployment, body: dict[str, Any],
                            pace: httpstream.Pace | None = None) -> AsyncIterator[Delta]:
    base = (deployment.api_base or ANTHROPIC_BASE).rstrip("/")
    url = base if base.endswith("/v1/messages") else f"{base}/v1/messages"
    try:
        payload, headers = anthropic_request(deployment, body)
    except Exception as exc:  # litellm's mapping refused the request (no key, a bad parameter)
        raise litellm_error(exc) from exc
    json_mode = any(t.get("name") == JSON_TOOL for t in payload.get("tools") or ())
    async for delta in stream_direct(url, payload, headers, _AnthropicEvents(json_mode=json_mode), pace):
        yield delta


class _TextRuns:
    """A family's SSE stream fed a read at a time, as deltas: a read's run of text events
    becomes one delta (the emitter would join them into one chunk anyway, and work per
    token is most of what a stream costs the worker). `_text` reads a text event (None: not
    one), `_delta` any other; `done` once the family's last event came."""

    def __init__(self) -> None:
        self.sse = SSEEvents()
        self.done = False

    def feed(self, data: bytes) -> list[Delta]:
        out: list[Delta] = []
        texts: list[str] = []
        for obj in self.sse.feed(data):
            text = self._text(obj)
            if text is not None:
                if text:
                    texts.append(text)
                continue
            delta = self._delta(obj.get("type"), obj)
            if delta is None:
                continue
            if texts:
                out.append(Delta(content="".join(texts)))
                texts.clear()
            out.append(delta)
            if self.done:
                break
        if texts:
            out.append(Delta(content="".join(texts)))
        return out

    def _text(self, obj: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def _delta(self, kind: str | None, obj: dict[str, Any]) -> Delta | None:
        raise NotImplementedError


class _AnthropicEvents(_TextRuns):
    """The Messages SSE stream; `done` after message_stop. Tool-use blocks become OpenAI
    tool-call deltas numbered from 0. In JSON mode the JSON tool's input is the answer's text, as litellm
    gives it, and a turn that called only that tool ends as a stop."""

    def __init__(self, *, json_mode: bool = False) -> None:
        super().__init__()
        self.tools: dict[int, int] = {}  # content block index -> tool call index
        self.json_mode = json_mode
        self.json_blocks: set[int] = set()
        self.prompt_tokens = 0

    def _text(self, obj: dict[str, Any]) -> str | None:
        if obj.get("type") != "content_block_delta":
            return None
        d = obj["delta"]
        if d.get("type") == "text_delta":
            return str(d.get("text") or "")
        if obj["index"] in self.json_blocks:
            return str(d.get("partial_json") or "")
        return None

    def _delta(self, kind: str | None, obj: dict[str, Any]) -> Delta | None:
        if kind == "message_start":
            usage = (obj.get("message") or {}).get("usage") or {}
            self.prompt_tokens = sum(int(usage.get(k) or 0) for k in (
                "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        elif kind == "content_block_start":
            block = obj["content_block"]
            if self.json_mode and block.get("type") == "tool_use" and block.get("name") == JSON_TOOL:
                self.json_blocks.add(obj["index"])
            elif block.get("type") == "tool_use":
                index = self.tools[obj["index"]] = len(self.tools)
                return Delta(tool_calls=[{"index": index, "id": block.get("id"), "type": "function",
                                          "function": {"name": block.get("name"), "arguments": ""}}])
        elif kind == "content_block_delta":
            d = obj["delta"]
            if d.get("type") == "input_json_delta" and obj["index"] in self.tools:
                return Delta(tool_calls=[{"index": self.tools[obj["index"]],
                                          "function": {"arguments": d.get("partial_json") or ""}}])
        elif kind == "message_delta":
            reason = (obj.get("delta") or {}).get("stop_reason")
            if reason == "tool_use" and not self.tools:
                reason = "end_turn"  # only the JSON tool was called: its input was the answer
            completion = int((obj.get("usage") or {}).get("output_tokens") or 0)
            usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                     "total_tokens": self.prompt_tokens + completion}
            return Delta(finish_reason=_ANTHROPIC_FINISH.get(str(reason), "stop"), usage=usage)
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            err = obj.get("error") or {}
            etype, message = str(err.get("type")), str(err.get("message") or "provider error")[:1000]
            if etype == "rate_limit_error":
                raise ProviderError("rate_limited", message, retryable=True)
            code = "provider_unavailable" if etype in ("overloaded_error", "api_error") else "provider_error"
            raise ProviderError(code, message, retryable=True)
        return None


# --- Gemini (Google AI Studio), direct ------------------------------------------------------
GEMINI_BASE = "https://generativelanguage.googleapis.com"
_GEMINI_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
                  "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
                  "IMAGE_SAFETY": "content_filter"}
# google.rpc status names of a retryable error (an error event mid-stream carries one).
_GEMINI_RETRYABLE = {"RESOURCE_EXHAUSTED": "rate_limited", "UNAVAILABLE": "provider_unavailable",
                     "INTERNAL": "provider_unavailable", "DEADLINE_EXCEEDED": "provider_unavailable"}


@cache
def _gemini_config() -> Any:
    import litellm

    return litellm.GoogleAIStudioGeminiConfig()


def gemini_request(deployment: Deployment, body: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
    """The streamGenerateContent URL, body and headers litellm would send for this
    OpenAI-shaped body: contents and parts, system_instruction, generationConfig, tools as
    function_declarations (litellm's mapping, in the API's snake_case field names)."""
    from litellm.llms.vertex_ai.common_utils import get_gemini_url
    from litellm.llms.vertex_ai.gemini.transformation import transform_request_body

    config = _gemini_config()
    optional = _mapped(config, deployment, body)
    # litellm takes the system messages out of the list it is given: a copy, so that a fallback
    # to another deployment still sends them.
    messages = copy.deepcopy(body["messages"])
    data = dict(transform_request_body(messages=messages, model=deployment.model, optional_params=optional,
                                       custom_llm_provider="gemini", litellm_params={}, cached_content=None))
    if deployment.api_base:
        url = f"{deployment.api_base.rstrip('/')}/models/{deployment.model}:streamGenerateContent?alt=sse"
    else:
        url, _ = get_gemini_url(mode="chat", model=deployment.model, stream=True)
    api_key = deployment.api_key or os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
    if not api_key:
        raise ProviderError("provider_auth_error", "no Gemini API key: set GEMINI_API_KEY or the deployment's api_key")
    # In a header, not the URL's ?key=, so the key stays out of logged URLs (as litellm does).
    return url, data, {"Content-Type": "application/json", "Accept": "text/event-stream", "x-goog-api-key": api_key}


def is_gemini(deployment: Deployment) -> bool:
    return deployment.provider == "gemini"


async def stream_gemini(deployment: Deployment, body: dict[str, Any],
                        pace: httpstream.Pace | None = None) -> AsyncIterator[Delta]:
    try:
        url, payload, headers = gemini_request(deployment, body)
    except ProviderError:
        raise
    except Exception as exc:  # litellm's mapping refused the request
        raise litellm_error(exc) from exc
    async for delta in stream_direct(url, payload, headers, _GeminiEvents(), pace):
        yield delta


class _GeminiEvents:
    """streamGenerateContent with alt=sse fed a read at a time, as deltas: each `data:` is a
    GenerateContentResponse. functionCall parts (whole in one event) become tool calls,
    usageMetadata the usage (thinking tokens are billed as output, tool-use prompt tokens as
    input, as litellm counts them); `done` once a candidate has a finishReason. Thought
    parts are not the answer and are skipped."""

    def __init__(self) -> None:
        self.sse = SSEEvents()
        self.done = False
        self.calls = 0

    def feed(self, data: bytes) -> list[Delta]:
        out: list[Delta] = []
        texts: list[str] = []
        for obj in self.sse.feed(data):
            if "error" in obj:
                raise _gemini_error(obj["error"])
            candidates = obj.get("candidates")
            if not candidates:
                if (obj.get("promptFeedback") or {}).get("blockReason"):  # the prompt itself was refused
                    self.done = True
                    out.append(Delta(finish_reason="content_filter", usage=_gemini_usage(obj)))
                continue
            candidate = candidates[0]
            calls = []
            for part in (candidate.get("content") or {}).get("parts") or ():
                if "functionCall" in part:
                    calls.append(self._call(part))
                elif part.get("text") and not part.get("thought"):
                    texts.append(part["text"])
            reason = candidate.get("finishReason")
            if not calls and reason is None:
                continue
            if texts:
                out.append(Delta(content="".join(texts)))
                texts.clear()
            if calls:
                out.append(Delta(tool_calls=calls))
            if reason is not None:
                self.done = True
                finish = "tool_calls" if self.calls else _GEMINI_FINISH.get(reason, "stop")
                out.append(Delta(finish_reason=finish, usage=_gemini_usage(obj)))
                break
        if texts:
            out.append(Delta(content="".join(texts)))
        return out

    def _call(self, part: dict[str, Any]) -> dict[str, Any]:
        from litellm.litellm_core_utils.prompt_templates.factory import encode_tool_call_id_with_signature

        call = part["functionCall"]
        # Gemini gives no id before 3.5; litellm makes one, and carries a thought signature in
        # it so that the next turn can send it back (Gemini 3 refuses a function call without).
        call_id = call.get("id") or f"call_{uuid.uuid4().hex[:28]}"
        if part.get("thoughtSignature"):
            call_id = encode_tool_call_id_with_signature(call_id, part["thoughtSignature"])
        index, self.calls = self.calls, self.calls + 1
        return {"index": index, "id": call_id, "type": "function",
                "function": {"name": call["name"], "arguments": orjson.dumps(call.get("args") or {}).decode()}}


def _gemini_usage(obj: dict[str, Any]) -> dict[str, Any] | None:
    meta = obj.get("usageMetadata")
    if not meta:
        return None
    prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + int(meta.get("thoughtsTokenCount") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _gemini_error(err: Any) -> ProviderError:
    err = err if isinstance(err, dict) else {"message": str(err)}
    message = str(err.get("message") or "provider error")[:1000]
    return ProviderError(_GEMINI_RETRYABLE.get(str(err.get("status")), "provider_error"), message, retryable=True)


# --- Cohere chat v2, direct -------------------------------------------------------------
COHERE_BASE = "https://api.cohere.com/v2/chat"
_COHERE_FINISH = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length", "TOOL_CALL": "tool_calls",
                  "ERROR": "error", "TIMEOUT": "error"}


@cache
def _cohere_config() -> Any:
    import litellm

    return litellm.CohereV2ChatConfig()


def cohere_request(deployment: Deployment, body: dict[str, Any]) -> dict[str, Any]:
    """The request body litellm would send Cohere for this OpenAI-shaped one (what Cohere
    does not take is left out, as drop_params does on the litellm path), with JSON mode,
    which litellm does not map for Cohere, in Cohere's own form."""
    config = _cohere_config()
    optional = _mapped(config, deployment, body)
    data: dict[str, Any] = config.transform_request(deployment.model, body["messages"], optional, {}, {})
    if body.get("response_format"):
        data["response_format"] = _cohere_format(body["response_format"])
    data["stream"] = True
    return data


def cohere_params(*, tools: bool) -> frozenset[str]:
    """The OpenAI parameters the direct Cohere path maps beyond litellm's list: JSON mode,
    which Cohere refuses together with tools (docs.cohere.com/reference/chat, response_format:
    "not supported when used in combination with the documents or tools parameters")."""
    return frozenset() if tools else frozenset({"response_format"})


def _cohere_format(fmt: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's response_format as chat v2's: {"type": "json_object"} with the schema, if any,
    in `json_schema` (OpenAI nests it as json_schema.schema)."""
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return {"type": "json_object", **({"json_schema": schema} if schema else {})}
    return {"type": str(fmt.get("type") or "text")}


def is_cohere_v2(deployment: Deployment) -> bool:
    return deployment.provider in ("cohere_chat", "cohere") and not deployment.model.startswith("v1/")


async def stream_cohere(deployment: Deployment, body: dict[str, Any],
                         pace: httpstream.Pace | None = None) -> AsyncIterator[Delta]:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    api_key = deployment.api_key or os.environ.get("COHERE_API_KEY") or os.environ.get("CO_API_KEY")
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        payload = cohere_request(deployment, body)
    except Exception as exc:  # litellm's mapping refused the request
        raise litellm_error(exc) from exc
    async for delta in stream_direct(deployment.api_base or COHERE_BASE, payload, headers, _CohereEvents(), pace):
        yield delta


class _CohereEvents(_TextRuns):
    """Cohere's chat v2 stream: SSE, an `event:` line naming the type and a `data:` line
    holding the event (with its `type` again), as Cohere's v2 reference and its SDK's
    EventSource read it; `done` after message-end."""

    def _text(self, obj: dict[str, Any]) -> str | None:
        if obj.get("type") != "content-delta":
            return None
        return str(obj["delta"]["message"]["content"].get("text") or "")

    def _delta(self, kind: str | None, obj: dict[str, Any]) -> Delta | None:
        if kind == "tool-call-start":
            call = obj["delta"]["message"]["tool_calls"]
            fn = call.get("function") or {}
            return Delta(tool_calls=[{"index": obj.get("index", 0), "id": call.get("id"), "type": "function",
                                      "function": {"name": fn.get("name"), "arguments": fn.get("arguments") or ""}}])
        if kind == "tool-call-delta":
            args = obj["delta"]["message"]["tool_calls"]["function"].get("arguments") or ""
            return Delta(tool_calls=[{"index": obj.get("index", 0), "function": {"arguments": args}}])
        if kind == "message-end":
            self.done = True
            end = obj.get("delta") or {}
            tokens = (end.get("usage") or {}).get("tokens") or {}
            usage = None
            if tokens:
                prompt, completion = int(tokens.get("input_tokens") or 0), int(tokens.get("output_tokens") or 0)
                usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
            reason = _COHERE_FINISH.get(str(end.get("finish_reason")), "stop")
            if reason == "error":
                raise ProviderError("provider_error", "the provider ended the answer with an error", retryable=True)
            return Delta(finish_reason=reason, usage=usage)
        return None
