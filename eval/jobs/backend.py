"""How a job talks to a model: one OpenAI-compatible client, made over HTTP or in-process.

Both modes share everything except how the ``openai.AsyncOpenAI`` client is made, so a
score from ``--url`` and one from ``--inprocess`` mean the same thing. The decoding
strategy travels as ``extra_body={"decoding": {...}}`` and the server echoes what it
applied in the response's top-level ``decoding`` field, which the job records.
"""

from __future__ import annotations

import base64
import mimetypes
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

#: Sampling keys the openai SDK takes as arguments; any other key goes in ``extra_body``
#: (vLLM reads e.g. ``top_k`` and ``repetition_penalty`` from there).
OPENAI_SAMPLING_KEYS = frozenset(
    {"temperature", "top_p", "max_tokens", "seed", "stop", "frequency_penalty", "presence_penalty"}
)


@lru_cache(maxsize=32)
def image_data_url(path: str) -> str:
    """The image file as a ``data:`` URL (cached: POPE asks several questions per image)."""
    mime = mimetypes.guess_type(path)[0] or "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


@dataclass(frozen=True)
class Generation:
    text: str
    decoding: dict[str, Any] | None  # the server's echo of the applied strategy
    finish_reason: str | None
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass
class Backend:
    """Turns (image, prompt, decoding, sampling) into answer text via a chat client."""

    client: Any  # openai.AsyncOpenAI
    model: str
    mode: str  # "url" or "inprocess"
    location: str  # the URL, or the model path for in-process runs

    async def generate(
        self, image: Path, prompt: str, decoding: dict[str, Any], sampling: dict[str, Any]
    ) -> Generation:
        kwargs = {k: v for k, v in sampling.items() if k in OPENAI_SAMPLING_KEYS}
        extra = {k: v for k, v in sampling.items() if k not in OPENAI_SAMPLING_KEYS}
        content = [
            {"type": "image_url", "image_url": {"url": image_data_url(str(image))}},
            {"type": "text", "text": prompt},
        ]
        resp = await self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": content}],
            extra_body={**extra, "decoding": decoding},
            **kwargs,
        )
        choice = resp.choices[0]
        usage = resp.usage.model_dump() if resp.usage is not None else {}
        echo = (resp.model_extra or {}).get("decoding")
        return Generation(choice.message.content or "", echo, choice.finish_reason, usage)

    async def unavailable(self) -> dict[str, str]:
        """Strategies the server lists as undefined on its model family, with why (a job
        skips them and reports it instead of failing on their 400s)."""
        import httpx

        resp = await self.client.get("/decoding/strategies", cast_to=httpx.Response)
        if resp.status_code != 200:  # a server without the listing: nothing to skip
            return {}
        data = resp.json().get("data", [])
        return {
            d["strategy"]: d.get("unavailable_reason") or "not available on this model"
            for d in data
            if d.get("available") is False
        }

    def describe(self) -> dict[str, str]:
        return {"mode": self.mode, "location": self.location, "model": self.model}


async def _served_model(client: Any) -> str:
    models = await client.models.list()
    if not models.data:
        raise RuntimeError("the server lists no model at /v1/models")
    return models.data[0].id


@asynccontextmanager
async def url_backend(
    url: str, *, model: str | None = None, api_key: str | None = None, timeout: float = 600.0
) -> AsyncIterator[Backend]:
    """A backend for a running server at ``url`` (with or without the ``/v1`` suffix)."""
    import openai

    base = url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    client = openai.AsyncOpenAI(
        base_url=base,
        api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
        timeout=timeout,
        max_retries=3,
    )
    try:
        yield Backend(client, model or await _served_model(client), "url", base)
    finally:
        await client.close()


@asynccontextmanager
async def inprocess_backend(
    model: str, engine_args: list[str], *, served_model: str | None = None
) -> AsyncIterator[Backend]:
    """A backend that runs the server app and vLLM engine inside this process."""
    from server.inprocess import inprocess_client

    async with inprocess_client(model, engine_args) as client:
        yield Backend(client, served_model or await _served_model(client), "inprocess", model)
