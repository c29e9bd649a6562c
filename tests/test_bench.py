"""The benchmark harness's arithmetic (the run itself is `make bench`)."""

from __future__ import annotations

from server.bench import _pct, ratios, table


def rec(strategy: str, conc: int, tps: float) -> dict:
    return {
        "strategy": strategy,
        "concurrency": conc,
        "requests": 4,
        "tokens_per_s": tps,
        "requests_per_s": 1.0,
        "latency_p50_s": 0.1,
        "latency_p95_s": 0.2,
        "ttft_p50_s": 0.01,
    }


def test_ratios_are_within_each_concurrency() -> None:
    records = [
        rec("none", 1, 100.0),
        rec("vcd", 1, 50.0),
        rec("none", 16, 400.0),
        rec("vcd", 16, 300.0),
        rec("var", 16, 100.0),
    ]
    assert ratios(records) == {"vcd": {"1": 0.5, "16": 0.75}, "var": {"16": 0.25}}
    text = table(records, ratios(records))
    assert "0.75" in text and text.splitlines()[0].startswith("strategy")


def test_percentile_nearest_rank() -> None:
    assert _pct([5.0, 1.0, 3.0], 0.5) == 3.0
    assert _pct([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == 5.0
    assert _pct([2.0], 0.95) == 2.0
