"""Staff admin: the catalog (enable, tier, price and capability overrides), company
policies, budgets with their live use and daily spend. Every task's routing decision
(RoutedTask) is registered by tasks/admin.py, the app that owns those rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet, Sum
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from .budgets import budget_context, budget_usage
from .catalog import catalog_refresh, models_set_enabled
from .models import Budget, CompanyRoutingPolicy, Model, Spend
from .selectors import spend_total


def _pretty(value: Any) -> SafeString:
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>',
                       json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = ("id", "provider", "effective_tier", "quality_tier", "enabled", "auto_route", "context_window",
                    "input_per_mtok", "output_per_mtok", "supports_tools", "in_source")
    list_editable = ("quality_tier", "enabled", "auto_route")
    list_filter = ("provider", "enabled", "auto_route", "default_tier", "quality_tier", "supports_tools",
                   "supports_vision", "in_source")
    search_fields = ("id",)
    list_per_page = 100
    actions = ("enable", "disable", "refresh_catalog")
    readonly_fields = ("provider", "context_window", "max_output_tokens", "input_cost_per_token",
                       "output_cost_per_token", "supports_tools", "supports_vision", "supports_json", "default_tier",
                       "in_source", "refreshed_at")
    fieldsets = (
        (None, {"fields": ("id", "provider", "enabled", "auto_route", "quality_tier", "default_tier", "notes")}),
        ("From litellm's model map (refreshed)", {"fields": (
            "context_window", "max_output_tokens", "input_cost_per_token", "output_cost_per_token",
            "supports_tools", "supports_vision", "supports_json", "in_source", "refreshed_at")}),
        ("Overrides (kept across refreshes)", {"fields": (
            "input_cost_override", "output_cost_override", "context_window_override", "supports_tools_override",
            "supports_vision_override", "supports_json_override")}),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> tuple[str, ...]:
        return self.readonly_fields + (("id",) if obj is not None else ())

    @admin.display(description="tier")
    def effective_tier(self, obj: Model) -> int | None:
        return obj.tier

    @admin.display(description="$ in / Mtok")
    def input_per_mtok(self, obj: Model) -> float:
        price = obj.input_cost_override if obj.input_cost_override is not None else obj.input_cost_per_token
        return round(price * 1e6, 4)

    @admin.display(description="$ out / Mtok")
    def output_per_mtok(self, obj: Model) -> float:
        price = obj.output_cost_override if obj.output_cost_override is not None else obj.output_cost_per_token
        return round(price * 1e6, 4)

    @admin.action(description="Enable the selected models")
    def enable(self, request: HttpRequest, queryset: QuerySet[Model]) -> None:
        models_set_enabled(models=queryset, enabled=True)

    @admin.action(description="Disable the selected models")
    def disable(self, request: HttpRequest, queryset: QuerySet[Model]) -> None:
        models_set_enabled(models=queryset, enabled=False)

    @admin.action(description="Refresh the whole catalog from litellm (keeps overrides)")
    def refresh_catalog(self, request: HttpRequest, queryset: QuerySet[Model]) -> None:
        counts = catalog_refresh()
        self.message_user(request, f"catalog refreshed: {counts}", messages.SUCCESS)


@admin.register(CompanyRoutingPolicy)
class CompanyRoutingPolicyAdmin(admin.ModelAdmin):
    list_display = ("company", "allowed_models", "blocked_models", "updated_at")
    search_fields = ("company__slug",)


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ("company", "app", "period", "limit_usd", "enabled", "spent_usd", "live_use")
    list_filter = ("period", "enabled", "company")
    list_select_related = ("company", "app")

    @admin.display(description="spent (ledger)")
    def spent_usd(self, obj: Budget) -> str:
        today = datetime.now(UTC).date()
        since = today if obj.period == "day" else today.replace(day=1)
        return f"${spend_total(company_id=obj.company_id, app_id=obj.app_id, since=since):.6f}"

    @admin.display(description="spent + reserved now (Redis)")
    def live_use(self, obj: Budget) -> str:
        try:
            ctx = budget_context(company_id=obj.company_id, app_id=obj.app_id)
            use = next((u for u in budget_usage(ctx) if u["period"] == obj.period
                        and u["scope"] == ("app" if obj.app_id else "company")), None)
        except Exception:
            return "unavailable"
        return "—" if use is None else f"${use['spent_usd']:.6f} + ${use['reserved_usd']:.6f}"


@admin.register(Spend)
class SpendAdmin(admin.ModelAdmin):
    list_display = ("day", "company", "app", "model", "cost_usd", "prompt_tokens", "completion_tokens", "calls",
                    "tasks")
    list_filter = ("company", "app", "model")
    list_select_related = ("company", "app")
    date_hierarchy = "day"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Spend | None = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None) or {}
        cl = context.get("cl")
        if cl is not None:
            total = cl.queryset.aggregate(total=Sum("cost_usd"))["total"] or 0
            context["title"] = f"Spend (total of the rows shown: ${total:.6f})"
        return response
