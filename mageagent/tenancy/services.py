from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from .models import ApiKey, App, Company

KEY_PREFIX = "mk_"


def key_digest(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    raw_key: str


@transaction.atomic
def app_get_or_create(*, company_slug: str, app_slug: str) -> App:
    company, _ = Company.objects.get_or_create(slug=company_slug, defaults={"name": company_slug})
    app, _ = App.objects.get_or_create(company=company, slug=app_slug, defaults={"name": app_slug})
    return app


def api_key_create(*, app: App, name: str = "") -> IssuedKey:
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(app=app, name=name, prefix=raw[:10], digest=key_digest(raw))
    return IssuedKey(api_key=key, raw_key=raw)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key
