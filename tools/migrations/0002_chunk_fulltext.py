"""The full-text index over knowledge-base chunks, per database.

PostgreSQL: a GIN index on the same `SearchVector("content", config=...)` expression the
search query uses (tools/search.py), so the planner can use it.
SQLite: an FTS5 table over tools_chunk (external content) kept in step by triggers.
Any later migration that rebuilds tools_chunk on SQLite drops the triggers with the old
table: run `fts_install` again there.
"""

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector
from django.db import migrations

PG_INDEX = "tools_chunk_fts"

SQLITE_INSTALL = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS tools_chunk_fts USING fts5("
    " content, content='tools_chunk', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER IF NOT EXISTS tools_chunk_fts_ai AFTER INSERT ON tools_chunk BEGIN"
    " INSERT INTO tools_chunk_fts(rowid, content) VALUES (new.id, new.content); END",
    "CREATE TRIGGER IF NOT EXISTS tools_chunk_fts_ad AFTER DELETE ON tools_chunk BEGIN"
    " INSERT INTO tools_chunk_fts(tools_chunk_fts, rowid, content) VALUES ('delete', old.id, old.content); END",
    "CREATE TRIGGER IF NOT EXISTS tools_chunk_fts_au AFTER UPDATE ON tools_chunk BEGIN"
    " INSERT INTO tools_chunk_fts(tools_chunk_fts, rowid, content) VALUES ('delete', old.id, old.content);"
    " INSERT INTO tools_chunk_fts(rowid, content) VALUES (new.id, new.content); END",
    "INSERT INTO tools_chunk_fts(tools_chunk_fts) VALUES ('rebuild')",
]
SQLITE_REMOVE = [
    "DROP TRIGGER IF EXISTS tools_chunk_fts_ai",
    "DROP TRIGGER IF EXISTS tools_chunk_fts_ad",
    "DROP TRIGGER IF EXISTS tools_chunk_fts_au",
    "DROP TABLE IF EXISTS tools_chunk_fts",
]


def _pg_index():
    # The text search configuration must stay the one tools/search.py queries with.
    return GinIndex(SearchVector("content", config="english"), name=PG_INDEX)


def fts_install(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.add_index(apps.get_model("tools", "Chunk"), _pg_index())
    elif vendor == "sqlite":
        for sql in SQLITE_INSTALL:
            schema_editor.execute(sql)


def fts_remove(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.remove_index(apps.get_model("tools", "Chunk"), _pg_index())
    elif vendor == "sqlite":
        for sql in SQLITE_REMOVE:
            schema_editor.execute(sql)


class Migration(migrations.Migration):
    dependencies = [("tools", "0001_initial")]

    operations = [migrations.RunPython(fts_install, fts_remove)]
