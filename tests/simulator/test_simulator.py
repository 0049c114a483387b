"""Tests of the LLM simulator (a dev/test tool; no Django, no DB): its OpenAI-compatible
endpoint, and where the other families' protocols need more than the e2e tests show.

The simulator runs as a real subprocess (``python -m devtools.simulator --port 0``)
and is exercised with the real ``openai`` SDK and httpx.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import openai
import pytest

from devtools.simulator import (
    SimulatorProcess,
    SimulatorThread,
    Stats,
    find_directive,
    parse_directive,
    split_text,
)

pytestmark: list = []


def gen_text(n: int) -> str:
    return "".join(f"tok{i} " for i in range(n))


def directive(**kw) -> str:
    return f"[[sim {json.dumps(kw)}]]"


def new_key() -> str:
    return "t-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess(use_module=True, tokens=20) as s:
        yield s


@pytest.fixture(scope="module")
def http(sim):
    with httpx.Client(base_url=sim.url, timeout=10) as c:
        yield c


@pytest.fixture
def client(sim):
    c = openai.OpenAI(base_url=sim.base_url, api_key="anything", max_retries=0, timeout=10)
    yield c
    c.close()


def records(http: httpx.Client, key: str) -> list[dict]:
    r = http.get(f"/_sim/requests/{key}")
    assert r.status_code == 200
    return r.json()


def wait_for(pred, timeout: float = 5.0, step: float = 0.02):
    deadline = time.time() + timeout
    while True:
        value = pred()
        if value or time.time() > deadline:
            return value
        time.sleep(step)


# ----------------------------------------------------------------- pure functions


def test_parse_directive_and_split_text():
    assert parse_directive('x [[sim {"tokens": 3, "a": [[1]]}]] y') == {"tokens": 3, "a": [[1]]}
    assert parse_directive("no directive") is None
    assert parse_directive('[[sim not json]] [[sim {"k": 1}]]') == {"k": 1}
    msgs = [
        {"role": "system", "content": '[[sim {"tokens": 1}]]'},
        {"role": "user", "content": [{"type": "text", "text": 'hi [[sim {"tokens": 2}]]'}]},
    ]
    assert find_directive(msgs) == {"tokens": 2}
    assert find_directive([*msgs[:1], {"role": "user", "content": "plain"}]) == {"tokens": 1}
    for text in ["Hello  world, how\nare you? ", "  lead", "one", ""]:
        assert "".join(split_text(text)) == text


def test_stats_bounded():
    st = Stats(max_records=3)
    for i in range(5):
        st.new("k" if i % 2 else f"u{i}", f"id{i}", "m", True, float(i))
    assert len(st.records) == 3
    assert [r["id"] for r in st.since(0)] == ["id2", "id3", "id4"]
    assert [r["request_count"] for r in st.by_key["k"]] == [2]  # the oldest "k" record was dropped
    assert "u0" not in st.by_key and "u2" in st.by_key


# ----------------------------------------------------------------- basic protocol


def test_health_and_models(sim, http, client):
    assert http.get("/_sim/health").status_code == 200
    ids = [m.id for m in client.models.list()]
    assert "sim" in ids and len(ids) >= 2


def test_stream_content_and_usage(client, http):
    key = new_key()
    stream = client.chat.completions.create(
        model="sim",
        messages=[{"role": "user", "content": "hello " + directive(tokens=30, key=key)}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == gen_text(30)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 30
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 30
    # one content token per chunk
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 30
    (rec,) = records(http, key)
    assert rec["status"] == "completed" and rec["tokens_sent"] == 30 and rec["model"] == "sim"


def test_stream_raw_sse_shape(http):
    body = {
        "model": "m1",
        "stream": True,
        "messages": [{"role": "user", "content": directive(tokens=3)}],
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(p["object"] == "chat.completion.chunk" and p["model"] == "m1" for p in payloads)
    assert payloads[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert len({p["id"] for p in payloads}) == 1
    assert "usage" not in payloads[-1]  # include_usage not requested


def test_non_stream_and_defaults(client):
    r = client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "hi there"}])
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == gen_text(20)  # server default --tokens 20
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 20 and r.usage.prompt_tokens >= 2


def test_text_directive_and_max_tokens(client):
    text = "The  quick brown\nfox, jumps. "
    r = client.chat.completions.create(model="sim", messages=[{"role": "user", "content": directive(text=text)}])
    assert r.choices[0].message.content == text
    s = client.chat.completions.create(
        model="sim", messages=[{"role": "user", "content": directive(text=text)}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in s if c.choices) == text
    r = client.chat.completions.create(
        model="sim", messages=[{"role": "user", "content": directive(tokens=10)}], max_tokens=4
    )
    assert r.choices[0].message.content == gen_text(4) and r.choices[0].finish_reason == "length"


def test_async_client_stream(sim):
    async def run() -> str:
        async with openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as c:
            s = await c.chat.completions.create(
                model="sim",
                messages=[{"role": "user", "content": directive(tokens=50, interval_ms=1)}],
                stream=True,
            )
            return "".join([ch.choices[0].delta.content or "" async for ch in s if ch.choices])

    assert asyncio.run(run()) == gen_text(50)


# ----------------------------------------------------------------- tools

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.mark.parametrize("stream", [True, False])
def test_tool_call_round_trip(client, http, stream):
    key = new_key()
    user = {
        "role": "user",
        "content": "weather? "
        + directive(key=key, tokens=3, tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]),
    }
    if stream:
        calls: dict[int, dict] = {}
        arg_pieces = 0
        finish = None
        for ch in client.chat.completions.create(model="sim", messages=[user], tools=TOOLS, stream=True):
            choice = ch.choices[0]
            finish = choice.finish_reason or finish
            assert not choice.delta.content
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    entry["id"] = tc.id
                if tc.function and tc.function.name:
                    entry["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    entry["arguments"] += tc.function.arguments
                    arg_pieces += 1
        assert finish == "tool_calls"
        assert arg_pieces >= 2
        call = calls[0]
    else:
        r = client.chat.completions.create(model="sim", messages=[user], tools=TOOLS)
        assert r.choices[0].finish_reason == "tool_calls"
        tc = r.choices[0].message.tool_calls[0]
        call = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert call["id"]

    messages = [
        user,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 21, "sky": "clear"}'},
    ]
    r = client.chat.completions.create(model="sim", messages=messages, tools=TOOLS)
    content = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert content.startswith('[tool:get_weather {"temp_c": 21, "sky": "clear"}]')
    assert content.endswith(gen_text(3))
    recs = records(http, key)
    assert [r["request_count"] for r in recs] == [1, 2]


def test_tools_without_directive_answer_content(client):
    r = client.chat.completions.create(
        model="sim", messages=[{"role": "user", "content": directive(tokens=2)}], tools=TOOLS
    )
    assert r.choices[0].message.content == gen_text(2) and not r.choices[0].message.tool_calls


# ----------------------------------------------------------------- errors


def test_injected_503_then_success(sim, http):
    key = new_key()
    msg = [{"role": "user", "content": directive(key=key, error=503, error_times=1, tokens=5)}]
    c = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0, timeout=10)
    with pytest.raises(openai.InternalServerError) as ei:
        c.chat.completions.create(model="sim", messages=msg)
    assert ei.value.status_code == 503
    assert ei.value.body["type"] == "server_error"  # SDK unwraps {"error": {...}}
    r = c.chat.completions.create(model="sim", messages=msg)  # second request with the key succeeds
    assert r.choices[0].message.content == gen_text(5)

    key2 = new_key()
    retrying = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=2, timeout=10)
    r = retrying.chat.completions.create(
        model="sim",
        messages=[{"role": "user", "content": directive(key=key2, error=503, error_times=1, tokens=5)}],
        stream=True,
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in r if ch.choices) == gen_text(5)
    recs = records(http, key2)
    assert [(x["status"], x["http_status"], x["request_count"]) for x in recs] == [
        ("error", 503, 1),
        ("completed", 200, 2),
    ]
    c.close()
    retrying.close()


def test_429_shape(http):
    body = {"model": "sim", "messages": [{"role": "user", "content": directive(error=429)}]}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "0"
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"} and err["code"] == "rate_limit_exceeded"


def test_context_length_exceeded(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(
            model="sim",
            messages=[{"role": "user", "content": directive(error="context_length_exceeded")}],
        )
    e = ei.value
    assert e.status_code == 400 and e.code == "context_length_exceeded"
    assert e.body["type"] == "invalid_request_error" and "maximum context length" in e.body["message"]


def test_fail_after_tokens_aborts_mid_stream(client, http):
    key = new_key()
    msg = [{"role": "user", "content": directive(key=key, tokens=10, fail_after_tokens=4, error_times=1)}]
    got = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        for ch in client.chat.completions.create(model="sim", messages=msg, stream=True):
            if ch.choices and ch.choices[0].delta.content:
                got.append(ch.choices[0].delta.content)
    assert "".join(got) == gen_text(4)
    (rec,) = records(http, key)
    assert rec["status"] == "aborted" and rec["tokens_sent"] == 4
    # error_times=1: the retry streams normally
    s = client.chat.completions.create(model="sim", messages=msg, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices) == gen_text(10)
    assert [r["status"] for r in records(http, key)] == ["aborted", "completed"]


def test_require_key():
    with SimulatorProcess(require_key="sekrit") as s:  # script form (no mageagent package import)
        bad = openai.OpenAI(base_url=s.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as ei:
            bad.chat.completions.create(model="sim", messages=[{"role": "user", "content": "x"}])
        assert ei.value.code == "invalid_api_key"
        good = openai.OpenAI(base_url=s.base_url, api_key="sekrit", max_retries=0)
        r = good.chat.completions.create(model="sim", messages=[{"role": "user", "content": "x"}])
        assert r.choices[0].message.content == gen_text(20)
        bad.close()
        good.close()


# ----------------------------------------------------------------- stats


def test_stats_timestamps(client, http):
    key = new_key()
    t0 = time.time()
    s = client.chat.completions.create(
        model="sim",
        messages=[{"role": "user", "content": directive(key=key, tokens=10, ttft_ms=200, interval_ms=20)}],
        stream=True,
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices) == gen_text(10)
    (rec,) = records(http, key)
    assert rec["status"] == "completed" and rec["tokens_sent"] == 10 and rec["closed_at"] is None
    assert t0 - 0.5 <= rec["received_at"] <= rec["first_token_at"] <= rec["last_token_at"] <= rec["finished_at"]
    assert rec["first_token_at"] - rec["received_at"] >= 0.19
    assert rec["last_token_at"] - rec["first_token_at"] >= 9 * 0.02 - 0.01
    key2 = new_key()
    s = client.chat.completions.create(
        model="sim",
        messages=[{"role": "user", "content": directive(key=key2, tokens=5, duration_ms=200)}],
        stream=True,
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices) == gen_text(5)
    (rec2,) = records(http, key2)
    assert 0.19 <= rec2["last_token_at"] - rec2["first_token_at"] < 1.0
    since = http.get("/_sim/requests", params={"since": rec["received_at"]}).json()
    assert any(r["key"] == key for r in since)
    assert http.get("/_sim/requests", params={"since": time.time() + 100}).json() == []


@pytest.mark.parametrize("phase", ["streaming", "ttft"])
def test_client_close_detected_immediately(sim, http, phase):
    key = new_key()
    d = (
        directive(key=key, tokens=2000, interval_ms=10)
        if phase == "streaming"
        else directive(key=key, tokens=5, ttft_ms=30_000)
    )
    body = {"model": "sim", "stream": True, "messages": [{"role": "user", "content": d}]}
    with httpx.Client(base_url=sim.url, timeout=10) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            if phase == "streaming":
                n = 0
                for line in r.iter_lines():
                    n += line.startswith("data: ")
                    if n >= 5:
                        break
            else:
                time.sleep(0.3)
            t_close = time.time()
        # leaving the context closes the (unfinished) response -> connection closed
    rec = wait_for(lambda: (recs := records(http, key)) and recs[0]["status"] != "streaming" and recs[0])
    assert rec["status"] == "client_closed"
    assert rec["finished_at"] is None
    assert t_close - 0.05 <= rec["closed_at"] <= t_close + 1.0
    if phase == "streaming":
        assert 4 <= rec["tokens_sent"] < 2000 and rec["first_token_at"] is not None
    else:
        assert rec["tokens_sent"] == 0 and rec["first_token_at"] is None


def test_delete_requests_and_summary(http):
    assert http.get("/_sim/stats").json()["requests_total"] >= 1
    assert http.delete("/_sim/requests").status_code == 200
    assert http.get("/_sim/requests", params={"since": 0}).json() == []


# ----------------------------------------------------------------- in-process helper


def test_in_process_thread():
    with SimulatorThread(tokens=3) as s:
        r = httpx.post(
            s.base_url + "/chat/completions",
            json={"model": "sim", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.json()["choices"][0]["message"]["content"] == gen_text(3)


def test_cohere_v2_streams_sse_whatever_the_client_accepts(http):
    body = {"model": "command-r7b-12-2024", "stream": True,
            "messages": [{"role": "user", "content": "hi " + directive(tokens=2)}]}

    r = http.post("/v2/chat", json=body, headers={"Accept": "application/json"})

    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in r.text.split("\n\n") if b]
    events = [b.split("\n") for b in blocks]
    assert all(e[0].startswith("event: ") and e[1].startswith("data: ") for e in events)
    types = [json.loads(e[1][6:])["type"] for e in events]
    assert types == ["message-start", "content-start", "content-delta", "content-delta", "content-end", "message-end"]


def test_anthropic_refuses_a_field_it_does_not_know_as_anthropic_does(http):
    body = {"model": "claude-haiku-4-5", "max_tokens": 5, "json_mode": True,
            "messages": [{"role": "user", "content": "hi"}]}

    r = http.post("/v1/messages", json=body)

    assert r.status_code == 400
    assert r.json()["error"] == {"type": "invalid_request_error",
                                 "message": "json_mode: Extra inputs are not permitted"}


@pytest.mark.parametrize(("extra", "refused"), [
    ({"num_generations": 2}, "num_generations: Extra inputs are not permitted"),
    ({"response_format": {"type": "json_schema"}}, "response_format: type must be one of 'text', 'json_object'"),
    ({"response_format": {"type": "json_object", "schema": {}}}, "response_format: invalid field schema"),
    ({"response_format": {"type": "json_object"}, "tools": [{"type": "function", "function": {"name": "f"}}]},
     "response_format is not supported with tools or documents"),
    ({"response_format": {"type": "json_object", "json_schema": {"type": "object"}}}, None),
])
def test_cohere_refuses_what_chat_v2_refuses(http, extra, refused):
    body = {"model": "command-r7b-12-2024", "messages": [{"role": "user", "content": "hi"}], **extra}

    r = http.post("/v2/chat", json=body)

    assert (r.status_code, r.json().get("message") if r.status_code == 400 else None) == (
        400 if refused else 200, refused)


def test_anthropic_answers_a_forced_tool_with_a_call_to_it(http):
    body = {"model": "claude-haiku-4-5", "max_tokens": 50, "tool_choice": {"type": "tool", "name": "json_tool_call"},
            "tools": [{"name": "json_tool_call", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "JSON " + directive(text="ok")}]}

    answer = http.post("/v1/messages", json=body).json()

    assert answer["stop_reason"] == "tool_use"
    assert [(b["type"], b["name"], b["input"]) for b in answer["content"]] == [
        ("tool_use", "json_tool_call", {"text": "ok"})]
