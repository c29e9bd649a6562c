"""The arithmetic and tables of ``make bench``: per-level records, ratios, targets.

Everything here is pure (no I/O), so it is tested on hand-made records. Ratios are keyed
``[strategy][str(concurrency)]`` (JSON object keys are strings) and always compare two
figures measured in the same run.
"""

from __future__ import annotations

import statistics
from typing import Any

from decoding.strategies import available, get_strategy

#: Plain vLLM beam search, the baseline OPERA (a beam-search method) is compared with.
BEAM = "beam-5"
BEAM_WIDTH = 5
#: The concurrency the performance targets are stated at.
TARGET_CONCURRENCY = 16
#: Every served strategy other than ``none`` must reach ``REFERENCE_FACTOR`` x its batch-1
#: reference tokens/s, besides its declared target (``Strategy.bench_target``).
REFERENCE_FACTOR = 5.0
RATIO_LABEL = {
    "vs_none": "x none",
    "vs_reference": "x reference",
    "vs_beam5": "x beam-5",
    "compiled_overhead": "x none-only",
}
#: Targets of the compiled comparison (``--compiled``): plain requests on a compiled server
#: with every strategy loaded keep 95% of a compiled ``--strategies none`` server's speed.
COMPILED_TARGETS: tuple[tuple[str, str, float], ...] = (("none", "compiled_overhead", 0.95),)

Sample = tuple[float, float, int]  # (latency s, time to first token s, generated tokens)


def order() -> list[str]:
    """Presentation and run order: the registry's."""
    return available()


def declared_targets() -> list[tuple[str, str, float]]:
    """(strategy, ratio, minimum) at ``TARGET_CONCURRENCY``, from the declarations."""
    out = []
    for name in order():
        target = get_strategy(name).bench_target
        if target is not None:
            ratio = "vs_beam5" if target.against == BEAM else f"vs_{target.against}"
            out.append((name, ratio, target.ratio))
    return out


def ordered(names: list[str]) -> list[str]:
    """``names`` in registry order, unknown ones after in their given order, no repeats."""
    known = [s for s in order() if s in names]
    return known + [s for s in dict.fromkeys(names) if s not in known]


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: small samples stay actual values)."""
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def level_record(
    strategy: str, concurrency: int, samples: list[Sample], wall_s: float, streamed: bool
) -> dict[str, Any]:
    """One (strategy, concurrency) row from its requests' samples and the level's wall time."""
    lat = [s[0] for s in samples]
    tokens = sum(s[2] for s in samples)
    return {
        "strategy": strategy,
        "concurrency": concurrency,
        "requests": len(samples),
        "streamed": streamed,
        "tokens": tokens,
        "wall_s": wall_s,
        "tokens_per_s": tokens / wall_s,
        "requests_per_s": len(samples) / wall_s,
        "latency_p50_s": statistics.median(lat),
        "latency_p95_s": pct(lat, 0.95),
        "ttft_p50_s": statistics.median(s[1] for s in samples),
    }


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from repeated rounds of the same (strategy, concurrency): the median
    round's row, with every round's tokens/s in round order (for paired ratios)."""
    if len(rounds) == 1:
        return rounds[0]
    middle = sorted(rounds, key=lambda r: r["tokens_per_s"])[len(rounds) // 2]
    return {**middle, "rounds_tokens_per_s": [r["tokens_per_s"] for r in rounds]}


def _paired(records: list[dict[str, Any]], base: str) -> dict[str, dict[str, float]]:
    """tokens/s over ``base``'s per concurrency: the median of the per-round ratios when
    both rows have rounds (each pair measured minutes apart at most, so a load change on
    the machine moves both), else the ratio of the rows."""
    rows = {(r["strategy"], str(r["concurrency"])): r for r in records}
    out: dict[str, dict[str, float]] = {}
    for (name, conc), r in rows.items():
        den = rows.get((base, conc))
        if name == base or den is None or not den["tokens_per_s"]:
            continue
        a, b = r.get("rounds_tokens_per_s"), den.get("rounds_tokens_per_s")
        if a and b and len(a) == len(b):
            value = statistics.median(x / y for x, y in zip(a, b, strict=True))
        else:
            value = r["tokens_per_s"] / den["tokens_per_s"]
        out.setdefault(name, {})[conc] = value
    return out


def _tps(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for r in records:
        out.setdefault(r["strategy"], {})[str(r["concurrency"])] = r["tokens_per_s"]
    return out


def _over(num: dict[str, float], den: dict[str, float]) -> dict[str, float]:
    return {c: v / den[c] for c, v in num.items() if den.get(c)}


def vs_none(records: list[dict[str, Any]], base: str = "none") -> dict[str, dict[str, float]]:
    """tokens/s of each row over ``base``'s at the same concurrency (``base`` left out)."""
    return _paired(records, base)


def vs_reference(
    records: list[dict[str, Any]], reference: list[dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """Served tokens/s at each concurrency over the same strategy's batch-1 reference."""
    ref = {r["strategy"]: r.get("tokens_per_s") for r in reference}
    return {
        s: {c: v / ref[s] for c, v in by_conc.items()}
        for s, by_conc in _tps(records).items()
        if ref.get(s)
    }


def ratios(
    records: list[dict[str, Any]], reference: list[dict[str, Any]] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    against_beam = [s for s, ratio, _ in declared_targets() if ratio == "vs_beam5"]
    paired = _paired(records, BEAM)
    beam = {s: paired[s] for s in against_beam if s in paired}
    return {
        "vs_none": vs_none(records),
        "vs_reference": vs_reference(records, reference or []),
        "vs_beam5": {s: v for s, v in beam.items() if v},
    }


def per_strategy_ratio(
    num: list[dict[str, Any]], den: list[dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """tokens/s of each strategy in ``num`` over the same strategy's in ``den``."""
    a, b = _tps(num), _tps(den)
    out = {s: _over(v, b.get(s, {})) for s, v in a.items()}
    return {s: v for s, v in out.items() if v}


def overhead_ratio(full: list[dict[str, Any]], none_only: list[dict[str, Any]]) -> dict[str, float]:
    """``none`` on the full server over ``none`` on a ``--strategies none`` server."""
    return _over(_tps(full).get("none", {}), _tps(none_only).get("none", {}))


def targets(
    rat: dict[str, dict[str, dict[str, float]]], strategies: list[str]
) -> list[dict[str, Any]]:
    """Each performance target with its measured value and MET / MISSED / N/A.

    N/A means the figure was not measured in this run (strategy not served, no reference,
    no beam-5 row, or no level at ``TARGET_CONCURRENCY``).
    """
    everyone = ordered([*order(), *strategies])
    specs = declared_targets() + [(s, "vs_reference", REFERENCE_FACTOR) for s in everyone[1:]]
    if "compiled_overhead" in rat:
        specs += list(COMPILED_TARGETS)
    rank = {s: i for i, s in enumerate(everyone)}
    specs.sort(key=lambda t: rank[t[0]])  # stable: per strategy, in TARGETS order
    out = []
    for strategy, ratio, minimum in specs:
        value = rat.get(ratio, {}).get(strategy, {}).get(str(TARGET_CONCURRENCY))
        status = "N/A" if value is None else "MET" if value >= minimum else "MISSED"
        out.append(
            {
                "strategy": strategy,
                "ratio": ratio,
                "concurrency": TARGET_CONCURRENCY,
                "minimum": minimum,
                "value": value,
                "status": status,
            }
        )
    return out


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(records: list[dict[str, Any]], rat: dict[str, dict[str, dict[str, float]]]) -> str:
    """Served rows; ``*`` marks a non-streamed row (its TTFT is its latency)."""
    head = (
        f"{'strategy':<10}{'conc':>5}{'req/s':>9}{'tok/s':>10}{'p50 s':>9}{'p95 s':>9}"
        f"{'ttft p50':>10}{'x none':>8}{'x ref':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in records:
        s, c = r["strategy"], str(r["concurrency"])
        x_none = 1.0 if s == "none" else rat["vs_none"].get(s, {}).get(c)
        x_ref = rat["vs_reference"].get(s, {}).get(c)
        name = s + ("" if r.get("streamed", True) else "*")
        lines.append(
            f"{name:<10}{r['concurrency']:>5}{r['requests_per_s']:>9.2f}"
            f"{r['tokens_per_s']:>10.1f}{r['latency_p50_s']:>9.3f}{r['latency_p95_s']:>9.3f}"
            f"{r['ttft_p50_s']:>10.3f}{_x(x_none):>8}{_x(x_ref):>8}"
        )
    if any(not r.get("streamed", True) for r in records):
        lines.append("* not streamed: TTFT = latency")
    return "\n".join(lines)


def reference_table(reference: list[dict[str, Any]]) -> str:
    """The batch-1 reference engine rows, with each strategy's tokens/s over ``none``'s."""
    base = next((r["tokens_per_s"] for r in reference if r["strategy"] == "none"), None)
    head = f"{'strategy':<10}{'tokens':>8}{'seconds':>10}{'tok/s':>10}{'x none':>8}"
    lines = [head, "-" * len(head)]
    for r in reference:
        tps = r.get("tokens_per_s")
        x = tps / base if tps and base else None
        tps_text = "-" if tps is None else f"{tps:.1f}"
        lines.append(
            f"{r['strategy']:<10}{r['tokens']:>8}{r['seconds']:>10.2f}{tps_text:>10}{_x(x):>8}"
        )
    return "\n".join(lines)


def target_lines(results: list[dict[str, Any]]) -> str:
    lines = []
    for t in results:
        value = "not measured" if t["value"] is None else f"{t['value']:.3f}"
        lines.append(
            f"{t['status']:<7}{t['strategy']:<8}{RATIO_LABEL[t['ratio']]:<12}"
            f"{value:>13} (need >= {t['minimum']:g})"
        )
    return "\n".join(lines)


def overhead_lines(overhead: dict[str, Any], full: list[dict[str, Any]]) -> str:
    """``none`` tokens/s on both servers and their ratio, one line per concurrency."""
    here = _tps(full).get("none", {})
    there = _tps(overhead["records"]).get("none", {})
    lines = []
    for c, x in overhead["none_overhead_ratio"].items():
        lines.append(
            f"concurrency {c:>3}: none {here[c]:.1f} tok/s here, {there[c]:.1f} tok/s on the "
            f"none-only server: {x:.2f}x"
        )
    return "\n".join(lines)


def compiled_lines(compiled: dict[str, Any]) -> str:
    """Compiled over eager tokens/s per strategy and level, and the compiled overhead."""
    lines = [f"{'strategy':<10}" + "".join(f"{'c=' + c:>10}" for c in compiled["levels"])]
    for s, by_c in compiled["vs_eager"].items():
        lines.append(f"{s:<10}" + "".join(f"{_x(by_c.get(c)):>10}" for c in compiled["levels"]))
    for c, x in compiled["none_overhead_ratio"].items():
        lines.append(f"none, all strategies loaded / none-only (both compiled), c={c}: {x:.2f}x")
    return "\n".join(lines)
