"""The task console's page and its two endpoints in-process: who sees which tasks, and who may
cancel them (the browser's view of it: test_console_browser.py)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = "/mageagent/api/v1/tasks"


def enqueue(api, persona, prompt="hi"):
    response = api.post(TASKS, {"prompt": prompt}, format="json", HTTP_AUTHORIZATION=f"Bearer {persona.key}")
    assert response.status_code == 202
    return response.json()["id"]


def listed(response) -> set[str]:
    assert response.status_code == 200, response.content
    return {task["id"] for task in response.json()["results"]}


def test_the_page_is_served_with_its_own_script_and_no_other_host(client):
    response = client.get("/console/")

    assert response.status_code == 200
    page = response.content.decode()
    assert 'src="/static/tasks/console.js"' in page and 'href="/static/tasks/console.css"' in page
    assert "http://" not in page and "https://" not in page  # nothing from a CDN
    assert 'data-staff="false"' in page  # a visitor is asked for a key
    assert client.get("/static/tasks/console.js").status_code == 200


def test_a_tenants_key_lists_its_companys_tasks_only(api, alice, bob, charlie):
    mine, bobs, theirs = enqueue(api, alice), enqueue(api, bob), enqueue(api, charlie)

    seen = listed(api.get("/console/tasks", HTTP_AUTHORIZATION=f"Bearer {alice.key}"))

    assert {mine, bobs} <= seen  # acme's web and mobile apps: one company
    assert theirs not in seen


def test_staff_signed_in_to_the_admin_see_every_companys_tasks(api, admin_client, alice, charlie):
    mine, theirs = enqueue(api, alice), enqueue(api, charlie)

    page = admin_client.get("/console/").content.decode()
    seen = listed(admin_client.get("/console/tasks"))

    assert 'data-staff="true"' in page
    assert {mine, theirs} <= seen


def test_without_a_key_or_a_staff_session_the_list_is_refused(api, alice):
    enqueue(api, alice)
    signed_in = Client()
    signed_in.force_login(User.objects.create_user("erin", password="x"))  # not staff

    for response in (Client().get("/console/tasks"), signed_in.get("/console/tasks")):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "authentication_failed"


def test_a_tenant_cancels_its_task_and_not_another_companys(api, alice, charlie):
    mine, theirs = enqueue(api, alice), enqueue(api, charlie)

    cancelled = api.post(f"/console/tasks/{mine}/cancel", HTTP_AUTHORIZATION=f"Bearer {alice.key}")
    foreign = api.post(f"/console/tasks/{theirs}/cancel", HTTP_AUTHORIZATION=f"Bearer {alice.key}")

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert foreign.status_code == 404


def test_a_staff_cancel_needs_the_pages_csrf_token(api, alice, admin_user):
    task_id = enqueue(api, alice)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    browser.get("/console/")  # sets the CSRF cookie, as the page does
    token = browser.cookies["csrftoken"].value

    refused = browser.post(f"/console/tasks/{task_id}/cancel", content_type="application/json")
    cancelled = browser.post(f"/console/tasks/{task_id}/cancel", content_type="application/json",
                              HTTP_X_CSRFTOKEN=token)

    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
