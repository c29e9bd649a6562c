"""``usage.decoding`` reports what each request's strategy cost, and adds up to the
server's own counters (``lucid:extra_forward_tokens_total``, ``lucid:rollbacks_total``,
``lucid:cd_uncoupled_steps_total``)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from decoding.strategies import get_strategy
from decoding.testing import parity, synthetic

pytestmark = pytest.mark.server

KINDS = ("contrast_prefill", "contrast_decode", "candidate", "rollback")
EVENTS = {"rollbacks": "lucid:rollbacks_total", "uncoupled_steps": "lucid:cd_uncoupled_steps_total"}
CASES = [
    {"strategy": "vcd"},
    {"strategy": "damro", "top_k": 4},
    {"strategy": "avc"},
    # threshold 1 makes OPERA roll back on this image (see test_served_opera).
    {"strategy": "opera", "threshold": 1},
    {"strategy": "var"},
]


def counters(served: Any, strategy: str) -> dict[str, float]:
    text = httpx.get(served.url + "/metrics", timeout=30).text
    out = {
        k: parity.metric(text, "lucid:extra_forward_tokens_total", strategy=strategy, kind=k)
        for k in KINDS
    }
    out |= {e: parity.metric(text, series, strategy=strategy) for e, series in EVENTS.items()}
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k: int(after[k] - before[k]) for k in after if after[k] != before[k]}


def reported(cost: dict[str, Any]) -> dict[str, int]:
    got = {k: v for k, v in cost["extra_tokens"].items() if v}
    return got | {k: v for k, v in cost["events"].items() if v}


@pytest.mark.parametrize("decoding", CASES, ids=lambda d: d["strategy"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_usage_decoding_equals_the_counters(served, decoding: dict, stream: bool) -> None:  # noqa: ANN001
    name = decoding["strategy"]
    case = parity.cases(16)[2]
    before = counters(served, name)
    # 48 tokens: OPERA's rollbacks on this case come late (see test_served_opera).
    kw = parity.chat_request(served.model, case, decoding, 48 if name == "opera" else 32)
    if stream:
        chunks = list(
            served.client().chat.completions.create(
                **kw, stream=True, stream_options={"include_usage": True}
            )
        )
        usage = next(c.usage for c in chunks if c.usage is not None)
    else:
        usage = served.client().chat.completions.create(**kw).usage
    cost = usage.model_extra["decoding"]
    assert delta(counters(served, name), before) == reported(cost)
    plain = usage.prompt_tokens + usage.completion_tokens
    assert cost["plain_tokens"] == plain
    assert cost["cost_ratio"] == pytest.approx((plain + cost["extra_tokens_total"]) / plain, 1e-3)
    assert cost["extra_tokens_total"] == sum(cost["extra_tokens"].values())
    strat = get_strategy(name)
    params = strat.Params(**{k: v for k, v in decoding.items() if k != "strategy"})
    assert cost["expected_cost"] == strat.cost(params)
    if name == "var":
        assert cost["extra_tokens_total"] == 0
    else:
        assert cost["extra_tokens_total"] > 0


def test_opera_rollbacks_are_reported_per_request(served) -> None:  # noqa: ANN001
    """The cases test_served_opera picked for rolling back at threshold 1."""
    decoding = {"strategy": "opera", "threshold": 1}
    rollbacks = 0
    for case in [parity.cases(16)[i] for i in (2, 4, 6)]:
        before = counters(served, "opera")
        kw = parity.chat_request(served.model, case, decoding, 48, ignore_eos=True)
        cost = served.client().chat.completions.create(**kw).usage.model_extra["decoding"]
        assert delta(counters(served, "opera"), before) == reported(cost)
        rollbacks += cost["events"].get("rollbacks", 0)
        if rollbacks:
            break
    assert rollbacks > 0


def test_plain_usage_reports_no_extra_work(served) -> None:  # noqa: ANN001
    r = served.client().chat.completions.create(
        model=served.model,
        messages=synthetic.chat_messages(synthetic.sample(3)[0], "Describe the image."),
        max_tokens=4,
        temperature=0,
    )
    cost = r.usage.model_extra["decoding"]
    assert cost["strategy"] == "none" and cost["extra_tokens_total"] == 0
    assert cost["cost_ratio"] == 1.0 and cost["expected_cost"] == 1.0
