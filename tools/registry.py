"""The tool registry: tools are classes named by dotted path in settings.MAGEAGENT_TOOLS.

A tool declares a name, a description and a pydantic model of its arguments (whose JSON
schema is what the model sees). Arguments are validated before a tool runs; errors and
timeouts become failed tool results for the model, never a crashed task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

import orjson
import pydantic
from django.conf import settings
from django.utils.module_loading import import_string

from mageagent.errors import ValidationFailed

from .conf import knob

logger = logging.getLogger(__name__)
# What a failed result's content starts with (a tool fitting its output in
# tool_output_limit() leaves room for it).
ERROR_PREFIX = "error: "


# complete(messages, model): the text a model answers, the model routed as a task's would
# be (`model` a catalog id, or None to let routing choose). Raises providers' ProviderError.
Complete = Callable[[list[dict[str, Any]], str | None], Awaitable[str]]


@dataclass(frozen=True)
class ToolContext:
    task_id: str
    company_id: int | None
    # The tools the task asked for: a model calling any other one is refused. None when
    # the caller does not say (then every registered tool may run).
    allowed_tools: frozenset[str] | None = None
    # How a tool asks a model (file_processing's summaries). The caller gives it: tools sit
    # below routing and the worker, so they cannot reach a model by themselves.
    complete: Complete | None = None


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    content: str


class ToolError(Exception):
    """A failure the model should read as is (a refused URL, a sandbox limit hit, ...):
    tool_invoke turns it into a failed result whose content is the message."""


class Tool:
    name: ClassVar[str]
    description: ClassVar[str]
    Arguments: ClassVar[type[pydantic.BaseModel]]
    # A class attribute or a property (to follow a setting); tool_invoke reads it per call.
    timeout_s: float = 60.0

    def unavailable_reason(self) -> str | None:
        """Why the tool cannot run here (backend not configured), or None when it can."""
        return None

    def availability_note(self) -> str | None:
        """A caveat of an available tool on this deployment (shown in /tools), or None."""
        return None

    async def run(self, args: Any, ctx: ToolContext) -> str:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": self.Arguments.model_json_schema()}}


@cache
def registered_tools() -> dict[str, Tool]:
    tools: dict[str, Tool] = {}
    for dotted in getattr(settings, "MAGEAGENT_TOOLS", []):
        tool = import_string(dotted)()
        tools[tool.name] = tool
    return tools


def tool_output_limit() -> int:
    """The characters of a tool's result the model gets. A tool whose output is
    structured (JSON) fits it within this itself: the cut here would break the structure."""
    return int(knob("TOOL_OUTPUT_MAX_CHARS", 20_000))


def json_len(text: str) -> int:
    """Characters `text` takes inside a JSON string (escapes included, quotes not)."""
    return len(_json(text)) - 2


def json_fit_text(text: str, room: int) -> str:
    """The longest start of `text` that takes at most `room` characters in JSON."""
    if json_len(text) <= room:
        return text
    low, high = 0, max(0, min(len(text), room))
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if json_len(text[:middle]) <= room else (low, middle - 1)
    return text[:low]


def json_fit_list(body: dict[str, Any], key: str, *, shorten: str, max_chars: int | None = None) -> str:
    """`body` as JSON of at most `max_chars` characters (the tool output limit by default).
    When it is longer, the list body[key] (best first) keeps the items that fit, the next
    one with its `shorten` text cut to fit, and the body says "truncated": true, so the
    registry never has to cut the JSON itself."""
    limit = tool_output_limit() if max_chars is None else max_chars
    text = _json(body)
    if len(text) <= limit:
        return text
    kept: list[Any] = []
    out = {**body, key: kept, "truncated": True}
    # Quadratic in the items, but tools return a few dozen at most.
    for item in body[key]:
        kept.append(item)
        if len(_json(out)) <= limit:
            continue
        kept[-1] = {**item, shorten: ""}
        room = limit - len(_json(out))
        kept.pop()
        if room > 0:
            kept.append({**item, shorten: json_fit_text(str(item[shorten]), room)})
        break
    return _json(out)


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _clip(content: str) -> str:
    """Keep a tool's output within what the model's context can take; say it was cut."""
    limit = tool_output_limit()
    if len(content) <= limit:
        return content
    return content[:limit] + f"\n[output truncated: {len(content) - limit} more characters]"


def tools_list() -> list[dict[str, Any]]:
    out = []
    for tool in registered_tools().values():
        reason = tool.unavailable_reason()
        out.append({"name": tool.name, "description": tool.description,
                    "parameters": tool.Arguments.model_json_schema(),
                    "available": reason is None, "unavailable_reason": reason,
                    "note": tool.availability_note() if reason is None else None})
    return out


def tools_validate_requested(*, tenant: Any, names: list[str]) -> None:
    tools = registered_tools()
    unknown = [n for n in names if n not in tools]
    if unknown:
        raise ValidationFailed(f"unknown tool(s): {', '.join(unknown)}",
                               details={"tools": unknown, "available": sorted(tools)})
    unavailable = {n: tools[n].unavailable_reason() for n in names if tools[n].unavailable_reason()}
    if unavailable:
        raise ValidationFailed("tool(s) not available on this deployment: " + ", ".join(unavailable),
                               details={"unavailable": unavailable})


def tool_specs(names: list[str]) -> list[dict[str, Any]]:
    tools = registered_tools()
    return [tools[n].spec() for n in names if n in tools and tools[n].unavailable_reason() is None]


async def tool_invoke(name: str, raw_arguments: str, ctx: ToolContext) -> ToolResult:
    tool = registered_tools().get(name)
    if tool is None or (ctx.allowed_tools is not None and name not in ctx.allowed_tools):
        return ToolResult(False, f"{ERROR_PREFIX}unknown tool {name!r}")
    try:
        args = tool.Arguments.model_validate(orjson.loads(raw_arguments or "{}"))
    except (orjson.JSONDecodeError, pydantic.ValidationError) as exc:
        return ToolResult(False, f"{ERROR_PREFIX}invalid arguments: {str(exc)[:2000]}")
    reason = tool.unavailable_reason()
    if reason is not None:
        return ToolResult(False, f"{ERROR_PREFIX}{name} is not available: {reason}")
    timeout_s = tool.timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return ToolResult(True, _clip(await tool.run(args, ctx)))
    except TimeoutError:
        return ToolResult(False, f"{ERROR_PREFIX}{name} timed out after {timeout_s:g} s")
    except asyncio.CancelledError:
        raise
    except ToolError as exc:
        return ToolResult(False, _clip(f"{ERROR_PREFIX}{exc}"))
    except Exception as exc:
        logger.warning("tool %s failed: %s", name, exc, exc_info=True)
        return ToolResult(False, f"{ERROR_PREFIX}{type(exc).__name__}: {str(exc)[:2000]}")
