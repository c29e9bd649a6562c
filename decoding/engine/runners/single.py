"""The ``single`` runner: one engine request per answer, as sent or with engine settings.

Serves the plain family (``none``: the request reaches vLLM unchanged) and the
attention-edit family (``var``): the declaration's
:meth:`~decoding.strategies.base.Strategy.engine_settings` resolves the request's
parameters against the model profile, and the settings ride in ``extra_args``.

A strategy whose engine needs declare ``private_kv`` (VAR edits the keys and values of
the prompt text after the image) never reads the prefix cache, because what it edits
is found from the residual stream of every prompt token at prefill, and its KV blocks
carry their own cache salt so a plain request never reuses them.

A stall token in the output means the engine could not apply the settings (a hook the
request needs is missing): the request fails with :class:`StrategyFault`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams

from decoding.engine.runner import RunContext, StrategyFault, register_runner
from decoding.profiles import profile_for
from decoding.strategies.base import StrategyParams
from decoding.wire import ENGINE_KEY, EngineSettings

#: Cache-salt suffix of requests with private KV.
SALT = "lucid-private"


def engine_request(
    prompt: Any, sampling_params: SamplingParams, settings: EngineSettings, private_kv: bool
) -> tuple[Any, SamplingParams]:
    """The prompt and sampling parameters handed to the engine."""
    sp = sampling_params.clone()
    sp.extra_args = {**(sp.extra_args or {}), ENGINE_KEY: settings.to_json()}
    if private_kv:
        sp.skip_reading_prefix_cache = True
        if isinstance(prompt, dict):
            salt = prompt.get("cache_salt")
            prompt = {**prompt, "cache_salt": f"{salt}:{SALT}" if salt else SALT}
    return prompt, sp


_PROFILES: dict[int, tuple[Any, Any]] = {}


def settings_for(ctx: RunContext, params: StrategyParams) -> EngineSettings | None:
    if not ctx.strategy.engine.hooks:
        return None  # plain: no profile lookup on the hot path
    config = ctx.engine.model_config
    cached = _PROFILES.get(id(config.hf_config))
    if cached is None or cached[0] is not config.hf_config:
        cached = (config.hf_config, profile_for(config.hf_config))
        _PROFILES[id(config.hf_config)] = cached
    layers = int(config.hf_text_config.num_hidden_layers)
    return ctx.strategy.engine_settings(params, cached[1], layers)


@register_runner("single")
async def run(
    ctx: RunContext,
    prompt: Any,
    sampling_params: SamplingParams,
    request_id: str,
    params: StrategyParams,
    **kwargs: Any,
) -> AsyncGenerator[RequestOutput, None]:
    settings = settings_for(ctx, params)
    if settings is None:
        async for out in ctx.engine.generate(prompt, sampling_params, request_id, **kwargs):
            yield out
        return
    prompt, sp = engine_request(prompt, sampling_params, settings, ctx.strategy.engine.private_kv)
    stall = ctx.stall_token()
    async for out in ctx.engine.generate(prompt, sp, request_id, **kwargs):
        if any(stall in o.token_ids for o in out.outputs):
            raise StrategyFault(ctx.name, "the engine flagged the request as not edited")
        yield out
