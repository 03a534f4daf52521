"""The Grafana dashboard queries only metrics the operator exports, under the names Prometheus scrapes."""

import dataclasses
import json
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agentrun_operator.metrics import Metrics
from tests.harness.chart import CHART_DIR, find, render_objects

pytestmark = pytest.mark.unit

DASHBOARD = json.loads((CHART_DIR / "files" / "grafana-dashboard.json").read_text())


def exported_metrics() -> list[tuple[str, str, set[str]]]:
    """(name, type, label names) of every metric the operator's Metrics registers. Label names come from the
    collector itself (prometheus-client has no public accessor), since a labelled metric has no samples yet."""
    metrics = Metrics.create()
    exported = []
    for field in dataclasses.fields(metrics):
        collector = getattr(metrics, field.name)
        if isinstance(collector, CollectorRegistry):
            continue
        (family,) = collector.describe()
        exported.append((family.name, family.type, set(collector._labelnames)))
    return exported


OPERATOR_METRICS = exported_metrics()
# PromQL words that are not metric names.
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "le", "without", "on", "ignoring"}


def scraped_series(metrics: list[tuple[str, str, set[str]]]) -> dict[str, set[str]]:
    """Series name -> labels, as Prometheus stores them (histograms as _bucket/_sum/_count, with le on buckets)."""
    series: dict[str, set[str]] = {}
    for name, kind, labels in metrics:
        if kind == "histogram":
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_sum"] = labels
            series[f"{name}_count"] = labels
        elif kind == "counter":  # prometheus-client names the family without the _total its samples carry
            series[f"{name}_total"] = labels
        else:
            series[name] = labels
    return series


def panel_queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in DASHBOARD["panels"] for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    without_ranges = re.sub(r"\[[^\]]*\]", "", expr)
    without_selectors = re.sub(r"\{[^}]*\}", "", without_ranges)
    without_grouping = re.sub(r"\b(by|without)\s*\([^)]*\)", "", without_selectors)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_grouping))
    return {word for word in words - PROMQL_WORDS if not re.fullmatch(r"[0-9.]+", word)}


def grouping_labels(expr: str) -> set[str]:
    return {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")}


def test_every_query_names_only_series_the_operator_exports() -> None:
    series = scraped_series(OPERATOR_METRICS)
    for title, expr in panel_queries():
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= set(series), f"{title}: {sorted(names - set(series))} are not exported"
        allowed = set().union(*(series[name] for name in names))
        assert grouping_labels(expr) <= allowed, f"{title}: groups by a label the metric lacks"


def test_dashboard_covers_phases_durations_restarts_queue_waits_and_status_writes() -> None:
    used = set().union(*(metric_names(expr) for _, expr in panel_queries()))
    for needed in (
        "agentrun_runs",
        "agentrun_run_duration_seconds_bucket",
        "agentrun_restarts_total",
        "agentrun_queue_wait_seconds_bucket",
        "agentrun_status_writes_total",
    ):
        assert needed in used


def test_the_metric_parser_sees_a_wrong_name() -> None:
    assert metric_names("sum(rate(agentrun_restart_total[5m]))") == {"agentrun_restart_total"}
    assert not metric_names("sum(rate(agentrun_restart_total[5m]))") <= set(scraped_series(OPERATOR_METRICS))


def test_every_panel_uses_the_datasource_variable() -> None:
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert "datasource" in variables


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        grid: dict[str, Any] = panel["gridPos"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, panel["title"]
        assert grid["x"] + grid["w"] <= 24
        cells |= area


def test_chart_ships_the_dashboard_json_unchanged() -> None:
    config_map = find(render_objects({"grafanaDashboard": {"enabled": True}}), "ConfigMap")
    assert json.loads(config_map["data"]["agentrun-operator.json"]) == DASHBOARD
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
