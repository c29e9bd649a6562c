"""Offline checks of the lucid chart: render, lint, validate every object, check CRD objects.

    python deploy/helm/chartcheck.py            # every ci/*-values.yaml; exit 1 on a problem

Everything here runs without a cluster or network: Helm through the Helm SDK
(``helm-python-sdk``), built-in kinds against the Kubernetes OpenAPI schemas bundled with
``kubernetes-validate`` (strict: unknown fields fail) for several Kubernetes versions, and
the CRD objects those schemas do not cover (ServiceMonitor, PodMonitor, PrometheusRule,
ScaledObject) by structure: apiVersion and kind, selectors that match the objects they
target, port names that exist, and PromQL that parses (``promql-parser``) and names only
series the server exports. The tests in ``tests/test_deploy_*.py`` use the same functions.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import promql_parser
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

HERE = Path(__file__).resolve().parent
CHART = HERE / "lucid"
DASHBOARD = CHART / "dashboards" / "lucid.json"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# The chart's kubeVersion floor, a middle release, and the newest schema set bundled.
KUBE_VERSIONS = ("1.29.0", "1.33.0", "1.37.0")
RELEASE = "demo"
NAMESPACE = "ml"

# Families the server exports (server/metrics.py), as they appear in the exposition: counters
# with _total, histograms as their base name. The test against a live /metrics scrape is the
# authority; this list keeps the static check meaningful where no server runs.
LUCID_FAMILIES = {
    "lucid:requests_total": "counter",
    "lucid:request_errors_total": "counter",
    "lucid:e2e_request_latency_seconds": "histogram",
    "lucid:time_to_first_token_seconds": "histogram",
    "lucid:request_generation_tokens": "histogram",
    "lucid:extra_forward_tokens_total": "counter",
    "lucid:rollbacks_total": "counter",
    "lucid:cd_uncoupled_steps_total": "counter",
    "lucid:admission_queued_total": "counter",
    "lucid:admission_rejected_total": "counter",
    "lucid:admission_waiting": "gauge",
    "lucid:admission_running": "gauge",
    "lucid:build_info": "gauge",
}
# Series that Prometheus itself attaches to every target.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}


# Rendering -----------------------------------------------------------------------------------
def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def render_files(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text (raises helm errors on schema or template failure)."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders for ``values``."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_files(values).items()):
        if path.endswith(".txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def notes(values: dict[str, Any] | None = None) -> str:
    return next(t for p, t in render_files(values).items() if p.endswith("NOTES.txt"))


def lint(
    values: dict[str, Any] | None = None, versions: Iterable[str] = KUBE_VERSIONS
) -> list[str]:
    """helm lint --strict findings of severity warning or error, for each Kubernetes version."""
    found: list[str] = []
    for version in versions:
        report = helm.lint(
            CHART, values or {}, strict=True, namespace=NAMESPACE, kube_version=f"v{version}"
        )
        for m in report["messages"]:
            problem = f"{m['path']}: {m['error']}"
            if m["severity"] >= 2 and problem not in found:
                found.append(problem)
    return found


def find(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = find(objects, kind)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}, got {len(found)}")
    return found[0]


# Kubernetes schemas ---------------------------------------------------------------------------
def validate_builtin(obj: dict[str, Any], versions: Iterable[str] = KUBE_VERSIONS) -> bool:
    """Strict validation against each version's schema; False if the kind has none (a CRD)."""
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except SchemaNotFoundError:
            return False
    return True


# PromQL ---------------------------------------------------------------------------------------
_GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}


def promql_selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, equality matchers) of every vector selector in ``expr``."""
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    expr = re.sub(r"\$\{?(\w+)\}?", r"\1", expr)
    found: list[tuple[str, dict[str, str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = {m.name: m.value for m in node.matchers.matchers}
            name = node.name or matchers.get("__name__", "")
            found.append((name, matchers))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def promql_metrics(expr: str) -> set[str]:
    return {name for name, _ in promql_selectors(expr)}


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs: list[str] = []
    for panel in dashboard.get("panels", []):
        for sub in [panel, *panel.get("panels", [])]:
            exprs.extend(t["expr"] for t in sub.get("targets", []) if t.get("expr"))
    return exprs


def dashboard_variable_queries(dashboard: dict[str, Any]) -> list[str]:
    """The series named in ``label_values(series, label)`` template variables."""
    out = []
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", text.strip())
        if match:
            out.append(match.group(1))
    return out


def referenced_metrics() -> dict[str, set[str]]:
    """Metric names referenced by the dashboard, the alerts and the KEDA trigger."""
    dashboard = json.loads(DASHBOARD.read_text())
    refs = {"dashboard": set()}
    for expr in dashboard_exprs(dashboard) + dashboard_variable_queries(dashboard):
        refs["dashboard"] |= promql_metrics(expr)
    objects = render(load_values(CHART / "ci" / "full-keda-values.yaml"))
    refs["prometheusrule"] = set()
    for group in one(objects, "PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            refs["prometheusrule"] |= promql_metrics(rule["expr"])
    refs["scaledobject"] = set()
    for trigger in one(objects, "ScaledObject")["spec"]["triggers"]:
        refs["scaledobject"] |= promql_metrics(trigger["metadata"]["query"])
    return refs


def families_from_exposition(text: str) -> set[str]:
    """Series names a Prometheus text exposition offers, including families with no samples
    yet (they show only # HELP / # TYPE lines)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            names |= expand_family(name, kind.strip())
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def expand_family(name: str, kind: str) -> set[str]:
    if kind == "histogram":
        return {name + "_bucket", name + "_sum", name + "_count"}
    if kind == "summary":
        return {name, name + "_sum", name + "_count"}
    return {name}


def static_exported() -> set[str]:
    """What the server exports by contract: the lucid families above, plus every vLLM family
    declared in the installed vLLM's metrics loggers (counters gain _total on exposition)."""
    names: set[str] = set()
    for name, kind in LUCID_FAMILIES.items():
        names |= expand_family(name, kind)
    loggers = _vllm_loggers_source()
    for base in set(re.findall(r'"(vllm:[a-z0-9_]+)"', loggers)):
        names |= {base, base + "_total", base + "_bucket", base + "_sum", base + "_count"}
    return names


def _vllm_loggers_source() -> str:
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("vllm is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    return (root / "v1" / "metrics" / "loggers.py").read_text()


def unknown_metrics(referenced: set[str], exported: set[str]) -> set[str]:
    return {m for m in referenced if m not in exported and m not in SCRAPE_SERIES}


# CRD structure --------------------------------------------------------------------------------
def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    match = selector.get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def check_crds(objects: list[dict[str, Any]]) -> list[str]:
    """Structural problems of the CRD objects the Kubernetes schemas do not cover."""
    problems: list[str] = []
    services = find(objects, "Service")
    deployments = find(objects, "Deployment")
    for obj in objects:
        key = (obj.get("apiVersion"), obj.get("kind"))
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("kind") in {k for _, k in CRD_KINDS} and key not in CRD_KINDS:
            problems.append(f"{name}: unexpected apiVersion {obj.get('apiVersion')}")
            continue
        spec = obj.get("spec", {})
        if key == ("monitoring.coreos.com/v1", "ServiceMonitor"):
            targets = [
                s for s in services if _selects(spec.get("selector", {}), s["metadata"]["labels"])
            ]
            if not targets:
                problems.append(f"{name}: selector matches no Service")
            namespaces = spec.get("namespaceSelector", {}).get("matchNames", [])
            if namespaces and obj["metadata"].get("namespace") not in namespaces:
                problems.append(f"{name}: namespaceSelector leaves out its own namespace")
            ports = {p.get("name") for s in targets for p in s["spec"]["ports"]}
            for ep in spec.get("endpoints", []):
                if ep.get("port") not in ports:
                    problems.append(f"{name}: endpoint port {ep.get('port')!r} not on the Service")
                if ep.get("path", "/metrics") != "/metrics":
                    problems.append(f"{name}: endpoint path {ep.get('path')!r} is not /metrics")
            if not spec.get("endpoints"):
                problems.append(f"{name}: no endpoints")
        elif key == ("monitoring.coreos.com/v1", "PodMonitor"):
            pods = [
                d["spec"]["template"]
                for d in deployments
                if _selects(spec.get("selector", {}), d["spec"]["template"]["metadata"]["labels"])
            ]
            if not pods:
                problems.append(f"{name}: selector matches no Deployment's pods")
            ports = {
                p.get("name")
                for t in pods
                for c in t["spec"]["containers"]
                for p in c.get("ports", [])
            }
            for ep in spec.get("podMetricsEndpoints", []):
                if ep.get("port") not in ports:
                    problems.append(f"{name}: port {ep.get('port')!r} not on the pod's containers")
            if not spec.get("podMetricsEndpoints"):
                problems.append(f"{name}: no podMetricsEndpoints")
        elif key == ("monitoring.coreos.com/v1", "PrometheusRule"):
            groups = spec.get("groups") or []
            if not groups:
                problems.append(f"{name}: no rule groups")
            for group in groups:
                if not group.get("name") or not group.get("rules"):
                    problems.append(f"{name}: group without name or rules")
                for rule in group.get("rules", []):
                    label = rule.get("alert") or rule.get("record")
                    if not label or ("alert" in rule) == ("record" in rule):
                        problems.append(f"{name}: a rule needs exactly one of alert/record")
                    try:
                        promql_parser.parse(rule.get("expr", ""))
                    except ValueError as exc:
                        problems.append(f"{name}: {label}: PromQL does not parse: {exc}")
                    if "alert" in rule:
                        if not re.fullmatch(r"\d+[smh]", str(rule.get("for", "0s"))):
                            problems.append(f"{name}: {label}: bad 'for'")
                        if "severity" not in rule.get("labels", {}):
                            problems.append(f"{name}: {label}: no severity label")
                        if "summary" not in rule.get("annotations", {}):
                            problems.append(f"{name}: {label}: no summary annotation")
        elif key == ("keda.sh/v1alpha1", "ScaledObject"):
            ref = spec.get("scaleTargetRef", {})
            if ref.get("name") not in {d["metadata"]["name"] for d in deployments}:
                problems.append(f"{name}: scaleTargetRef names no rendered Deployment")
            if int(spec.get("minReplicaCount", 0)) > int(spec.get("maxReplicaCount", 1)):
                problems.append(f"{name}: minReplicaCount > maxReplicaCount")
            if not spec.get("triggers"):
                problems.append(f"{name}: no triggers")
            for trigger in spec.get("triggers", []):
                meta = trigger.get("metadata", {})
                if trigger.get("type") != "prometheus":
                    continue
                for field in ("serverAddress", "query", "threshold"):
                    if not isinstance(meta.get(field), str) or not meta.get(field):
                        problems.append(f"{name}: prometheus trigger needs string {field}")
                try:
                    promql_parser.parse(meta.get("query", ""))
                except ValueError as exc:
                    problems.append(f"{name}: trigger PromQL does not parse: {exc}")
    return problems


def check_all(values: dict[str, Any], versions: Iterable[str] = KUBE_VERSIONS) -> list[str]:
    """Everything for one values set: lint, strict schemas of built-in kinds, CRD structure."""
    problems = lint(values, versions)
    objects = render(values)
    for obj in objects:
        try:
            builtin = validate_builtin(obj, versions)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            where = f"{obj['kind']}/{obj['metadata']['name']} (k8s {exc.version})"
            problems.append(f"{where}: {path}: {exc.message}")
            continue
        if not builtin and (obj.get("apiVersion"), obj.get("kind")) not in CRD_KINDS:
            problems.append(
                f"{obj['kind']} ({obj.get('apiVersion')}): no schema and no structural check"
            )
    problems += check_crds(objects)
    return problems


def main() -> int:
    failed = False
    for path in CI_VALUES:
        problems = check_all(load_values(path))
        status = "ok" if not problems else "FAILED"
        print(f"{path.relative_to(HERE.parent.parent)}: {status}")
        for problem in problems:
            print(f"  {problem}")
        failed |= bool(problems)
    exported = static_exported()
    for source, names in referenced_metrics().items():
        unknown = unknown_metrics(names, exported)
        verdict = "ok" if not unknown else f"UNKNOWN {sorted(unknown)}"
        print(f"metrics referenced by the {source}: {verdict}")
        failed |= bool(unknown)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
