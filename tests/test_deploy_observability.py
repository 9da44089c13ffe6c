"""Prometheus config, alert rules and the Grafana dashboard: valid for Prometheus' own checker, and built
only on metric names the server really exports (read from service.metrics' registry, not a copy).

promtool comes from Debian's `prometheus` package (scripts/setup.sh --dev installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics_core import Metric

from service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "docker" / "prometheus"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "halo.json"
DATASOURCES = ROOT / "docker" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
ADAPTER_RULES = ROOT / "k8s" / "prometheus-adapter" / "configmap.yaml"
HPA = ROOT / "k8s" / "base" / "hpa.yaml"
# Series Prometheus itself attaches to every scrape target.
SCRAPE_SERIES = {"up"}
# Sample-name suffixes each metric type exposes (the `_created` timestamps are never queried).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
            "summary": ("", "_sum", "_count"), "info": ("_info",)}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                   "group_left", "group_right", "inf", "nan"}


def _series_names(family: Metric) -> set[str]:
    """The sample names one registry family produces once it has children."""
    return {family.name + suffix for suffix in SUFFIXES[family.type]}


def exported_series() -> set[str]:
    """Every series name the server's registry can expose."""
    return {name for family in Metrics().registry.collect() for name in _series_names(family)}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, labels, keywords or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)\b(\s*\()?", text):
        word, is_call = match.group(1), match.group(2)
        if not is_call and word.lower() not in PROMQL_KEYWORDS:
            names.add(word)
    return names


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing: run scripts/setup.sh --dev (Debian package `prometheus`)")
    return promtool


def _alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def _dashboard_exprs() -> dict[str, str]:
    """'panel title / refId' -> PromQL, with Grafana's $__rate_interval set to a plain duration."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {f"{panel['title']} / {target['refId']}": target["expr"].replace("$__rate_interval", "1m")
            for panel in panels for target in panel["targets"]}


def _adapter_exprs() -> dict[str, str]:
    """prometheus-adapter rules with their Go templates filled in as the adapter fills them for a pod."""
    config = yaml.safe_load(yaml.safe_load(ADAPTER_RULES.read_text())["data"]["config.yaml"])
    fill = {"<<.Series>>": "halo_queue_depth", "<<.LabelMatchers>>": 'namespace="default",pod="halo-0"',
            "<<.GroupBy>>": "pod"}
    exprs = {}
    for i, rule in enumerate(config["rules"]):
        query = rule["metricsQuery"]
        for template, value in fill.items():
            query = query.replace(template, value)
        exprs[f"rule {i} metricsQuery"] = query
        exprs[f"rule {i} seriesQuery"] = rule["seriesQuery"]
    return exprs


def test_promql_metric_names_extraction() -> None:
    """The extractor finds selectors and ignores functions, labels, keywords and Grafana variables."""
    expr = ('histogram_quantile(0.99, sum by (le, endpoint) (rate(halo_a_bucket{status=~"5..|x"}[5m])))'
            ' / on (instance) group_left sum without (pod) (halo_b_total offset 5m) > bool 2 or up == 0'
            ' and max(process_resident_memory_bytes) unless vector(1)')
    assert promql_metric_names(expr) == {"halo_a_bucket", "halo_b_total", "up", "process_resident_memory_bytes"}


def test_exported_series_come_from_the_service_registry() -> None:
    series = exported_series()
    assert {"halo_requests_total", "halo_request_duration_seconds_bucket", "halo_queue_depth",
            "process_resident_memory_bytes"} <= series
    assert "halo_requests" not in series, "counters are exposed with _total"


@pytest.mark.parametrize("source", ["alerts", "dashboard", "adapter"])
def test_queries_use_only_exported_metric_names(source: str) -> None:
    exprs = {"alerts": _alert_exprs, "dashboard": _dashboard_exprs, "adapter": _adapter_exprs}[source]()
    assert exprs
    allowed = exported_series() | SCRAPE_SERIES
    for where, expr in exprs.items():
        names = promql_metric_names(expr)
        assert names, f"{where}: selects no metric"
        assert names <= allowed, f"{where}: unknown metric(s) {sorted(names - allowed)}"


def test_dashboard_shows_every_halo_metric() -> None:
    used = set().union(*(promql_metric_names(expr) for expr in _dashboard_exprs().values()))
    for family in Metrics().registry.collect():
        if family.name.startswith("halo_"):
            assert used & _series_names(family), f"{family.name} is on no dashboard panel"


def test_hpa_metric_is_a_per_pod_series_the_server_exports() -> None:
    (pods_metric,) = [m for m in yaml.safe_load(HPA.read_text())["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods_metric["pods"]["metric"]["name"] in {family.name for family in Metrics().registry.collect()
                                                     if family.type == "gauge"}


def test_promtool_check_config() -> None:
    result = subprocess.run([_promtool(), "check", "config", "prometheus.yml"], cwd=PROMETHEUS_DIR,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_promtool_check_rules() -> None:
    result = subprocess.run([_promtool(), "check", "rules", "alerts.yml"], cwd=PROMETHEUS_DIR,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_exprs())} rules found" in result.stdout


def test_alert_rules_unit_tests() -> None:
    """promtool replays synthetic series through alerts.yml and compares the alerts that fire."""
    result = subprocess.run([_promtool(), "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS_DIR,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {test["alertname"] for case in yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
              for test in case["alert_rule_test"]}
    assert tested == set(_alert_exprs()), "every alert has a promtool unit test"


@pytest.mark.parametrize("source", ["dashboard", "adapter"])
def test_queries_parse_as_promql(source: str, tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule), so a typo in a panel or the adapter fails here."""
    exprs = {"dashboard": _dashboard_exprs, "adapter": _adapter_exprs}[source]()
    rules = [{"record": f"check:query_{i}", "expr": expr} for i, expr in enumerate(exprs.values())]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": source, "rules": rules}]}))
    result = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_query(tmp_path: Path) -> None:
    """Control: the parse check above does fail on invalid PromQL."""
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "check:broken", "expr": "sum by (le (rate(halo_batch_size_bucket[1m]))"}]}]}))
    result = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_dashboard_layout_and_datasource() -> None:
    """Panels use the provisioned datasource, have unique ids and tile the 24-column grid without overlap."""
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        for ref in (panel["datasource"], *(target["datasource"] for target in panel["targets"])):
            assert ref == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        columns, rows = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        area = {(x, y) for x in columns for y in rows}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
