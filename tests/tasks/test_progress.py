"""Honest progress, in-process: a model's measured speed drives the estimate, and a running
task's estimate is revised from the tokens it has streamed."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from tasks import events, progress
from tasks.models import Task, TaskStatus

API = "/mageagent/api/v1"


@pytest.fixture
def model() -> str:
    name = f"test-model-{uuid.uuid4().hex[:8]}"
    yield name
    events.sync_client().delete(progress.speed_key(name))


def test_the_estimate_follows_the_models_measured_speed(model):
    unmeasured = progress.duration_estimate_ms(model=model, expected=1000)

    progress.speed_record(model=model, ttft_ms=200.0, tokens_per_s=500.0)
    fast = progress.duration_estimate_ms(model=model, expected=1000)
    for _ in range(30):
        progress.speed_record(model=model, ttft_ms=1000.0, tokens_per_s=10.0)
    slowed = progress.duration_estimate_ms(model=model, expected=1000)

    assert fast == 200 + 2000 and fast != unmeasured
    assert slowed > fast  # the moving average follows the model's recent tasks
    assert progress.speed_get(model).measured == 31


@pytest.mark.django_db
def test_a_running_task_shows_its_tokens_and_a_revised_estimate(api, alice, model):
    progress.speed_record(model=model, ttft_ms=100.0, tokens_per_s=100.0)
    now = timezone.now()
    task = Task.objects.create(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id, prompt="hi",
                               status=TaskStatus.PROCESSING, started_at=now - timedelta(seconds=1),
                               routing={"model": model, "estimated_output_tokens": 500}, estimated_duration_ms=3500)
    Task.objects.filter(pk=task.pk).update(created_at=now - timedelta(seconds=1))

    before = api.get(f"{API}/tasks/{task.id}", headers=alice.headers).json()
    events.sync_client().hset(events.meta_key(str(task.id)), "tokens", 200)
    during = api.get(f"{API}/tasks/{task.id}", headers=alice.headers).json()
    events.sync_client().hset(events.meta_key(str(task.id)), "tokens", 600)
    past_expected = api.get(f"{API}/tasks/{task.id}", headers=alice.headers).json()
    events.sync_client().delete(events.meta_key(str(task.id)))

    assert before["progress"] == {"tokens": 0, "expected_tokens": 500}
    assert during["progress"] == {"tokens": 200, "expected_tokens": 500}
    assert past_expected["progress"] == {"tokens": 600, "expected_tokens": 600}
    # ~1 s spent, then 500 tokens at 100/s, 300 left after 200, none past the expectation
    assert before["estimated_duration_ms"] > during["estimated_duration_ms"] > past_expected["estimated_duration_ms"]
    assert before["estimated_duration_ms"] != 3500


@pytest.mark.django_db
def test_a_finished_task_shows_what_it_took(api, alice):
    now = timezone.now()
    task = Task.objects.create(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id, prompt="hi",
                               status=TaskStatus.COMPLETED, started_at=now, completed_at=now + timedelta(seconds=5),
                               result={"content": "x", "usage": {"prompt_tokens": 3, "completion_tokens": 42}},
                               estimated_duration_ms=3500)
    Task.objects.filter(pk=task.pk).update(created_at=now - timedelta(seconds=1))

    shown = api.get(f"{API}/tasks/{task.id}", headers=alice.headers).json()

    assert shown["progress"] == {"tokens": 42, "expected_tokens": 42}
    assert shown["estimated_duration_ms"] == 6000
