"""``none``: hand the request to vLLM unchanged."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams

from decoding.engine.client import RunContext, register_runner


@register_runner("none")
async def run(
    ctx: RunContext,
    prompt: Any,
    sampling_params: SamplingParams,
    request_id: str,
    params: dict[str, Any],
    **kwargs: Any,
) -> AsyncGenerator[RequestOutput, None]:
    async for out in ctx.engine.generate(prompt, sampling_params, request_id, **kwargs):
        yield out
