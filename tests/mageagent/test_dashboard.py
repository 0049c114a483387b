"""The Grafana dashboard and the monitoring profile's Prometheus config name only metrics
the service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

from mageagent import health, metrics  # noqa: F401  (health registers the queue collector)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "mageagent.json"
METRIC = re.compile(r"\bmageagent_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_every_dashboard_query_names_an_exported_metric():
    names = exported()
    found = queries()

    assert found
    for expr in found:
        used = METRIC.findall(expr)
        assert used, expr
        assert set(used) <= names, (expr, set(used) - names)


def test_the_dashboard_shows_every_metric_family_of_the_service():
    shown = {m for expr in queries() for m in METRIC.findall(expr)}
    families = {f.name for f in REGISTRY.collect() if f.name.startswith("mageagent_")}

    assert {f for f in families if not any(s.startswith(f) for s in shown)} == set()


def test_prometheus_scrapes_the_web_with_the_token_and_every_worker():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    assert jobs["mageagent-web"]["metrics_path"] == "/metrics"
    assert "credentials_file" in jobs["mageagent-web"]["authorization"]
    assert jobs["mageagent-worker"]["dns_sd_configs"][0]["names"] == ["worker"]
