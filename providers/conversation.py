"""What a task sends its model: the conversation (system prompt, context, messages) and the
sampling parameters. Shared by routing (which counts the conversation's tokens) and the
worker (which sends it), so both see the same messages."""

from __future__ import annotations

from typing import Any

from django.conf import settings

# The sampling parameters a task may carry, passed to the provider as OpenAI names them.
SAMPLING_PARAMS = ("temperature", "top_p", "stop", "seed", "response_format")


def message_text(message: dict[str, Any]) -> str:
    """A message's text: its string content, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def conversation_from(*, prompt: str | None, messages: list[dict[str, Any]] | None) -> tuple[str, list[dict[str, Any]]]:
    """A request's (prompt, messages) in the stored form: with both given, the prompt is the
    conversation's last user message; with messages alone, the prompt is the text of their
    last user message (what the router reads and the Task object shows). A prompt alone
    stays a prompt, with no messages."""
    if not messages:
        return prompt or "", []
    if prompt:
        return prompt, [*messages, {"role": "user", "content": prompt}]
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    return (message_text(last_user) if last_user else ""), list(messages)


def conversation_messages(*, prompt: str, messages: list[dict[str, Any]] | None = None,
                          system: str | None = None, context_text: str = "") -> list[dict[str, Any]]:
    """The messages sent to the model. The platform's system prompt applies unless the task
    gives its own `system` (an empty one: no system prompt) or its messages carry one."""
    head: list[dict[str, Any]] = []
    own_system = any(m.get("role") in ("system", "developer") for m in messages or ())
    if system is None and not own_system:
        system = settings.MAGEAGENT["SYSTEM_PROMPT"]
    if system:
        head.append({"role": "system", "content": system})
    if context_text:
        head.append({"role": "system", "content": f"Context:\n{context_text}"})
    return [*head, *(messages or [{"role": "user", "content": prompt}])]


def has_images(messages: list[dict[str, Any]] | None) -> bool:
    """Whether a conversation carries image parts (only vision models take it)."""
    return any(isinstance(m.get("content"), list) and any(
        isinstance(p, dict) and p.get("type") == "image_url" for p in m["content"]) for m in messages or ())


def conversation_chars(*, prompt: str, messages: list[dict[str, Any]] | None, system: str | None = None) -> int:
    """The conversation's length in characters, what the prompt limit bounds."""
    if not messages:
        return len(prompt) + len(system or "")
    return sum(len(message_text(m)) for m in messages) + len(system or "")


def sampling_params(fields: Any) -> dict[str, Any]:
    """The sampling parameters a task (or a request's fields, a dict) sets, by OpenAI name."""
    get = fields.get if isinstance(fields, dict) else lambda name: getattr(fields, name, None)
    return {name: value for name in SAMPLING_PARAMS if (value := get(name)) is not None}
