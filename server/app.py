"""Assemble the product's HTTP service on top of vLLM's OpenAI app."""

from __future__ import annotations

import argparse
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from decoding.strategies import get_strategy
from server import playground
from server.admission import Admission, Settings
from server.decoding_api import DecodingMiddleware
from server.metrics import Metrics

__version__ = "0.1.0"


def served_model_name(args: argparse.Namespace) -> str:
    names = getattr(args, "served_model_name", None)
    return names[0] if names else args.model


def customize(
    app: FastAPI,
    *,
    enabled: list[str],
    metrics: Metrics | None,
    versions: dict[str, str],
    max_body_bytes: int,
    execution: dict[str, Any] | None = None,
    admission: Admission | None = None,
    model_family: str | None = None,
    unavailable: dict[str, str] | None = None,
) -> FastAPI:
    """Add the ``decoding`` middleware and our routes to vLLM's app (in place)."""
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/version"]

    @app.get("/version")
    async def version() -> dict[str, Any]:
        limits = None
        if admission is not None:
            st = admission.settings
            limits = {
                "budget": st.budget,
                "max_concurrency": st.caps,
                "queue_timeout_s": st.max_wait,
                "fanout_limit": st.fanout,
            }
        return {
            "version": __version__,
            **versions,
            "strategies": enabled,
            "model_family": model_family,
            "unavailable": unavailable or {},
            "execution": execution,
            "admission": limits,
        }

    @app.get("/v1/decoding/strategies")
    async def strategies() -> JSONResponse:
        """The strategies this deployment accepts, with their parameter schemas."""
        data = []
        for name in enabled:
            strat = get_strategy(name)
            data.append(
                {
                    "strategy": name,
                    **strat.describe(),
                    "description": (strat.__doc__ or "").strip().split("\n\n")[0],
                    # Undefined on the served model family: requests get a 400 with this.
                    "available": name not in (unavailable or {}),
                    "unavailable_reason": (unavailable or {}).get(name),
                }
            )
        return JSONResponse({"object": "list", "data": data})

    playground.install(app)

    # vLLM's app has already built its middleware stack; drop it so Starlette rebuilds it
    # (with ours outermost) on the first request.
    app.middleware_stack = None
    app.add_middleware(
        DecodingMiddleware,
        enabled=enabled,
        metrics=metrics,
        max_body_bytes=max_body_bytes,
        admission=admission,
        unavailable=unavailable,
    )
    return app


def add_admission_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decoding admission control")
    group.add_argument(
        "--decoding-budget",
        type=float,
        default=None,
        help="Cost units in flight at once (a request costs its strategy's declared cost "
        "times its answers; plain decoding = 1). Costlier requests wait, then get 429. "
        "Default: the engine's max_num_seqs; 0 turns admission control off.",
    )
    group.add_argument(
        "--decoding-max-concurrency",
        default="",
        help="Per-strategy caps on concurrently running requests, e.g. 'opera=1,vcd=8' "
        f"(default: {format_caps(DEFAULT_CAPS)}; 'none' = no caps).",
    )
    group.add_argument(
        "--decoding-fanout-limit",
        type=int,
        default=None,
        help="Engine requests in flight at once for strategies that fan out into many "
        "(OPERA's look-aheads), shared by all their requests, while requests of other "
        "strategies run. Default: max_num_seqs / 32 (at least 4); 0 = unbounded.",
    )
    group.add_argument(
        "--decoding-queue-timeout",
        type=float,
        default=30.0,
        help="Seconds a request may wait for the decoding budget before its 429.",
    )


#: Caps applied unless --decoding-max-concurrency says otherwise.
DEFAULT_CAPS: dict[str, int] = {}


def format_caps(caps: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in caps.items()) or "none"


def parse_caps(value: str, enabled: list[str]) -> dict[str, int]:
    if not value.strip():
        return dict(DEFAULT_CAPS)
    if value.strip() == "none":
        return {}
    caps = {}
    for item in value.split(","):
        name, sep, num = item.strip().partition("=")
        if not sep or not num.strip().isdigit() or int(num) < 1:
            raise SystemExit(
                f"--decoding-max-concurrency: expected STRATEGY=N (N >= 1), got {item!r}"
            )
        if name not in enabled:
            raise SystemExit(
                f"--decoding-max-concurrency: strategy {name!r} is not enabled "
                f"(enabled: {', '.join(enabled)})"
            )
        caps[name] = int(num)
    return caps


def admission_settings(
    args: argparse.Namespace, enabled: list[str], max_num_seqs: int
) -> Settings | None:
    budget = args.decoding_budget
    if budget is None:
        budget = float(max_num_seqs)
    if budget <= 0:
        return None
    caps = parse_caps(args.decoding_max_concurrency, enabled)
    fanout = args.decoding_fanout_limit
    if fanout is None:
        fanout = max(4, max_num_seqs // 32)
    return Settings(
        budget=budget,
        caps=caps,
        max_wait=args.decoding_queue_timeout,
        fanout=fanout or None,
    )


class Service:
    """The product's pieces around one engine: versions, metrics, app customisation."""

    def __init__(self, args: argparse.Namespace, enabled: list[str], registry=None) -> None:  # noqa: ANN001
        from decoding.engine import frontend

        self.args = args
        self.enabled = enabled
        self.versions = {"version": __version__, **frontend.versions()}
        #: How steps run (compiled or eager, CUDA graphs), reported by ``/version``.
        self.execution = frontend.execution_summary(args, enabled)
        self.model_family: str | None = getattr(args, "model_family", None)
        self.unavailable = frontend.unavailable_strategies(args, enabled)
        extra = {} if registry is None else {"registry": registry}
        self.metrics = Metrics(served_model_name(args), enabled, self.versions, **extra)

    def install(self, app: FastAPI, client: Any = None) -> FastAPI:
        admission = None
        if client is not None and hasattr(self.args, "decoding_budget"):
            from decoding.engine.limits import max_num_seqs

            settings = admission_settings(self.args, self.enabled, max_num_seqs(client))
            if settings is not None:
                from decoding.engine import pacing

                admission = Admission(settings, self.metrics.admission_event)
                adm = admission
                pacing.set_limit(
                    settings.fanout,
                    lambda: adm.others_running(pacing.paced()),
                    idle_limit=max_num_seqs(client),
                )
        return customize(
            app,
            enabled=self.enabled,
            metrics=self.metrics,
            versions=self.versions,
            max_body_bytes=self.args.max_request_bytes,
            execution=self.execution,
            admission=admission,
            model_family=self.model_family,
            unavailable=self.unavailable,
        )
