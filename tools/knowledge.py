"""The knowledge base's read path for the worker and the tools: chunking of new documents
and retrieval, from the built-in full-text index or from an external GraphRAG service
(MAGEAGENT_GRAPHRAG_URL) when one is configured."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from asgiref.sync import sync_to_async
from django.db import close_old_connections

from mageagent.errors import Unavailable
from mageagent.tenancy.models import Company

from .conf import knob
from .selectors import chunk_search

T = TypeVar("T")


def chunk_text(text: str, *, size: int) -> list[str]:
    """Paragraph-aligned chunks of at most `size` characters (longer paragraphs are cut at
    sentence ends, then at spaces)."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if p.strip()]
    pieces: list[str] = []
    for paragraph in paragraphs:
        pieces.extend([paragraph] if len(paragraph) <= size else _split_long(paragraph, size))
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > size:
            chunks.append(current)
            current = piece
        else:
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def _split_long(paragraph: str, size: int) -> list[str]:
    out: list[str] = []
    current = ""
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        while len(sentence) > size:
            cut = sentence.rfind(" ", 0, size)
            cut = cut if cut > size // 2 else size
            if current:
                out.append(current)
                current = ""
            out.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > size:
            out.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        out.append(current)
    return out


def _external_request(company_id: int, query: str, limit: int) -> tuple[str, dict[str, Any], dict[str, str]]:
    slug = Company.objects.filter(pk=company_id).values_list("slug", flat=True).first() or str(company_id)
    headers = {"Accept": "application/json"}
    if knob("GRAPHRAG_API_KEY"):
        headers["Authorization"] = f"Bearer {knob('GRAPHRAG_API_KEY')}"
    return knob("GRAPHRAG_URL"), {"query": query, "limit": limit, "company_id": slug}, headers


def _normalise(response: httpx.Response, limit: int) -> list[dict[str, Any]]:
    if response.status_code != 200:
        raise Unavailable(f"the GraphRAG service answered HTTP {response.status_code}")
    try:
        payload = response.json()
    except ValueError:
        payload = None
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list):
        raise Unavailable("the GraphRAG service answered without a results list")
    return [_external_hit(item) for item in results[:limit]]


def _external_hit(item: Any) -> dict[str, Any]:
    """One result of the external service. Its answer is not trusted to be well formed: a
    malformed one is Unavailable (an error step or tool result), never a crashed task."""
    if not isinstance(item, dict):
        raise Unavailable("the GraphRAG service answered a result that is not an object")
    content, score = item.get("content"), _score(item.get("score", 0.0))
    if not isinstance(content, str) or not content:
        raise Unavailable("the GraphRAG service answered a result without content")
    if score is None:
        raise Unavailable(f"the GraphRAG service answered a non-numeric score: {str(item['score'])[:50]!r}")
    return {"document_id": str(item.get("document_id") or item.get("id") or ""),
            "title": str(item.get("title") or ""), "content": content, "score": score}


def _score(raw: Any) -> float | None:
    # bool is an int to Python, and NaN or an infinity ranks nothing.
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        score = float(raw)
    except (ValueError, OverflowError):
        return None
    return score if math.isfinite(score) else None


def knowledge_retrieve(*, company_id: int, query: str, limit: int) -> list[dict[str, Any]]:
    """The company's most relevant passages for `query`, best first (synchronous: the
    worker calls it from its task thread for context.useGraphRAG). Raises Unavailable
    when an external GraphRAG service is configured and fails."""
    if knob("GRAPHRAG_URL"):
        url, body, headers = _external_request(company_id, query, limit)
        try:
            response = httpx.post(url, json=body, headers=headers, timeout=knob("GRAPHRAG_TIMEOUT_S"))
        except httpx.HTTPError as exc:
            raise Unavailable(f"the GraphRAG service is unreachable: {type(exc).__name__}") from None
        return _normalise(response, limit)
    return chunk_search(company_id=company_id, query=query, limit=limit)


def _db_call(fn: Callable[..., T], *args: Any) -> T:
    """Runs in a worker thread of the loop: give the connection back when done."""
    try:
        return fn(*args)
    finally:
        close_old_connections()


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    # Not thread-sensitive: a search must not queue behind every other tool's DB call.
    return await sync_to_async(_db_call, thread_sensitive=False)(fn, *args)


async def knowledge_retrieve_async(*, company_id: int, query: str, limit: int) -> list[dict[str, Any]]:
    """knowledge_retrieve for code on an event loop (the tools)."""
    if knob("GRAPHRAG_URL"):
        url, body, headers = await _in_thread(_external_request, company_id, query, limit)
        try:
            async with httpx.AsyncClient(timeout=knob("GRAPHRAG_TIMEOUT_S")) as client:
                response = await client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the GraphRAG service is unreachable: {type(exc).__name__}") from None
        return _normalise(response, limit)
    return await _in_thread(lambda: chunk_search(company_id=company_id, query=query, limit=limit))
