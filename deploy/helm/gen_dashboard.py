"""Write the Grafana dashboard shipped with the chart and the compose stack.

    python deploy/helm/gen_dashboard.py            # rewrite lucid/dashboards/lucid.json
    python deploy/helm/gen_dashboard.py --check    # exit 1 if the committed file is stale

The queries live here, as code, so the per-strategy panels stay uniform; the JSON is what
Grafana (sidecar ConfigMap or file provisioning) loads. Series are the server's own
``lucid:*`` families (label ``strategy``) next to vLLM's ``vllm:*`` engine series.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "lucid" / "dashboards" / "lucid.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
# Every lucid:* query filters on these template variables.
SEL = 'model_name=~"$model_name", strategy=~"$strategy"'
VSEL = 'model_name=~"$model_name"'
RATE = "$__rate_interval"


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def _panel(
    title: str,
    targets: list[tuple[str, str]],
    *,
    unit: str = "short",
    description: str = "",
    kind: str = "timeseries",
    stack: bool = False,
) -> dict[str, Any]:
    custom: dict[str, Any] = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    panel: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "right", "showLegend": True}},
        "targets": [
            _target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)
        ],
    }
    if kind == "timeseries":
        panel["fieldConfig"]["defaults"]["custom"] = custom
        panel["options"]["tooltip"] = {"mode": "multi", "sort": "desc"}
    return panel


def _quantiles(family: str, by: str = "strategy") -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le, {by}) "
            f"(rate({family}_bucket{{{SEL if family.startswith('lucid:') else VSEL}}}[{RATE}])))",
            f"p{int(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.95)
    ]


def _row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def panels() -> list[dict[str, Any]]:
    strategy_rows = [
        _row("Strategies"),
        _panel(
            "Request rate by strategy",
            [(f"sum by (strategy) (rate(lucid:requests_total{{{SEL}}}[{RATE}]))", "{{strategy}}")],
            unit="reqps",
            description="Finished requests per second, by decoding strategy.",
            stack=True,
        ),
        _panel(
            "Finish reasons",
            [
                (
                    f"sum by (strategy, finished_reason) "
                    f"(rate(lucid:requests_total{{{SEL}}}[{RATE}]))",
                    "{{strategy}} {{finished_reason}}",
                )
            ],
            unit="reqps",
            description="stop, length, abort or error, by strategy.",
        ),
        _panel(
            "End-to-end latency by strategy",
            _quantiles("lucid:e2e_request_latency_seconds"),
            unit="s",
            description="p50/p95 of request latency. opera runs about 30x the forward passes "
            "of plain decoding, contrastive strategies about 2x.",
        ),
        _panel(
            "Time to first token by strategy",
            _quantiles("lucid:time_to_first_token_seconds"),
            unit="s",
            description="Contrastive strategies prefill a second branch before the first token.",
        ),
        _panel(
            "Generated tokens per request",
            [
                (
                    f"sum by (strategy) "
                    f"(rate(lucid:request_generation_tokens_sum{{{SEL}}}[{RATE}]))"
                    f" / sum by (strategy) "
                    f"(rate(lucid:request_generation_tokens_count{{{SEL}}}[{RATE}]))",
                    "{{strategy}}",
                )
            ],
            description="Mean answer length; strategies change it (e.g. shorter captions).",
        ),
        _panel(
            "Extra forward tokens",
            [
                (
                    f"sum by (strategy, kind) "
                    f"(rate(lucid:extra_forward_tokens_total{{{SEL}}}[{RATE}]))",
                    "{{strategy}} {{kind}}",
                )
            ],
            unit="short",
            description="Tokens run through the model beyond each request's own sequence "
            "(contrast branches, candidates, rollbacks), per second: the cost driver.",
            stack=True,
        ),
        _panel(
            "Compute overhead per generated token",
            [
                (
                    f"sum by (strategy) (rate(lucid:extra_forward_tokens_total{{{SEL}}}[{RATE}]))"
                    f" / sum by (strategy) "
                    f"(rate(lucid:request_generation_tokens_sum{{{SEL}}}[{RATE}]))",
                    "{{strategy}}",
                )
            ],
            description="Extra forward tokens per generated token (0 for plain decoding).",
        ),
        _panel(
            "Rollbacks and uncoupled contrastive steps",
            [
                (
                    f"sum by (strategy) (rate(lucid:rollbacks_total{{{SEL}}}[{RATE}]))",
                    "rollbacks {{strategy}}",
                ),
                (
                    f"sum by (strategy) (rate(lucid:cd_uncoupled_steps_total{{{SEL}}}[{RATE}]))",
                    "uncoupled {{strategy}}",
                ),
            ],
            description="OPERA retrospection rollbacks, and contrastive steps whose two "
            "branches were not scheduled together.",
        ),
        _panel(
            "Errors by strategy and status",
            [
                (
                    f"sum by (strategy, status_code, error_type) "
                    f"(rate(lucid:request_errors_total{{{SEL}}}[{RATE}]))",
                    "{{strategy}} {{status_code}} {{error_type}}",
                )
            ],
            unit="reqps",
            description="HTTP errors; strategy 'invalid' is a rejected decoding object.",
        ),
        _panel(
            "5xx ratio by strategy",
            [
                (
                    f"sum by (strategy) "
                    f'(rate(lucid:request_errors_total{{{SEL}, status_code=~"5.."}}'
                    f"[{RATE}])) / (sum by (strategy) "
                    f"(rate(lucid:request_errors_total{{{SEL}}}[{RATE}])) + sum by (strategy) "
                    f"(rate(lucid:requests_total{{{SEL}}}[{RATE}])))",
                    "{{strategy}}",
                )
            ],
            unit="percentunit",
        ),
    ]
    engine_rows = [
        _row("Engine (vLLM)"),
        _panel(
            "Requests running and waiting",
            [
                (f"sum(vllm:num_requests_running{{{VSEL}}})", "running"),
                (f"sum(vllm:num_requests_waiting{{{VSEL}}})", "waiting"),
            ],
            description="Engine-level counts; contrastive and beam strategies add engine "
            "sequences per request, so these exceed the number of HTTP requests.",
        ),
        _panel(
            "KV cache usage",
            [(f"max by (pod) (vllm:kv_cache_usage_perc{{{VSEL}}})", "{{pod}}")],
            unit="percentunit",
        ),
        _panel(
            "Preemptions",
            [(f"sum(rate(vllm:num_preemptions_total{{{VSEL}}}[{RATE}]))", "preemptions")],
            unit="short",
        ),
        _panel(
            "Token throughput",
            [
                (f"sum(rate(vllm:prompt_tokens_total{{{VSEL}}}[{RATE}]))", "prompt"),
                (f"sum(rate(vllm:generation_tokens_total{{{VSEL}}}[{RATE}]))", "generation"),
            ],
            unit="short",
        ),
        _panel(
            "Engine latency (all strategies)",
            _quantiles("vllm:e2e_request_latency_seconds", by="model_name")
            + _quantiles("vllm:time_to_first_token_seconds", by="model_name"),
            unit="s",
        ),
        _panel(
            "Engine request outcomes",
            [
                (
                    f"sum by (finished_reason) "
                    f"(rate(vllm:request_success_total{{{VSEL}}}[{RATE}]))",
                    "{{finished_reason}}",
                )
            ],
            unit="reqps",
        ),
        _panel(
            "Build",
            [(f"max by (version, vllm_version, strategies) (lucid:build_info{{{VSEL}}})", "")],
            kind="table",
            description="Server, vLLM and strategies of the running pods.",
        ),
    ]
    out: list[dict[str, Any]] = []
    y = 0
    for group in (strategy_rows, engine_rows):
        x = 0
        for panel in group:
            if panel["type"] == "row":
                if x:
                    y += 8
                    x = 0
                panel["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}
                y += 1
            else:
                panel["gridPos"] = {"h": 8, "w": 12, "x": x, "y": y}
                x += 12
                if x >= 24:
                    x, y = 0, y + 8
            out.append(panel)
        if x:
            y += 8
    for i, panel in enumerate(out, start=1):
        panel["id"] = i
    return out


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": query,
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": "lucid-overview",
        "title": "lucid: strategies and engine",
        "description": "Per-strategy traffic, latency, cost and errors of the lucid server, "
        "with vLLM's engine queue and KV cache.",
        "tags": ["lucid", "vllm"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                },
                _variable("model_name", "Model", "label_values(lucid:build_info, model_name)"),
                _variable("strategy", "Strategy", "label_values(lucid:requests_total, strategy)"),
            ]
        },
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
