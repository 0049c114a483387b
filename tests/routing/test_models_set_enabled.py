"""Enabling and disabling catalog models is one service, whoever calls it (the admin today)."""

from __future__ import annotations

import pytest

from routing.catalog import models_set_enabled
from routing.models import Model
from routing.selectors import model_get

pytestmark = pytest.mark.django_db


def test_a_disabled_model_is_disabled_for_the_catalog_at_once_and_counted_once():
    models = Model.objects.filter(id__in=["gpt-4o", "gpt-4o-mini"])
    try:
        assert models_set_enabled(models=models, enabled=False) == 2
        assert models_set_enabled(models=models, enabled=False) == 0
        assert model_get("gpt-4o").enabled is False and model_get("gpt-4o-mini").enabled is False
    finally:
        models_set_enabled(models=Model.objects.filter(id__in=["gpt-4o", "gpt-4o-mini"]), enabled=True)
    assert model_get("gpt-4o").enabled is True
