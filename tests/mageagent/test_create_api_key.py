"""`manage.py create_api_key` as scripts use it: the raw key alone on stdout's last line."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from mageagent.tenancy.models import App, Company

pytestmark = pytest.mark.django_db
TASKS = "/mageagent/api/v1/tasks"


def create_api_key(company: str, app: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("create_api_key", "--company", company, "--app", app, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_the_printed_key_is_alone_on_the_last_line_and_authenticates_for_that_app(api):
    out, _ = create_api_key("initech", "cli")
    key = out.splitlines()[-1]

    listed = api.get(TASKS, HTTP_AUTHORIZATION=f"Bearer {key}")
    created = api.post(TASKS, {"prompt": "hello"}, format="json", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert key.strip() == key and " " not in key
    assert listed.status_code == 200, listed.content
    assert listed.json()["results"] == []
    assert created.status_code == 202, created.content
    assert (created.json()["company_id"], created.json()["app_id"]) == ("initech", "cli")


def test_running_it_again_adds_a_second_working_key_to_the_same_app(api):
    first = create_api_key("initech", "cli")[0].splitlines()[-1]
    second = create_api_key("initech", "cli")[0].splitlines()[-1]

    assert first != second
    for key in (first, second):
        assert api.get(TASKS, HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200
    assert Company.objects.filter(slug="initech").count() == 1
    assert App.objects.filter(company__slug="initech", slug="cli").count() == 1


def test_a_made_up_key_of_the_same_shape_does_not_authenticate(api):
    key = create_api_key("initech", "cli")[0].splitlines()[-1]
    forged = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")

    assert api.get(TASKS, HTTP_AUTHORIZATION=f"Bearer {forged}").status_code == 401
