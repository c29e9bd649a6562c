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
from server.app import Service
from server.cli import prepare

BASE = "http://inprocess"


@asynccontextmanager
async def inprocess_client(
    model: str, engine_args: Sequence[str] = ()
) -> AsyncIterator[openai.AsyncOpenAI]:
    args, enabled, _ = prepare(["--model", model, *engine_args])
    # A private registry: several in-process servers may live in one process.
    service = Service(args, enabled, registry=CollectorRegistry())
    async with frontend.engine_client(args, service.metrics) as client:
        app = service.install(await frontend.build_openai_app(args, client))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE, timeout=None) as http:
            yield openai.AsyncOpenAI(
                base_url=BASE + "/v1", api_key="inprocess", http_client=http, max_retries=0
            )
