from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from mageagent.tenancy.services import api_key_create, app_get_or_create


class Command(BaseCommand):
    help = "Create an API key for a company's app (both created if missing). Prints the raw key last."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--company", required=True)
        parser.add_argument("--app", required=True)
        parser.add_argument("--name", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        app = app_get_or_create(company_slug=options["company"], app_slug=options["app"])
        issued = api_key_create(app=app, name=options["name"])
        self.stderr.write(f"API key for {app} (shown once; store it now):")
        self.stdout.write(issued.raw_key)
