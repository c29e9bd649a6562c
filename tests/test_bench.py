"""The benchmark harness: its arithmetic on hand-made records, and one small real run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import openai
import pytest

from server import bench
from server.bench_report import (
    merge_rounds,
    ordered,
    overhead_lines,
    overhead_ratio,
    pct,
    ratios,
    reference_table,
    table,
    target_lines,
    targets,
)


def rec(strategy: str, conc: int, tps: float, streamed: bool = True) -> dict:
    return {
        "strategy": strategy,
        "concurrency": conc,
        "requests": 4,
        "streamed": streamed,
        "tokens": 128,
        "wall_s": 1.0,
        "tokens_per_s": tps,
        "requests_per_s": 1.0,
        "latency_p50_s": 0.1,
        "latency_p95_s": 0.2,
        "ttft_p50_s": 0.01,
    }


def ref(strategy: str, tps: float) -> dict:
    return {"strategy": strategy, "tokens": 128, "seconds": 128 / tps, "tokens_per_s": tps}


RECORDS = [
    rec("none", 1, 100.0),
    rec("vcd", 1, 50.0),
    rec("none", 16, 400.0),
    rec("vcd", 16, 300.0),
    rec("var", 16, 100.0),
    rec("opera", 16, 30.0, streamed=False),
    rec("beam-5", 16, 60.0, streamed=False),
]
REFERENCE = [ref("none", 200.0), ref("vcd", 50.0), ref("var", 40.0)]


def test_ratios_are_within_each_concurrency() -> None:
    rat = ratios(RECORDS, REFERENCE)
    assert rat["vs_none"] == {
        "vcd": {"1": 0.5, "16": 0.75},
        "var": {"16": 0.25},
        "opera": {"16": 0.075},
        "beam-5": {"16": 0.15},
    }
    assert rat["vs_reference"] == {
        "none": {"1": 0.5, "16": 2.0},
        "vcd": {"1": 1.0, "16": 6.0},
        "var": {"16": 2.5},
    }
    assert rat["vs_beam5"] == {"opera": {"16": 0.5}}
    assert ratios(RECORDS[:2]) == {
        "vs_none": {"vcd": {"1": 0.5}},
        "vs_reference": {},
        "vs_beam5": {},
    }


def test_rounds_give_the_median_row_and_paired_ratios() -> None:
    # Round 2 ran while the machine was busy: both rows slowed down, the ratio held.
    none = merge_rounds([rec("none", 16, 400.0), rec("none", 16, 200.0), rec("none", 16, 380.0)])
    var = merge_rounds([rec("var", 16, 320.0), rec("var", 16, 170.0), rec("var", 16, 300.0)])
    assert none["tokens_per_s"] == 380.0 and none["rounds_tokens_per_s"] == [400.0, 200.0, 380.0]
    assert var["tokens_per_s"] == 300.0
    # Per-round ratios 0.8, 0.85, 0.789...: their median, not 300 / 380.
    assert ratios([none, var])["vs_none"]["var"]["16"] == pytest.approx(0.8)
    assert merge_rounds([rec("none", 1, 5.0)]) == rec("none", 1, 5.0)


def test_targets_met_missed_and_not_measured() -> None:
    got = {(t["strategy"], t["ratio"]): t for t in targets(ratios(RECORDS, REFERENCE), ["none"])}
    assert got["vcd", "vs_none"]["status"] == "MET"  # 0.75 >= 0.5
    assert got["vcd", "vs_reference"]["status"] == "MET"  # 6 >= 5
    assert got["var", "vs_none"]["status"] == "MISSED"  # 0.25 < 0.8
    assert got["var", "vs_reference"]["status"] == "MISSED"  # 2.5 < 5
    assert got["opera", "vs_beam5"]["status"] == "MET"  # 0.5 >= 0.3
    assert got["opera", "vs_reference"]["status"] == "N/A"  # no reference row
    assert got["damro", "vs_none"]["status"] == "N/A"  # not served
    assert ("none", "vs_reference") not in got
    assert [t["strategy"] for t in targets({}, ["zeta"])][-1] == "zeta"
    text = target_lines(list(got.values()))
    assert "MISSED var" in text and "not measured" in text


def test_tables() -> None:
    rat = ratios(RECORDS, REFERENCE)
    text = table(RECORDS, rat)
    lines = text.splitlines()
    assert lines[0].startswith("strategy") and "x ref" in lines[0]
    vcd16 = next(line for line in lines if line.startswith("vcd") and " 16 " in line)
    assert vcd16.split()[-2:] == ["0.75", "6.00"]
    assert any(line.startswith("beam-5*") for line in lines) and "not streamed" in lines[-1]
    ref_lines = reference_table(REFERENCE).splitlines()
    assert ref_lines[-1].split() == ["var", "128", "3.20", "40.0", "0.20"]


def test_overhead_ratio_and_lines() -> None:
    none_only = [rec("none", 1, 125.0), rec("none", 16, 400.0)]
    ratio = overhead_ratio(RECORDS, none_only)
    assert ratio == {"1": 0.8, "16": 1.0}
    text = overhead_lines({"records": none_only, "none_overhead_ratio": ratio}, RECORDS)
    assert "0.80x" in text and "125.0" in text


def test_compiled_ratios_lines_and_target() -> None:
    from server.bench_report import compiled_lines, per_strategy_ratio

    compiled = [rec("none", 1, 150.0), rec("none", 16, 380.0), rec("var", 16, 320.0)]
    none_only = [rec("none", 1, 150.0), rec("none", 16, 400.0)]
    vs_eager = per_strategy_ratio(compiled, RECORDS)
    assert vs_eager["none"] == {"1": 1.5, "16": 0.95}
    info = {"levels": ["1", "16"], "vs_eager": vs_eager,
            "none_overhead_ratio": overhead_ratio(compiled, none_only)}  # fmt: skip
    text = compiled_lines(info)
    assert "c=16" in text and "0.95x" in text
    rat = {**ratios(RECORDS), "compiled_overhead": {"none": info["none_overhead_ratio"]}}
    got = [t for t in targets(rat, ["none", "var"]) if t["ratio"] == "compiled_overhead"]
    assert got == [{"strategy": "none", "ratio": "compiled_overhead", "concurrency": 16,
                    "minimum": 0.95, "value": 0.95, "status": "MET"}]  # fmt: skip


def test_order_and_percentile() -> None:
    assert ordered(["opera", "zeta", "none", "vcd", "none"]) == ["none", "vcd", "opera", "zeta"]
    assert pct([5.0, 1.0, 3.0], 0.5) == 3.0
    assert pct([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == 5.0
    assert pct([2.0], 0.95) == 2.0


def test_a_strategy_refused_streamed_is_measured_unstreamed(monkeypatch) -> None:  # noqa: ANN001
    calls = []

    async def fake(client, model, name, chat, max_tokens, stream):  # noqa: ANN001, ANN202
        calls.append((name, stream))
        if stream and name == "opera":
            resp = httpx.Response(400, request=httpx.Request("POST", "http://x"))
            raise openai.BadRequestError("streaming not supported", response=resp, body=None)
        return 0.1, 0.1, max_tokens

    monkeypatch.setattr(bench, "one_request", fake)
    assert asyncio.run(bench.warm_up(None, "m", "none", 8)) is True
    assert asyncio.run(bench.warm_up(None, "m", "opera", 8)) is False
    assert asyncio.run(bench.warm_up(None, "m", "beam-5", 8)) is False
    assert calls == [("none", True), ("opera", True), ("opera", False), ("beam-5", False)]
    assert bench.request_body("beam-5")["n"] == 5
    assert bench.request_body("vcd") == {"decoding": {"strategy": "vcd"}, "ignore_eos": True}


@pytest.mark.server
def test_small_run_against_the_server(served, tmp_path: Path) -> None:  # noqa: ANN001
    """Streamed strategies, non-streamed beam search and the reference engine, end to end."""
    out = tmp_path / "bench.json"
    args = ["--url", served.url, "--concurrency", "1,2", "--requests", "2", "--max-tokens", "4"]
    args += ["--strategies", "none", "--reference-requests", "1", "--reference-rounds", "2"]
    bench.main([*args, "--out", str(out)])
    result = json.loads(out.read_text())
    rows = {(r["strategy"], r["concurrency"]): r for r in result["records"]}
    assert set(rows) == {("none", 1), ("none", 2), ("beam-5", 1), ("beam-5", 2)}
    assert rows["none", 2]["streamed"] and not rows["beam-5", 2]["streamed"]
    # fixed-length outputs; beam search counts the best beam only
    assert rows["none", 2]["tokens"] == rows["beam-5", 2]["tokens"] == 2 * 4
    assert [(r["strategy"], r["tokens"]) for r in result["reference"]] == [("none", 4)]
    assert len(result["reference"][0]["rounds_tokens_per_s"]) == 2
    assert set(result["ratios"]["vs_reference"]["none"]) == {"1", "2"}
    assert set(result["ratios"]["vs_none"]["beam-5"]) == {"1", "2"}
    assert result["errors"] == [] and result["machine"]["cpu_count"] >= 1
