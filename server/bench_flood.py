"""``python -m server.bench --flood opera-max``: plain latency alone and under a flood.

Two phases in one run against one server: (1) plain requests (``none``, an image each,
greedy, fixed length) at a fixed concurrency, alone; (2) the same plain load while
``--flood-clients`` clients each send maximum-cost OPERA requests back to back
(``num_beams`` 16, ``num_candidates`` 32: the declared cost is 16 x 33 = 528 plain
requests), resending at once after a 429 (after ``Retry-After`` when it is short).
The figure of merit is plain p95 under the flood over plain p95 alone (target at most
2x); the flood's own outcome (completed, refused with 429, other errors) is recorded,
so a run that met the target by refusing everything is visible as such.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai

from decoding.strategies import get_strategy
from decoding.testing import synthetic
from server.bench_report import pct as percentile

FLOODS = {
    "opera-max": {"strategy": "opera", "num_beams": 16, "num_candidates": 32},
}
TARGET_RATIO = 2.0
PROMPT = "Describe the image."


def flood_cost(name: str) -> float:
    d = dict(FLOODS[name])
    strat = get_strategy(d.pop("strategy"))
    return strat.cost(strat.Params(**d))


async def _plain(
    client: openai.AsyncOpenAI, model: str, seeds: range, concurrency: int, max_tokens: int
) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    chats = [synthetic.chat_messages(synthetic.sample(s)[0], PROMPT) for s in seeds]

    async def one(chat: list[dict[str, Any]]) -> float:
        async with sem:
            start = time.perf_counter()
            await client.chat.completions.create(
                model=model,
                messages=chat,
                max_tokens=max_tokens,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            return time.perf_counter() - start

    start = time.perf_counter()
    lat = sorted(await asyncio.gather(*(one(c) for c in chats)))
    wall = time.perf_counter() - start
    return {
        "requests": len(lat),
        "requests_per_s": round(len(lat) / wall, 3),
        "latency_p50_s": round(percentile(lat, 0.5), 4),
        "latency_p95_s": round(percentile(lat, 0.95), 4),
    }


class _Flood:
    def __init__(self, client: openai.AsyncOpenAI, model: str, name: str, max_tokens: int) -> None:
        self.client, self.model, self.max_tokens = client, model, max_tokens
        self.decoding = FLOODS[name]
        self.completed = self.rejected = self.errors = 0
        self.latencies: list[float] = []

    async def loop(self, seed: int) -> None:
        chat = synthetic.chat_messages(synthetic.sample(seed)[0], PROMPT)
        while True:
            start = time.perf_counter()
            try:
                await self.client.chat.completions.create(
                    model=self.model,
                    messages=chat,
                    max_tokens=self.max_tokens,
                    temperature=0,
                    extra_body={"decoding": self.decoding},
                )
                self.completed += 1
                self.latencies.append(time.perf_counter() - start)
            except openai.RateLimitError as e:
                self.rejected += 1
                retry = e.response.headers.get("retry-after", "1")
                await asyncio.sleep(min(1.0, float(retry)))
            except openai.APIError:
                self.errors += 1
                await asyncio.sleep(0.5)

    def summary(self, wall: float) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "completed": self.completed,
            "rejected_429": self.rejected,
            "errors": self.errors,
            "completed_per_s": round(self.completed / wall, 3),
            "latency_p50_s": round(percentile(lat, 0.5), 3) if lat else None,
        }


async def run(
    url: str,
    name: str,
    *,
    clients: int,
    concurrency: int,
    requests: int,
    max_tokens: int,
    flood_max_tokens: int,
) -> dict[str, Any]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=900)
    model = (await client.models.list()).data[0].id
    await _plain(client, model, range(4000, 4000 + concurrency), concurrency, max_tokens)  # warm
    alone = await _plain(client, model, range(6000, 6000 + requests), concurrency, max_tokens)
    flood = _Flood(client, model, name, flood_max_tokens)
    tasks = [asyncio.create_task(flood.loop(7000 + i)) for i in range(clients)]
    await asyncio.sleep(3.0)  # let the flood occupy the engine first
    start = time.perf_counter()
    under = await _plain(client, model, range(8000, 8000 + requests), concurrency, max_tokens)
    wall = time.perf_counter() - start
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    ratio = under["latency_p95_s"] / alone["latency_p95_s"]
    return {
        "flood": name,
        "flood_decoding": FLOODS[name],
        "flood_cost": flood_cost(name),
        "flood_clients": clients,
        "plain_concurrency": concurrency,
        "max_tokens": max_tokens,
        "flood_max_tokens": flood_max_tokens,
        "alone": alone,
        "under_flood": under,
        "flood_outcome": flood.summary(wall),
        "p95_ratio": round(ratio, 3),
        "p50_ratio": round(under["latency_p50_s"] / alone["latency_p50_s"], 3),
        "target": {
            "maximum": TARGET_RATIO,
            "status": "MET" if ratio <= TARGET_RATIO else "MISSED",
        },
    }


def report(result: dict[str, Any]) -> str:
    a, u, f = result["alone"], result["under_flood"], result["flood_outcome"]
    lines = [
        f"plain requests (none, {result['max_tokens']} tokens, concurrency "
        f"{result['plain_concurrency']}) alone and under {result['flood_clients']} clients "
        f"flooding {result['flood']} (cost {result['flood_cost']:g} each)",
        "| phase | req/s | p50 s | p95 s |",
        "|---|---|---|---|",
        f"| alone | {a['requests_per_s']} | {a['latency_p50_s']} | {a['latency_p95_s']} |",
        f"| under flood | {u['requests_per_s']} | {u['latency_p50_s']} | {u['latency_p95_s']} |",
        f"flood: {f['completed']} completed ({f['completed_per_s']}/s, p50 "
        f"{f['latency_p50_s']} s), {f['rejected_429']} refused with 429, {f['errors']} errors",
        f"plain p95 under flood / alone: {result['p95_ratio']}x (target at most "
        f"{TARGET_RATIO:g}x: {result['target']['status']}); p50 {result['p50_ratio']}x",
    ]
    return "\n".join(lines)
