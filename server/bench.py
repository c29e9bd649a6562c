"""``make bench``: throughput and latency per strategy over HTTP, in one run.

Starts the server on the tiny checkpoint (or uses ``--url``), then for each strategy and
concurrency level sends streamed chat requests with images and measures requests/s,
generated tokens/s, p50/p95 latency and p50 TTFT. Writes ``{"records": [...],
"ratios": {...}}`` where ``ratios[strategy][concurrency]`` is that strategy's tokens/s
over ``none``'s, measured on the same server in the same run (claims are ratios, never
absolute times from another run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from decoding.testing import synthetic
from server.process import start_server, stop_server


async def _one(
    client: openai.AsyncOpenAI, model: str, strategy: str, seed: int, max_tokens: int
) -> tuple[float, float, int]:
    start = time.perf_counter()
    ttft = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=synthetic.chat_messages(synthetic.sample(seed)[0], "Describe the image."),
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={
            "decoding": {"strategy": strategy},
            "ignore_eos": True,
        },  # fixed-length outputs: comparable tokens/s
    )
    async for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - start
    return total, ttft if ttft is not None else total, tokens


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


async def run_level(
    client: openai.AsyncOpenAI,
    model: str,
    strategy: str,
    concurrency: int,
    requests: int,
    max_tokens: int,
) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)

    async def task(i: int) -> tuple[float, float, int]:
        async with sem:
            return await _one(client, model, strategy, 5000 + i, max_tokens)

    await _one(client, model, strategy, 4999, 2)  # warm-up (first-use costs)
    start = time.perf_counter()
    results = await asyncio.gather(*(task(i) for i in range(requests)))
    wall = time.perf_counter() - start
    lat = [r[0] for r in results]
    return {
        "strategy": strategy,
        "concurrency": concurrency,
        "requests": requests,
        "tokens_per_s": sum(r[2] for r in results) / wall,
        "requests_per_s": requests / wall,
        "latency_p50_s": statistics.median(lat),
        "latency_p95_s": _pct(lat, 0.95),
        "ttft_p50_s": statistics.median(r[1] for r in results),
    }


def ratios(records: list[dict[str, Any]], base: str = "none") -> dict[str, dict[str, float]]:
    """tokens/s of each strategy over ``base`` at the same concurrency."""
    ref = {r["concurrency"]: r["tokens_per_s"] for r in records if r["strategy"] == base}
    out: dict[str, dict[str, float]] = {}
    for r in records:
        if r["strategy"] != base and r["concurrency"] in ref and ref[r["concurrency"]] > 0:
            out.setdefault(r["strategy"], {})[str(r["concurrency"])] = (
                r["tokens_per_s"] / ref[r["concurrency"]]
            )
    return out


def table(records: list[dict[str, Any]], rat: dict[str, dict[str, float]]) -> str:
    head = (
        f"{'strategy':<10}{'conc':>5}{'req/s':>9}{'tok/s':>10}{'p50 s':>9}{'p95 s':>9}"
        f"{'ttft p50':>10}{'x none':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in records:
        x = rat.get(r["strategy"], {}).get(str(r["concurrency"]))
        lines.append(
            f"{r['strategy']:<10}{r['concurrency']:>5}{r['requests_per_s']:>9.2f}"
            f"{r['tokens_per_s']:>10.1f}{r['latency_p50_s']:>9.3f}{r['latency_p95_s']:>9.3f}"
            f"{r['ttft_p50_s']:>10.3f}{(f'{x:.2f}' if x is not None else '1.00'):>8}"
        )
    return "\n".join(lines)


async def bench(
    url: str, strategies: list[str] | None, levels: list[int], requests: int, max_tokens: int
) -> dict[str, Any]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    model = (await client.models.list()).data[0].id
    if strategies is None:
        strategies = httpx.get(url + "/version").json().get("strategies", ["none"])
    records = []
    for level in levels:
        for strategy in strategies:
            n = max(requests, level)
            records.append(await run_level(client, model, strategy, level, n, max_tokens))
    return {"records": records, "ratios": ratios(records), "model": model, "max_tokens": max_tokens}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Per-strategy throughput benchmark over HTTP.")
    ap.add_argument("--url", help="a running server; default: start one on the tiny model")
    ap.add_argument("--model", help="checkpoint to serve when no --url (default: tiny)")
    ap.add_argument("--strategies", help="comma-separated (default: all the server enables)")
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--requests", type=int, default=16, help="requests per level (>= conc)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("build/bench.json"))
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    strategies = args.strategies.split(",") if args.strategies else None
    served = None
    url = args.url
    if url is None:
        from decoding.testing.tiny_llava import ensure_tiny_llava

        model = args.model or str(ensure_tiny_llava())
        log = Path(tempfile.mkdtemp()) / "server.log"
        served = start_server(Path(model), log)
        url = served.url
    try:
        result = asyncio.run(
            bench(url.rstrip("/"), strategies, levels, args.requests, args.max_tokens)
        )
    finally:
        if served is not None:
            stop_server(served)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result["records"], result["ratios"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
