from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from mageagent.tenancy.auth import tenant_for_key
from mageagent.tenancy.models import ApiKey
from mageagent.tenancy.services import api_key_create
from tasks import events, services
from tasks.models import Task, TaskStatus

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/tasks/task/"
QUEUE = "/admin/tasks/task/queue/"


def make_task(persona, prompt: str = "Explain quantum computing", **fields) -> Task:
    # Inside the test transaction on_commit never fires: nothing reaches the broker.
    task, _ = services.task_create(tenant=persona.tenant, prompt=prompt, **fields)
    return task


def finish(task: Task, *, status: str, error: dict | None = None) -> Task:
    started = services.task_start(task=task, worker="w1", routing={"model": "gpt-4o-mini"}, steps=[])
    assert started is not None
    if status == TaskStatus.COMPLETED:
        services.task_complete(task_id=str(task.id), attempt=1, result={"content": "done"}, steps=[], routing=None)
    else:
        services.task_fail(task_id=str(task.id), attempt=1, error=error or {"code": "provider_error"})
    return Task.objects.get(pk=task.pk)


def act(client: Client, action: str, *tasks: Task):
    return client.post(CHANGELIST, {"action": action, "_selected_action": [str(t.pk) for t in tasks]}, follow=True)


@pytest.fixture
def staff_without_permissions(db: None) -> Client:
    user = User.objects.create_user("dave", password="x", is_staff=True)
    client = Client()
    client.force_login(user)
    return client


def test_staff_see_the_task_list_filtered_by_status(admin_client, alice):
    queued = make_task(alice, "still waiting")
    failed = finish(make_task(alice, "went wrong"), status=TaskStatus.FAILED)
    response = admin_client.get(CHANGELIST, {"status__exact": "failed"})
    assert response.status_code == 200
    assert str(failed.id) in response.content.decode()
    assert str(queued.id) not in response.content.decode()


def test_staff_find_a_task_by_its_id_or_a_word_of_its_prompt(admin_client, alice):
    wanted = make_task(alice, "the aardvark question")
    other = make_task(alice, "something else")
    by_id = admin_client.get(CHANGELIST, {"q": str(wanted.id)}).content.decode()
    by_word = admin_client.get(CHANGELIST, {"q": "aardvark"}).content.decode()
    for page in (by_id, by_word):
        assert str(wanted.id) in page
        assert str(other.id) not in page


def test_the_task_page_shows_its_event_log_and_error(admin_client, alice):
    task = make_task(alice)
    events.append(str(task.id), events.encode("chunk", content="hello-from-the-log"))
    finish(task, status=TaskStatus.FAILED, error={"code": "invalid_request", "message": "bad"})  # appends done
    page = admin_client.get(f"{CHANGELIST}{task.id}/change/").content.decode()
    assert "hello-from-the-log" in page
    assert "invalid_request" in page
    assert "<td>done</td>" in page


def test_the_task_page_says_when_the_log_has_expired(admin_client, alice):
    task = make_task(alice)
    page = admin_client.get(f"{CHANGELIST}{task.id}/change/").content.decode()
    assert "no event log" in page


def test_the_cancel_action_cancels_a_queued_task_and_closes_its_log(admin_client, alice):
    task = make_task(alice)
    response = act(admin_client, "cancel_tasks", task)
    assert "Cancelled 1 task" in response.content.decode()
    assert Task.objects.get(pk=task.pk).status == TaskStatus.CANCELLED
    assert events.is_closed(str(task.id))


def test_the_cancel_action_leaves_a_finished_task_alone(admin_client, alice):
    task = finish(make_task(alice), status=TaskStatus.COMPLETED)
    response = act(admin_client, "cancel_tasks", task)
    assert "already completed" in response.content.decode()
    assert Task.objects.get(pk=task.pk).status == TaskStatus.COMPLETED


def test_the_retry_action_reruns_a_failed_task_as_a_new_one(admin_client, alice):
    old = finish(make_task(alice, "try me again", model="gpt-4o-mini", priority=7, metadata={"user": "u1"},
                          context={"temperature": 0.2}), status=TaskStatus.FAILED)
    response = act(admin_client, "retry_tasks", old)
    new = Task.objects.exclude(pk=old.pk).get()
    assert str(new.id) in response.content.decode()
    assert (new.status, new.prompt, new.model, new.priority) == (TaskStatus.QUEUED, "try me again", "gpt-4o-mini", 7)
    assert (new.company_id, new.app_id, new.metadata, new.context) == (
        old.company_id, old.app_id, {"user": "u1"}, {"temperature": 0.2})
    assert Task.objects.get(pk=old.pk).status == TaskStatus.FAILED


def test_the_retry_action_refuses_a_task_that_has_not_ended(admin_client, alice):
    task = make_task(alice)
    response = act(admin_client, "retry_tasks", task)
    assert "Not retried" in response.content.decode()
    assert Task.objects.count() == 1


def test_the_queue_page_shows_counts_and_links_recent_failures(admin_client, alice, charlie):
    make_task(alice)
    failed = finish(make_task(charlie), status=TaskStatus.FAILED, error={"code": "context_length_exceeded"})
    response = admin_client.get(QUEUE)
    page = response.content.decode()
    assert response.status_code == 200
    assert "context_length_exceeded" in page
    assert f"/admin/tasks/task/{failed.id}/change/" in page
    assert "acme" in page and "globex" in page  # per-company breakdown
    assert response.context["metrics"]["waiting"] == 1
    assert response.context["metrics"]["failed"] == 1


def test_the_admin_index_links_the_queue_page(admin_client):
    assert QUEUE in admin_client.get("/admin/").content.decode()


def test_non_staff_cannot_see_the_queue_page(client, db):
    User.objects.create_user("eve", password="x")
    client.login(username="eve", password="x")
    response = client.get(QUEUE)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_staff_without_task_permission_cannot_see_the_queue_page(staff_without_permissions):
    assert staff_without_permissions.get(QUEUE).status_code == 403


def test_staff_who_may_only_view_tasks_get_no_actions(staff_without_permissions, alice):
    user = User.objects.get(username="dave")
    user.user_permissions.add(Permission.objects.get(codename="view_task"))
    task = make_task(alice)
    act(staff_without_permissions, "cancel_tasks", task)
    assert Task.objects.get(pk=task.pk).status == TaskStatus.QUEUED


def test_creating_a_key_shows_the_raw_key_once(admin_client, alice):
    app_id = alice.tenant.app_id
    response = admin_client.post("/admin/tenancy/apikey/add/", {"app": app_id, "name": "ci"})
    key = ApiKey.objects.get(name="ci")
    raw = response.context["raw_key"]
    assert response.status_code == 200
    assert raw in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert key.digest != raw and raw.startswith(key.prefix)
    tenant = tenant_for_key(raw)
    assert tenant is not None and tenant.app_id == app_id
    later = admin_client.get(f"/admin/tenancy/apikey/{key.pk}/change/").content.decode()
    assert raw not in later and key.digest in later


def test_the_revoke_action_stops_a_key_from_authenticating(admin_client, alice, api):
    key = ApiKey.objects.get(pk=alice.tenant.key_id)
    admin_client.post("/admin/tenancy/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk]})
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    response = api.get("/mageagent/api/v1/tasks", HTTP_AUTHORIZATION=f"Bearer {alice.key}")
    assert response.status_code == 401


def test_company_app_and_key_pages_render(admin_client, alice):
    other = api_key_create(app=ApiKey.objects.get(pk=alice.tenant.key_id).app, name="second")
    for url in ("/admin/tenancy/company/", f"/admin/tenancy/company/{alice.tenant.company_id}/change/",
                "/admin/tenancy/app/", f"/admin/tenancy/app/{alice.tenant.app_id}/change/",
                "/admin/tenancy/apikey/", "/admin/tenancy/apikey/add/"):
        assert admin_client.get(url).status_code == 200, url
    assert other.api_key.prefix in admin_client.get("/admin/tenancy/apikey/").content.decode()


def test_the_admin_styles_are_served_by_the_app_even_without_debug(client, settings):
    # daphne serves no files: without this the admin is unstyled in production.
    settings.DEBUG = False
    response = client.get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert b"".join(response.streaming_content)
