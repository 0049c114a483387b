"""Override of Django's query compiler (Django ==5.2.20; tests/tasks/test_task_fetch.py fails if it changes).

Model SELECTs that Django compiles once and runs many times.

A QuerySet compiles its SQL again on every evaluation, which costs several times running
the statement (BENCHMARKS.md, issue 17's A/B). The worker fetches every task it runs and
every follower fetches the task it follows, so these paths compile the QuerySet once per
database and then do per row what Django's ModelIterable does: the row's converters,
Model.from_db, select_related's populators.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators  # type: ignore[attr-defined,unused-ignore]

M = TypeVar("M", bound=Model)


class CompiledSelect(Generic[M]):
    """`queryset`'s statement, run with other values for its parameters. The queryset is
    built with placeholder values; `expected` are those values in the order the compiled
    statement takes them, so that a Django that orders a WHERE differently fails here, at
    the first use, not with rows of another filter.

    Threads share it: each runs the SQL on its own connection. The converters stay bound
    to the compiling thread's connection wrapper, of which Django's converters read only
    settings (the time zone), never the socket."""

    def __init__(self, queryset: QuerySet[M], expected: Sequence[Any]) -> None:
        self.db = queryset.db
        compiler = queryset.query.get_compiler(using=self.db)
        self.sql, params = compiler.as_sql()
        if list(params) != list(expected):
            raise RuntimeError(f"compiled parameters {params!r} are not in the expected order {expected!r}")
        select, klass_info = compiler.select, compiler.klass_info
        assert klass_info is not None
        self.model: type[M] = klass_info["model"]
        fields = klass_info["select_fields"]
        self.start, self.end = fields[0], fields[-1] + 1
        self.init_list = [col.target.attname for col, _, _ in select[self.start:self.end]]
        self.populators = get_related_populators(klass_info, select, self.db)
        self.converters = compiler.get_converters([col for col, _, _ in select[:compiler.col_count]])
        self.compiler = compiler

    def all(self, params: Sequence[Any]) -> list[M]:
        """The rows for `params`, already prepared for the database (Field.get_db_prep_value)."""
        with connections[self.db].cursor() as cursor:
            cursor.execute(self.sql, params)
            rows: Any = cursor.fetchall()
        if self.converters:
            rows = self.compiler.apply_converters(rows, self.converters)
        objs = []
        for row in rows:
            obj = self.model.from_db(self.db, self.init_list, row[self.start:self.end])
            for populator in self.populators:
                populator.populate(row, obj)
            objs.append(obj)
        return objs
