from __future__ import annotations

from django.core.validators import MinValueValidator
from django.db import models


class Company(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    # Fair scheduling (README, "Fair scheduling"): read at the next dispatch after a save.
    fair_weight = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1)],
        help_text="This company's share of the workers against the other companies with waiting tasks "
                  "(charged by tokens). 2 gets twice the share of 1.")
    max_in_flight = models.PositiveIntegerField(
        default=0, help_text="Tasks of this company dispatched or running at once; 0: no limit.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "companies"
        ordering = ("slug",)

    def __str__(self) -> str:
        return self.slug


class App(models.Model):
    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="apps")
    slug = models.SlugField(max_length=64)
    name = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="API requests per minute for this app's keys together (429 past it). Empty: the "
                  "MAGEAGENT_API_RATE_PER_MIN default; 0: no limit.")
    fair_weight = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1)],
        help_text="This app's share of its company's workers against the company's other apps with waiting tasks.")
    max_in_flight = models.PositiveIntegerField(
        default=0, help_text="Tasks of this app dispatched or running at once; 0: no limit.")
    max_backlog = models.PositiveIntegerField(
        default=0, help_text="Tasks of this app waiting for a worker past which new tasks are refused "
                             "(429 queue_full); 0: no limit.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("company__slug", "slug")
        constraints = [models.UniqueConstraint(fields=("company", "slug"), name="app_unique_slug")]

    def __str__(self) -> str:
        return f"{self.company.slug}/{self.slug}"


class ApiKey(models.Model):
    """Only a SHA-256 digest of the key is stored; the raw key is shown once, at creation."""

    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API key"
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.app})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
