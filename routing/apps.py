from __future__ import annotations

from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Routing"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from .budgets import budgets_changed
        from .models import Budget, CompanyRoutingPolicy, Model
        from .selectors import catalog_invalidate

        for model in (Model, CompanyRoutingPolicy):
            post_save.connect(catalog_invalidate, sender=model, dispatch_uid=f"routing-invalidate-{model.__name__}")
            post_delete.connect(catalog_invalidate, sender=model, dispatch_uid=f"routing-del-{model.__name__}")
        post_save.connect(budgets_changed, sender=Budget, dispatch_uid="routing-budget-saved")
        post_delete.connect(budgets_changed, sender=Budget, dispatch_uid="routing-budget-deleted")
