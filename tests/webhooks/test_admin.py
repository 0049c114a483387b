"""Staff see webhooks and their deliveries in the admin and turn a disabled endpoint back on."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from webhooks.models import Delivery, Webhook

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_(db: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "", "pw"))
    return client


def test_staff_see_a_disabled_webhook_and_its_deliveries_and_enable_it(admin_client_, alice):
    hook = Webhook.objects.create(company_id=alice.tenant.company_id, app_id=alice.tenant.app_id,
                                  url="https://hooks.example.com/a", events=["task.failed"], secret="whsec_QUJD",
                                  is_active=False, disabled_reason="every delivery attempt failed since then")
    Delivery.objects.create(webhook=hook, msg_id="msg_1", event_type="task.failed",
                            task_id="00000000-0000-0000-0000-000000000001", status="failed", attempts=8)

    hooks = admin_client_.get("/admin/webhooks/webhook/")
    deliveries = admin_client_.get("/admin/webhooks/delivery/?status=failed")
    enabled = admin_client_.post("/admin/webhooks/webhook/", {"action": "enable", "_selected_action": [str(hook.pk)]},
                                 follow=True)

    assert hooks.status_code == 200 and b"every delivery attempt failed" in hooks.content
    assert b"whsec_QUJD" not in admin_client_.get(f"/admin/webhooks/webhook/{hook.pk}/change/").content
    assert deliveries.status_code == 200 and b"msg_1" in deliveries.content
    assert enabled.status_code == 200
    hook.refresh_from_db()
    assert hook.is_active and hook.disabled_reason == "" and hook.failing_since is None
