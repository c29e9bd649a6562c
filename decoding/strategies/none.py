"""``none``: the request's own sampling, exactly as ``vllm serve`` would decode it."""

from __future__ import annotations

from decoding.strategies.base import Strategy
from decoding.strategies.registry import register_strategy


@register_strategy
class NoneStrategy(Strategy):
    """Baseline: no intervention. Greedy, sampling, ``n``, logprobs and streaming all
    behave as in stock vLLM; the request's ``temperature``/``top_p``/``seed`` apply."""

    name = "none"
    summary = "the request's own sampling"
    order = 0
