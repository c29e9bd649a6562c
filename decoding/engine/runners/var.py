"""``var``: one engine request whose attention is edited inside vLLM.

VAR (Kang et al., ICLR 2025, arXiv 2503.03321; ``seilk/VisAttnSink`` @ ``98e62d6``) needs
no extra forward pass: the runner resolves the request's parameters against the model
profile (sink dimensions, default ``tau``, edited layers, image-token id) and hands the
request to the engine with those settings in ``extra_args``; the engine side is
:mod:`decoding.engine.worker.var`.

Two prefix-cache settings keep the served answer equal to the reference:

* the request never reads the prefix cache, because sinks are found from the residual
  stream of every prompt token at prefill, and a cached prefix would skip it;
* its KV blocks carry their own cache salt, because VAR changes the keys and values of
  the prompt text after the image: a plain request must never reuse them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams

from decoding.engine.client import RunContext, register_runner
from decoding.engine.worker.rows import ENGINE_KEY
from decoding.profiles import profile_for

#: Suffix of the cache salt of VAR requests.
SALT = "lucid-var"

_MODEL: dict[int, tuple[Any, dict[str, Any]]] = {}


def model_settings(hf_config: Any) -> dict[str, Any]:
    """The model's VAR constants from its profile (cached per config object)."""
    cached = _MODEL.get(id(hf_config))
    if cached is not None and cached[0] is hf_config:
        return cached[1]
    profile = profile_for(hf_config)
    num_layers = int(hf_config.text_config.num_hidden_layers)
    settings = {
        "dims": list(profile.sink_dims),
        "tau": profile.sink_tau,
        # As the reference: the profile's range, within the model's layers.
        "layers": [i for i in profile.var_layer_set() if i < num_layers],
        "image_token_id": profile.image_token_id,
    }
    _MODEL[id(hf_config)] = (hf_config, settings)
    return settings


def engine_settings(params: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """The worker's settings for one request: ``params`` is the validated ``decoding``
    object without ``strategy`` (paper meanings; ``tau`` None = the profile's)."""
    tau = params.get("tau")
    return {
        "kind": "var",
        "p": float(params["p"]),
        "rho": float(params["rho"]),
        "summ": float(params["summ"]),
        "tau": float(model["tau"] if tau is None else tau),
        "dims": model["dims"],
        "layers": model["layers"],
        "image_token_id": model["image_token_id"],
    }


def engine_request(
    prompt: Any, sampling_params: SamplingParams, settings: dict[str, Any]
) -> tuple[Any, SamplingParams]:
    """The prompt and sampling parameters handed to the engine."""
    sp = sampling_params.clone()
    sp.extra_args = {**(sp.extra_args or {}), ENGINE_KEY: json.dumps(settings)}
    sp.skip_reading_prefix_cache = True
    if isinstance(prompt, dict):
        salt = prompt.get("cache_salt")
        prompt = {**prompt, "cache_salt": f"{salt}:{SALT}" if salt else SALT}
    return prompt, sp


@register_runner("var")
async def run(
    ctx: RunContext,
    prompt: Any,
    sampling_params: SamplingParams,
    request_id: str,
    params: dict[str, Any],
    **kwargs: Any,
) -> AsyncGenerator[RequestOutput, None]:
    settings = engine_settings(params, model_settings(ctx.engine.model_config.hf_config))
    prompt, sp = engine_request(prompt, sampling_params, settings)
    async for out in ctx.engine.generate(prompt, sp, request_id, **kwargs):
        yield out
