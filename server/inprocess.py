"""The whole server inside the current process, for offline jobs (no network, no port).

``inprocess_client`` starts the engine and the same FastAPI app that ``python -m server``
serves, and yields an ``openai.AsyncOpenAI`` client bound to it through an in-memory ASGI
transport. Requests therefore take exactly the served path (chat template, image
loading, ``decoding`` admission, strategy dispatch).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
import openai
from prometheus_client import CollectorRegistry

from decoding.engine import frontend
from server.app import __version__, customize, served_model_name
from server.cli import prepare
from server.metrics import Metrics

BASE = "http://inprocess"


@asynccontextmanager
async def inprocess_client(
    model: str, engine_args: Sequence[str] = ()
) -> AsyncIterator[openai.AsyncOpenAI]:
    args, enabled, _ = prepare(["--model", model, *engine_args])
    versions = {"version": __version__, **frontend.versions()}
    # A private registry: several in-process servers may live in one process.
    metrics = Metrics(served_model_name(args), enabled, versions, registry=CollectorRegistry())
    async with frontend.engine_client(args, metrics) as client:
        app = await frontend.build_openai_app(args, client)
        customize(
            app,
            enabled=enabled,
            metrics=metrics,
            versions=versions,
            max_body_bytes=args.max_request_bytes,
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE, timeout=None) as http:
            yield openai.AsyncOpenAI(
                base_url=BASE + "/v1", api_key="inprocess", http_client=http, max_retries=0
            )
