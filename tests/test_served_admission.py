"""Admission control on a real server with a small budget: a costly request over the
budget waits, then gets 429 with ``Retry-After`` in the OpenAI error shape, while plain
requests keep being served; the metrics count it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import openai
import pytest

from decoding.testing import parity, synthetic
from server.process import start_server, stop_server

pytestmark = pytest.mark.server

#: Long enough that the first OPERA request is still running when the second times out.
OPERA = {"strategy": "opera", "num_beams": 4, "num_candidates": 8}


@pytest.fixture(scope="module")
def small(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    log = tmp_path_factory.mktemp("admission") / "server.log"
    srv = start_server(
        tiny_llava_dir,
        log,
        ["--strategies", "none,opera", "--decoding-budget", "8", "--decoding-queue-timeout", "1"],
    )
    yield srv
    stop_server(srv)


def test_over_budget_gets_429_and_plain_requests_flow(small) -> None:  # noqa: ANN001
    version = httpx.get(small.url + "/version", timeout=30).json()
    assert version["admission"]["budget"] == 8.0 and version["admission"]["fanout_limit"] == 4

    async def main() -> tuple[list, list[float]]:
        client = openai.AsyncOpenAI(base_url=small.base_url, api_key="t", max_retries=0)
        img = synthetic.sample(21)[0]

        async def costly(delay: float) -> object:
            await asyncio.sleep(delay)
            try:
                return await client.chat.completions.create(
                    model=small.model,
                    messages=synthetic.chat_messages(img, "Describe the image."),
                    max_tokens=24,
                    temperature=0,
                    extra_body={"decoding": OPERA, "ignore_eos": True},
                )
            except openai.RateLimitError as e:
                return e

        async def plain(seed: int) -> float:
            start = time.perf_counter()
            await client.chat.completions.create(
                model=small.model,
                messages=synthetic.chat_messages(synthetic.sample(seed)[0], "Describe."),
                max_tokens=4,
                temperature=0,
            )
            return time.perf_counter() - start

        costly_tasks = [asyncio.create_task(costly(d)) for d in (0.0, 0.3)]
        await asyncio.sleep(0.6)
        plain_latencies = [await plain(30 + i) for i in range(3)]
        results = await asyncio.gather(*costly_tasks)
        await client.close()
        return results, plain_latencies

    results, plain_latencies = asyncio.run(main())
    first, second = results
    assert not isinstance(first, Exception), first
    assert first.model_extra["decoding"]["num_beams"] == 4
    assert isinstance(second, openai.RateLimitError), second
    assert second.status_code == 429 and second.response.headers["retry-after"] == "1"
    err = second.body
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == 429
    assert "decoding budget" in err["message"] and err["param"] == "decoding"
    assert len(plain_latencies) == 3  # served while the costly request ran

    text = httpx.get(small.url + "/metrics", timeout=30).text
    assert parity.metric(text, "lucid:admission_queued_total", strategy="opera") == 1
    assert parity.metric(text, "lucid:admission_rejected_total", strategy="opera") == 1
    assert parity.metric(text, "lucid:admission_waiting", strategy="opera") == 0
    assert parity.metric(text, "lucid:admission_running", strategy="opera") == 0
    assert parity.metric(text, "lucid:admission_queued_total", strategy="none") == 0
    assert parity.metric(text, "lucid:request_errors_total", status_code="429") == 1
