"""Assemble the product's HTTP service on top of vLLM's OpenAI app."""

from __future__ import annotations

import argparse
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from decoding.strategies import get_strategy
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
) -> FastAPI:
    """Add the ``decoding`` middleware and our routes to vLLM's app (in place)."""
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/version"]

    @app.get("/version")
    async def version() -> dict[str, Any]:
        return {"version": __version__, **versions, "strategies": enabled, "execution": execution}

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
                }
            )
        return JSONResponse({"object": "list", "data": data})

    # vLLM's app has already built its middleware stack; drop it so Starlette rebuilds it
    # (with ours outermost) on the first request.
    app.middleware_stack = None
    app.add_middleware(
        DecodingMiddleware, enabled=enabled, metrics=metrics, max_body_bytes=max_body_bytes
    )
    return app


class Service:
    """The product's pieces around one engine: versions, metrics, app customisation."""

    def __init__(self, args: argparse.Namespace, enabled: list[str], registry=None) -> None:  # noqa: ANN001
        from decoding.engine import frontend

        self.args = args
        self.enabled = enabled
        self.versions = {"version": __version__, **frontend.versions()}
        #: How steps run (compiled or eager, CUDA graphs), reported by ``/version``.
        self.execution = frontend.execution_summary(args, enabled)
        extra = {} if registry is None else {"registry": registry}
        self.metrics = Metrics(served_model_name(args), enabled, self.versions, **extra)

    def install(self, app: FastAPI) -> FastAPI:
        return customize(
            app,
            enabled=self.enabled,
            metrics=self.metrics,
            versions=self.versions,
            max_body_bytes=self.args.max_request_bytes,
            execution=self.execution,
        )
