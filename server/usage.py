"""``usage.decoding``: what one request's strategy cost, next to vLLM's token counts.

The figures come from the request's :class:`decoding.tally.Tally`, fed by the same
runner calls that feed ``lucid:extra_forward_tokens_total`` and the event counters, so
summed over requests they equal the server's counters. ``plain_tokens`` is the
request's own work (prompt plus answer tokens, as in its ``usage``); ``cost_ratio`` is
``(plain_tokens + extra_tokens_total) / plain_tokens``, i.e. forward tokens relative to
decoding the same answer plainly; ``expected_cost`` is the strategy's declared cost for
these parameters (what admission control charged).
"""

from __future__ import annotations

from typing import Any

from decoding.tally import Tally

#: Tally event names and the plural shown to clients (as in the metric names).
EVENTS = {"rollback": "rollbacks", "uncoupled_step": "uncoupled_steps"}
#: Usage keys that count the request's own forward tokens, in every usage shape.
PLAIN_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


def plain_tokens(usage: dict[str, Any]) -> int:
    total = 0
    for key in PLAIN_KEYS:
        v = usage.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            total += v
    return total


def decoding_usage(
    strategy: str, expected_cost: float, tally: Tally, usage: dict[str, Any]
) -> dict[str, Any]:
    """The ``usage.decoding`` object for one response."""
    tokens = dict(tally.tokens)
    extra = sum(tokens.values())
    plain = plain_tokens(usage)
    return {
        "strategy": strategy,
        "extra_tokens": tokens,
        "extra_tokens_total": extra,
        "events": {EVENTS.get(k, k): v for k, v in tally.events.items()},
        "plain_tokens": plain,
        "cost_ratio": round((plain + extra) / plain, 4) if plain else None,
        "expected_cost": expected_cost,
    }
