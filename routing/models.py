from __future__ import annotations

from decimal import Decimal

from django.db import models

from mageagent.tenancy.models import App, Company


class Tier(models.IntegerChoices):
    ECONOMY = 1, "economy (simple prompts)"
    BALANCED = 2, "balanced (moderate prompts)"
    PREMIUM = 3, "premium (complex prompts)"


class Model(models.Model):
    """One chat model of the catalog. The `source_*`-style columns come from litellm's
    bundled model map and are rewritten by `routing_refresh_catalog`; the staff-owned
    columns (enabled, auto_route, the *_override fields, quality_tier) never are."""

    id = models.CharField(max_length=200, primary_key=True, help_text="the model name requests use")
    provider = models.CharField(max_length=64, db_index=True)
    # From litellm (refreshed).
    context_window = models.PositiveIntegerField(null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    input_cost_per_token = models.FloatField(default=0.0)
    output_cost_per_token = models.FloatField(default=0.0)
    supports_tools = models.BooleanField(default=False)
    supports_vision = models.BooleanField(default=False)
    supports_json = models.BooleanField(default=False)
    default_tier = models.PositiveSmallIntegerField(choices=Tier.choices, null=True, blank=True,
                                                    help_text="from the model family or its price")
    in_source = models.BooleanField(default=True, help_text="false once litellm's map no longer lists it")
    refreshed_at = models.DateTimeField(auto_now=True)
    # Staff-owned.
    enabled = models.BooleanField(default=True)
    auto_route = models.BooleanField(default=True, help_text="a candidate when the caller names no model")
    quality_tier = models.PositiveSmallIntegerField(choices=Tier.choices, null=True, blank=True,
                                                    help_text="overrides the default tier")
    input_cost_override = models.FloatField(null=True, blank=True, help_text="USD per token")
    output_cost_override = models.FloatField(null=True, blank=True, help_text="USD per token")
    context_window_override = models.PositiveIntegerField(null=True, blank=True)
    supports_tools_override = models.BooleanField(null=True, blank=True)
    supports_vision_override = models.BooleanField(null=True, blank=True)
    supports_json_override = models.BooleanField(null=True, blank=True)
    notes = models.TextField(blank=True)

    class Meta:
        ordering = ("provider", "id")
        indexes = [models.Index(fields=("enabled", "auto_route"), name="routing_model_routable")]

    def __str__(self) -> str:
        return self.id

    @property
    def tier(self) -> int | None:
        return self.quality_tier or self.default_tier


class CompanyRoutingPolicy(models.Model):
    """A company's routing rules on top of settings.MAGEAGENT_ROUTING["POLICY"]."""

    company = models.OneToOneField(Company, on_delete=models.CASCADE, related_name="routing_policy")
    allowed_models = models.JSONField(default=list, blank=True,
                                      help_text='glob patterns, e.g. ["gpt-4o*", "anthropic/*"]; empty allows all')
    blocked_models = models.JSONField(default=list, blank=True, help_text="glob patterns that are never used")
    policy = models.JSONField(default=dict, blank=True,
                              help_text='overrides of the settings policy, e.g. {"prefer": {"complex": ["gpt-4.1"]}}')
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "company routing policies"

    def __str__(self) -> str:
        return f"routing policy of {self.company}"


class BudgetPeriod(models.TextChoices):
    DAY = "day"
    MONTH = "month"


class Budget(models.Model):
    """A spending limit for a company (app empty) or one of its apps, per UTC day or month."""

    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="budgets")
    app = models.ForeignKey(App, on_delete=models.CASCADE, null=True, blank=True, related_name="budgets")
    period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    limit_usd = models.DecimalField(max_digits=14, decimal_places=6)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("company__slug", "app__slug", "period")
        constraints = [
            models.UniqueConstraint(fields=("company", "period"), condition=models.Q(app__isnull=True),
                                    name="budget_unique_company_period"),
            models.UniqueConstraint(fields=("company", "app", "period"), condition=models.Q(app__isnull=False),
                                    name="budget_unique_app_period"),
        ]

    def __str__(self) -> str:
        scope = f"{self.company}/{self.app.slug}" if self.app_id and self.app else str(self.company)
        return f"{scope} {self.period} ${self.limit_usd}"


class Spend(models.Model):
    """What a company's app spent on one UTC day with one model; months are sums of days.
    The durable ledger of use (tasks are pruned): GET /usage reads it."""

    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="spend")
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="spend")
    day = models.DateField()
    # The catalog model that served the calls; "" for rows booked before models were recorded.
    model = models.CharField(max_length=200, blank=True, default="")
    cost_usd = models.DecimalField(max_digits=16, decimal_places=9, default=Decimal(0))
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    calls = models.PositiveIntegerField(default=0)
    tasks = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-day", "company__slug", "app__slug")
        verbose_name_plural = "spend"
        constraints = [models.UniqueConstraint(fields=("company", "app", "day", "model"),
                                               name="spend_unique_day_model")]
        indexes = [models.Index(fields=("company", "day"), name="spend_company_day")]

    def __str__(self) -> str:
        return f"{self.app} {self.day}: ${self.cost_usd}"
