"""Staff admin for companies, apps and API keys. Keys are issued and revoked through
tenancy.services; the raw key is rendered once, in the response to the add form, and
stored nowhere (not even in the messages cookie)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from .models import ApiKey, App, Company
from .services import api_key_create, api_key_revoke


class AppInline(admin.TabularInline):
    model = App
    extra = 0
    fields = ("slug", "name", "is_active", "requests_per_minute", "fair_weight", "max_in_flight", "max_backlog",
              "created_at")
    readonly_fields = ("created_at",)
    show_change_link = True


@admin.register(Company)
class CompanyAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "is_active", "fair_weight", "max_in_flight", "created_at")
    list_filter = ("is_active",)
    search_fields = ("slug", "name")
    readonly_fields = ("created_at",)
    inlines = (AppInline,)


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ("prefix", "name", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    # Keys are issued from the API key page, which shows the raw key once.
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(App)
class AppAdmin(admin.ModelAdmin):
    list_display = ("__str__", "company", "slug", "name", "is_active", "requests_per_minute", "fair_weight",
                    "max_in_flight", "max_backlog", "created_at")
    list_filter = ("is_active", "company")
    list_select_related = ("company",)
    search_fields = ("slug", "name", "company__slug")
    readonly_fields = ("created_at",)
    inlines = (ApiKeyInline,)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "app", "name", "created_at", "last_used_at", "revoked_at", "active")
    list_filter = ("app__company", ("revoked_at", admin.EmptyFieldListFilter))
    list_select_related = ("app__company",)
    search_fields = ("prefix", "name", "app__slug", "app__company__slug")
    readonly_fields = ("prefix", "digest", "created_at", "last_used_at", "revoked_at")
    actions = ("revoke_keys",)

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("app", "name")
        return ("app", "name", "prefix", "digest", "created_at", "last_used_at", "revoked_at")

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        # A key belongs to its app for life: moving it would hand it to another tenant.
        return (*self.readonly_fields, "app") if obj is not None else ()

    @admin.display(boolean=True, description="active")
    def active(self, key: ApiKey) -> bool:
        return key.is_active

    def save_model(self, request: HttpRequest, obj: ApiKey, form: ModelForm, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = api_key_create(app=obj.app, name=obj.name)
        # The admin goes on with `obj` (log entry, redirect): make it the saved key.
        for field in ("pk", "prefix", "digest", "created_at"):
            setattr(obj, field, getattr(issued.api_key, field))
        obj._state.adding = False
        obj._state.db = issued.api_key._state.db
        request._mageagent_raw_key = issued.raw_key  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        raw_key = getattr(request, "_mageagent_raw_key", None)
        if raw_key is None:
            return super().response_add(request, obj, post_url_continue)
        context = {**self.admin_site.each_context(request), "title": "API key created", "api_key": obj,
                   "raw_key": raw_key, "opts": self.opts}
        response = TemplateResponse(request, "admin/tenancy/apikey/created.html", context)
        # The one page that ever shows the raw key: keep it out of every cache.
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(api_key=key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)
