"""Dashboard, alerts, monitors and autoscaler triggers refer only to series the server exports."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

ROOT = Path(__file__).resolve().parents[1]


from tests.helm_scripts import load as _load  # noqa: E402

cc = _load("chartcheck")
gen_dashboard = _load("gen_dashboard")
FULL = cc.load_values(cc.CHART / "ci" / "full-keda-values.yaml")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(cc.DASHBOARD.read_text())


@pytest.fixture(scope="module")
def full_objects() -> list[dict[str, Any]]:
    return cc.render(FULL)


@pytest.fixture(scope="module")
def referenced() -> dict[str, set[str]]:
    return cc.referenced_metrics()


# Dashboard ------------------------------------------------------------------------------------
def test_dashboard_file_is_generated(dashboard: dict[str, Any]) -> None:
    assert gen_dashboard.main(["--check"]) == 0
    assert json.loads(gen_dashboard.render()) == dashboard


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"model_name", "strategy"} <= set(variables)
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24


def test_every_dashboard_query_parses(dashboard: dict[str, Any]) -> None:
    exprs = cc.dashboard_exprs(dashboard)
    assert len(exprs) >= 15
    for expr in exprs:
        assert cc.promql_selectors(expr), expr


def test_dashboard_covers_strategies_and_engine(dashboard: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in dashboard["panels"] if p["type"] != "row"}

    def metrics(title: str) -> set[str]:
        return set().union(*(cc.promql_metrics(t["expr"]) for t in by_title[title]["targets"]))

    assert "lucid:requests_total" in metrics("Request rate by strategy")
    assert "lucid:e2e_request_latency_seconds_bucket" in metrics("End-to-end latency by strategy")
    assert "lucid:time_to_first_token_seconds_bucket" in metrics("Time to first token by strategy")
    assert "lucid:extra_forward_tokens_total" in metrics("Extra forward tokens")
    assert "lucid:request_errors_total" in metrics("Errors by strategy and status")
    assert "vllm:kv_cache_usage_perc" in metrics("KV cache usage")
    assert {"vllm:num_requests_waiting", "vllm:num_requests_running"} <= metrics(
        "Requests running and waiting"
    )
    for title in (
        "Request rate by strategy",
        "End-to-end latency by strategy",
        "Extra forward tokens",
    ):
        for target in by_title[title]["targets"]:
            assert "by (" in target["expr"] and "strategy" in target["expr"]
            for name, matchers in cc.promql_selectors(target["expr"]):
                assert {"model_name", "strategy"} <= set(matchers), name


# Exported names: static contract and a live scrape ---------------------------------------------
def test_contract_list_matches_the_server_metrics_module() -> None:
    from server.metrics import Metrics

    registry = CollectorRegistry()
    Metrics("m", ["none", "vcd"], {"version": "0"}, registry=registry)
    exposed = {
        line.split()[2]: line.split()[3]
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("# TYPE ") and line.split()[2].startswith("lucid:")
    }
    assert exposed == cc.LUCID_FAMILIES


def test_vllm_names_come_from_the_installed_vllm() -> None:
    exported = cc.static_exported()
    for name in (
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:generation_tokens_total",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:request_success_total",
    ):
        assert name in exported
    assert "vllm:made_up_metric" not in exported


@pytest.mark.parametrize("source", ["dashboard", "prometheusrule", "scaledobject"])
def test_references_are_exported_static(referenced: dict[str, set[str]], source: str) -> None:
    assert referenced[source]
    assert cc.unknown_metrics(referenced[source], cc.static_exported()) == set()


def test_unknown_metric_is_reported() -> None:
    exported = cc.static_exported()
    assert cc.unknown_metrics({"lucid:requests", "up"}, exported) == {"lucid:requests"}


def test_exposition_parsing_keeps_families_without_samples() -> None:
    text = (
        "# HELP lucid:requests_total x\n# TYPE lucid:requests_total counter\n"
        "# HELP lucid:e2e_request_latency_seconds x\n"
        "# TYPE lucid:e2e_request_latency_seconds histogram\n"
        'vllm:num_requests_waiting{model_name="m",engine="0"} 0.0\n'
    )
    assert cc.families_from_exposition(text) == {
        "lucid:requests_total",
        "lucid:e2e_request_latency_seconds_bucket",
        "lucid:e2e_request_latency_seconds_sum",
        "lucid:e2e_request_latency_seconds_count",
        "vllm:num_requests_waiting",
    }


@pytest.mark.server
def test_references_are_exported_by_the_running_server(
    request: pytest.FixtureRequest, referenced: dict[str, set[str]]
) -> None:
    try:
        served = request.getfixturevalue("served")
    except pytest.FixtureLookupError:
        pytest.skip("no `served` fixture in tests/conftest.py")
    with urllib.request.urlopen(f"{served.url}/metrics", timeout=30) as response:
        exported = cc.families_from_exposition(response.read().decode())
    assert set(cc.LUCID_FAMILIES) <= {n.removesuffix("_bucket") for n in exported} | exported
    for source, names in referenced.items():
        assert cc.unknown_metrics(names, exported) == set(), source


# PrometheusRule, monitors, KEDA ---------------------------------------------------------------
def test_alerts(full_objects: list[dict[str, Any]]) -> None:
    rule = cc.one(full_objects, "PrometheusRule")
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"LucidEngineDown", "LucidStrategyErrorRatioHigh", "LucidQueueGrowing"} <= set(rules)
    assert "by (strategy)" in rules["LucidStrategyErrorRatioHigh"]["expr"]
    assert (
        "{{ $labels.strategy }}" in rules["LucidStrategyErrorRatioHigh"]["annotations"]["summary"]
    )
    assert "vllm:num_requests_waiting" in cc.promql_metrics(rules["LucidQueueGrowing"]["expr"])
    for alert in rules.values():
        for name, matchers in cc.promql_selectors(alert["expr"]):
            assert matchers.get("namespace") == cc.NAMESPACE, (alert["alert"], name)
    assert cc.check_crds(full_objects) == []


def test_rule_thresholds_come_from_values() -> None:
    values = copy.deepcopy(FULL)
    values["metrics"]["prometheusRule"].update(errorRatio=0.2, queueLength=7)
    rule = cc.one(cc.render(values), "PrometheusRule")
    exprs = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert exprs["LucidStrategyErrorRatioHigh"].rstrip().endswith("> 0.2")
    assert "> 7" in exprs["LucidQueueGrowing"]


def test_service_monitor_matches_service(full_objects: list[dict[str, Any]]) -> None:
    monitor = cc.one(full_objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "http"


def test_pod_monitor_matches_pods() -> None:
    objects = cc.render(cc.load_values(cc.CHART / "ci" / "full-hpa-values.yaml"))
    assert cc.one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert cc.check_crds(objects) == []


@pytest.mark.parametrize(
    ("kind", "mutate", "needle"),
    [
        (
            "ServiceMonitor",
            lambda o: o["spec"]["endpoints"][0].update(port="metrics"),
            "not on the Service",
        ),
        (
            "ServiceMonitor",
            lambda o: o["spec"]["selector"]["matchLabels"].update(x="y"),
            "matches no Service",
        ),
        (
            "PrometheusRule",
            lambda o: o["spec"]["groups"][0]["rules"][0].update(expr="sum(("),
            "does not parse",
        ),
        (
            "PrometheusRule",
            lambda o: o["spec"]["groups"][0]["rules"][0]["labels"].clear(),
            "severity",
        ),
        (
            "ScaledObject",
            lambda o: o["spec"]["scaleTargetRef"].update(name="other"),
            "scaleTargetRef",
        ),
        ("ScaledObject", lambda o: o["spec"].update(minReplicaCount=9), "minReplicaCount"),
        ("ScaledObject", lambda o: o.update(apiVersion="keda.sh/v1"), "unexpected apiVersion"),
    ],
)
def test_crd_checks_can_fail(
    full_objects: list[dict[str, Any]], kind: str, mutate: Any, needle: str
) -> None:
    objects = copy.deepcopy(full_objects)
    mutate(cc.one(objects, kind))
    assert any(needle in p for p in cc.check_crds(objects))


def test_pod_monitor_check_can_fail() -> None:
    objects = cc.render(cc.load_values(cc.CHART / "ci" / "full-hpa-values.yaml"))
    cc.one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] = "metrics"
    assert any("not on the pod" in p for p in cc.check_crds(objects))


# Compose stack --------------------------------------------------------------------------------
def test_compose_prometheus_scrapes_the_server() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "docker" / "compose.yaml").read_text())
    prometheus = yaml.safe_load((ROOT / "deploy" / "docker" / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "lucid")
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["lucid:8000"]
    assert "8000:8000" in compose["services"]["lucid"]["ports"]


def test_chartcheck_cli_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "helm" / "chartcheck.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout and "UNKNOWN" not in result.stdout
