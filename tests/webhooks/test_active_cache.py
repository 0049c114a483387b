"""Whether an app has webhooks is cached per process (every finished task asks); a change made
anywhere reaches every process's next task through the version in Redis."""

from __future__ import annotations

import pytest

from mageagent.redis import sync_client
from tasks import services as task_services
from tasks.models import Task
from webhooks import services, signing
from webhooks.models import Delivery, Webhook
from webhooks.selectors import active_cache

API = "/mageagent/api/v1"

pytestmark = pytest.mark.django_db


@pytest.fixture
def webhook_cache(settings):
    """The cache on, as in production (the suite turns it off)."""
    settings.MAGEAGENT = {**settings.MAGEAGENT, "WEBHOOK_CACHE_S": 60.0}
    active_cache.forget()
    yield
    active_cache.forget()


def finish_a_task(persona, capture) -> Task:
    task = Task.objects.create(company_id=persona.tenant.company_id, app_id=persona.tenant.app_id, prompt="hi")
    with capture(execute=True):
        assert task_services.task_fail(task_id=str(task.id), attempt=None, app_id=task.app_id,
                                       error={"code": "provider_error", "message": "down"})
    return task


def test_a_webhook_made_in_another_process_gets_this_processes_next_task(alice, webhook_cache,
                                                                         django_capture_on_commit_callbacks):
    finish_a_task(alice, django_capture_on_commit_callbacks)  # this process (a worker) caches "no webhooks"
    # Another process (the web) writes the row (no signal reaches this one) and, once committed,
    # bumps the version.
    [hook] = Webhook.objects.bulk_create([Webhook(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id,
                                                  url="https://example.com/h", events=["task.failed"],
                                                  secret=signing.secret_new())])
    unannounced = finish_a_task(alice, django_capture_on_commit_callbacks)
    sync_client().incr(active_cache.version_key())

    announced = finish_a_task(alice, django_capture_on_commit_callbacks)

    assert not Delivery.objects.filter(task_id=unannounced.id).exists()  # the cache was in use
    assert list(Delivery.objects.filter(task_id=announced.id).values_list("webhook_id", flat=True)) == [hook.id]


def test_every_change_of_a_webhook_is_announced_once_committed(api, alice, local_hooks, webhook_cache,
                                                              django_capture_on_commit_callbacks):
    seen = [active_cache.version()]
    with django_capture_on_commit_callbacks(execute=True):
        created = api.post(f"{API}/webhooks", {"url": "http://127.0.0.1:9/h"}, format="json", headers=alice.headers)
    seen.append(active_cache.version())
    webhook = Webhook.objects.get(pk=created.json()["id"])
    with django_capture_on_commit_callbacks(execute=True):
        Webhook.objects.filter(pk=webhook.pk).update(failing_since=webhook.created_at.replace(year=2000))
        services._disable_if_failing_too_long(webhook, webhook.created_at)
    seen.append(active_cache.version())
    with django_capture_on_commit_callbacks(execute=True):
        services.webhook_enable(webhook=webhook)
    seen.append(active_cache.version())
    with django_capture_on_commit_callbacks(execute=True):
        api.delete(f"{API}/webhooks/{webhook.pk}", headers=alice.headers)
    seen.append(active_cache.version())

    assert created.status_code == 201
    assert len(set(seen)) == 5, seen
