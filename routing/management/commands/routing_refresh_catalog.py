from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from routing.catalog import catalog_refresh


class Command(BaseCommand):
    help = "Refresh the model catalog from litellm's bundled model map, keeping staff overrides."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--provider", action="append", dest="providers",
                            help="only this litellm provider (repeatable); default: settings CATALOG_PROVIDERS")

    def handle(self, *args: Any, providers: list[str] | None = None, **options: Any) -> None:
        counts = catalog_refresh(providers=providers)
        self.stdout.write(f"catalog: created {counts['created']}, updated {counts['updated']}, "
                          f"{counts['dropped_by_source']} no longer in litellm's map, {counts['total']} models")
