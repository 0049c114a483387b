from __future__ import annotations

import operator
import re
import uuid
from functools import reduce
from typing import Any

from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector
from django.db import connection
from django.db.models import Count, Q, QuerySet

from mageagent.errors import NotFound

from .models import Chunk, Document, StoredFile

# Must stay the configuration of the GIN index (migration 0002).
FTS_CONFIG = "english"
MAX_QUERY_TERMS = 32


def _uuid(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise NotFound("not found") from None


def document_list(*, company_id: int) -> QuerySet[Document]:
    return Document.objects.filter(company_id=company_id).annotate(chunk_count=Count("chunks"))


def document_get(*, company_id: int, document_id: str) -> Document:
    """Another company's document is 'not found', exactly like a missing one."""
    document = document_list(company_id=company_id).filter(pk=_uuid(document_id)).first()
    if document is None:
        raise NotFound("document not found")
    return document


def file_list(*, company_id: int) -> QuerySet[StoredFile]:
    return StoredFile.objects.filter(company_id=company_id)


def file_get(*, company_id: int, file_id: str) -> StoredFile:
    stored = StoredFile.objects.filter(company_id=company_id, pk=_uuid(file_id)).first()
    if stored is None:
        raise NotFound("file not found")
    return stored


def query_terms(query: str) -> list[str]:
    """The query's distinct words: every search ORs them and ranks by relevance, so a
    question in natural language still finds the passages that share its words."""
    return list(dict.fromkeys(re.findall(r"\w+", query.lower())))[:MAX_QUERY_TERMS]


def chunk_search(*, company_id: int, query: str, limit: int) -> list[dict[str, Any]]:
    """The company's chunks that match `query`, best first: PostgreSQL full-text search
    (ts_rank over the GIN index) or SQLite FTS5 (bm25)."""
    terms = query_terms(query)
    if not terms or limit <= 0:
        return []
    if connection.vendor == "postgresql":
        rows = _search_postgresql(company_id, terms, limit)
    elif connection.vendor == "sqlite":
        rows = _search_sqlite(company_id, terms, limit)
    else:
        rows = _search_portable(company_id, terms, limit)
    return [{"document_id": str(uuid.UUID(str(doc_id))), "title": title, "content": content,
             "score": float(score)} for doc_id, title, content, score in rows]


def _search_postgresql(company_id: int, terms: list[str], limit: int) -> list[tuple[Any, ...]]:
    vector = SearchVector("content", config=FTS_CONFIG)
    query = reduce(operator.or_, (SearchQuery(term, config=FTS_CONFIG) for term in terms))
    qs = (Chunk.objects.filter(company_id=company_id).annotate(search=vector).filter(search=query)
          .annotate(score=SearchRank(vector, query, normalization=1)).order_by("-score", "id")
          .values_list("document_id", "document__title", "content", "score")[:limit])
    return list(qs)


def _search_sqlite(company_id: int, terms: list[str], limit: int) -> list[tuple[Any, ...]]:
    match = " OR ".join(f'"{term}"' for term in terms)  # \w+ words: nothing to escape
    sql = (
        "SELECT c.document_id, d.title, c.content, -bm25(tools_chunk_fts) AS score "
        "FROM tools_chunk_fts JOIN tools_chunk c ON c.id = tools_chunk_fts.rowid "
        "JOIN tools_document d ON d.id = c.document_id "
        "WHERE tools_chunk_fts MATCH %s AND c.company_id = %s "
        "ORDER BY bm25(tools_chunk_fts), c.id LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [match, company_id, limit])
        return list(cursor.fetchall())


def _search_portable(company_id: int, terms: list[str], limit: int) -> list[tuple[Any, ...]]:
    """Other databases: chunks containing the most query words first."""
    matches = reduce(operator.or_, (Q(content__icontains=term) for term in terms))
    rows = []
    for doc_id, title, content in (Chunk.objects.filter(matches, company_id=company_id)
                                   .values_list("document_id", "document__title", "content")[:1000]):
        lowered = content.lower()
        rows.append((doc_id, title, content, sum(lowered.count(term) for term in terms)))
    rows.sort(key=lambda row: -row[3])
    return rows[:limit]
