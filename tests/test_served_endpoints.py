"""``decoding`` on every generation endpoint: Responses (openai SDK), Anthropic Messages
(anthropic SDK), chat and text completions; refusal everywhere else; body limits.

A strategy counts as applied when the engine ran that strategy's runner
(``lucid:requests_total{strategy=...}`` grows by one) and its extra work shows in
``usage.decoding``; the echo alone would not prove it.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from decoding.testing import parity, synthetic
from decoding.testing.synthetic import data_url

pytestmark = pytest.mark.server

PROMPT = "Describe the image."
STRATEGIES = ["none", "vcd", "avc", "damro", "var", "opera"]
#: Strategies that run extra forward tokens on every request.
EXTRA_WORK = {"vcd", "avc", "damro", "opera"}
MAX_TOKENS = 8


def _metrics(served: Any) -> str:
    return httpx.get(served.url + "/metrics", timeout=30).text


def _finished(text: str, strategy: str) -> float:
    return parity.metric(text, "lucid:requests_total", strategy=strategy)


def responses_input(seed: int) -> list[dict[str, Any]]:
    url = data_url(synthetic.sample(seed)[0])
    return [
        {
            "role": "user",
            "content": [
                {"type": "input_image", "image_url": url},
                {"type": "input_text", "text": PROMPT},
            ],
        }
    ]


def anthropic_messages(seed: int) -> list[dict[str, Any]]:
    b64 = data_url(synthetic.sample(seed)[0]).split(",", 1)[1]
    source = {"type": "base64", "media_type": "image/png", "data": b64}
    return [
        {
            "role": "user",
            "content": [{"type": "image", "source": source}, {"type": "text", "text": PROMPT}],
        }
    ]


def check_cost(strategy: str, usage: Any, echo: Any) -> None:
    assert echo["strategy"] == strategy
    cost = usage["decoding"]
    assert cost["strategy"] == strategy and cost["plain_tokens"] > MAX_TOKENS
    if strategy in EXTRA_WORK:
        assert cost["extra_tokens_total"] > 0 and cost["cost_ratio"] > 1.0, cost
    else:
        assert cost["extra_tokens_total"] == 0 and cost["cost_ratio"] == 1.0, cost


@pytest.fixture(scope="module")
def oai(served):  # noqa: ANN001, ANN201
    return served.client()


@pytest.fixture(scope="module")
def claude(served):  # noqa: ANN001, ANN201
    return anthropic.Anthropic(base_url=served.url, api_key="test", max_retries=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_responses_apply_every_strategy(served, oai, strategy: str) -> None:  # noqa: ANN001
    before = _finished(_metrics(served), strategy)
    r = oai.responses.create(
        model=served.model,
        input=responses_input(1100),
        max_output_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"decoding": {"strategy": strategy}},
    )
    assert r.output_text.strip()
    check_cost(strategy, r.usage.model_extra, r.model_extra["decoding"])
    # The echo carries every applied parameter with its default.
    assert len(r.model_extra["decoding"]) > 1 or strategy == "none"

    events = list(
        oai.responses.create(
            model=served.model,
            input=responses_input(1100),
            max_output_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            extra_body={"decoding": {"strategy": strategy}},
        )
    )
    created = next(e for e in events if e.type == "response.created")
    final = next(e for e in events if e.type in ("response.completed", "response.incomplete"))
    assert created.response.model_extra["decoding"]["strategy"] == strategy
    check_cost(strategy, final.response.usage.model_extra, final.response.model_extra["decoding"])
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == r.output_text
    assert _finished(_metrics(served), strategy) == before + 2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_anthropic_messages_apply_every_strategy(served, oai, claude, strategy: str) -> None:  # noqa: ANN001
    before = _finished(_metrics(served), strategy)
    extra = {"decoding": {"strategy": strategy}, "temperature": 0}
    m = claude.messages.create(
        model=served.model,
        max_tokens=MAX_TOKENS,
        messages=anthropic_messages(1101),
        extra_body=extra,
    )
    check_cost(strategy, m.usage.model_extra, m.model_extra["decoding"])
    # Same prompt through the chat endpoint: the same strategy gives the same answer.
    chat = oai.chat.completions.create(
        model=served.model,
        messages=synthetic.chat_messages(synthetic.sample(1101)[0], PROMPT),
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"decoding": {"strategy": strategy}},
    )
    assert m.content[0].text == chat.choices[0].message.content
    assert m.usage.input_tokens == chat.usage.prompt_tokens
    with claude.messages.stream(
        model=served.model,
        max_tokens=MAX_TOKENS,
        messages=anthropic_messages(1101),
        extra_body=extra,
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    start = next(e for e in events if e.type == "message_start")
    delta = next(e for e in events if e.type == "message_delta")
    assert start.message.model_extra["decoding"]["strategy"] == strategy
    check_cost(strategy, delta.usage.model_extra, delta.model_extra["decoding"])
    assert final.content[0].text == m.content[0].text
    assert _finished(_metrics(served), strategy) == before + 3


def test_bad_decoding_is_a_400_on_every_endpoint(served, oai, claude) -> None:  # noqa: ANN001
    bad = {"strategy": "vcd", "alpha": "strong"}
    with pytest.raises(openai.BadRequestError) as exc:
        oai.responses.create(
            model=served.model, input="Hi", max_output_tokens=2, extra_body={"decoding": bad}
        )
    assert exc.value.body["param"] == "decoding.alpha"
    with pytest.raises(anthropic.BadRequestError) as aexc:
        claude.messages.create(
            model=served.model,
            max_tokens=2,
            messages=[{"role": "user", "content": "Hi"}],
            extra_body={"decoding": bad},
        )
    assert aexc.value.body["error"]["param"] == "decoding.alpha"
    # A strategy that needs an image names the endpoint and how to send one there.
    for path, body in (
        ("/v1/responses", {"input": "Hi", "max_output_tokens": 2}),
        ("/v1/messages", {"max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
    ):
        r = httpx.post(
            served.url + path,
            json={"model": served.model, "decoding": {"strategy": "vcd"}, **body},
            timeout=60,
        )
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert path in err["message"] and err["param"] == "decoding.strategy"


@pytest.mark.parametrize(
    "path", ["/tokenize", "/invocations", "/v1/chat/completions/batch", "/v1/messages/count_tokens"]
)
def test_decoding_elsewhere_is_refused_naming_the_endpoint(served, path: str) -> None:  # noqa: ANN001
    body = {
        "model": served.model,
        "prompt": "Hi",
        "messages": [{"role": "user", "content": "Hi"}],
        "decoding": {"strategy": "none"},
    }
    r = httpx.post(served.url + path, json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert path in err["message"] and err["param"] == "decoding"
    # The reserved engine keys cannot be smuggled in through a route without strategies.
    body.pop("decoding")
    r = httpx.post(
        served.url + path, json={**body, "vllm_xargs": {"lucid_decoding": "{}"}}, timeout=60
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "vllm_xargs.lucid_decoding"


GENERATION = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"]


@pytest.mark.parametrize("path", [*GENERATION, "/tokenize"])
def test_deep_and_large_bodies_are_4xx(served, path: str) -> None:  # noqa: ANN001
    deep = b'{"model": "m", "messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    r = httpx.post(
        served.url + path, content=deep, headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "nested deeper" in err["message"]
    big = b'{"prompt": "' + b"a" * (5 * 1024 * 1024) + b'"}'  # the fixture allows 4 MiB
    r = httpx.post(
        served.url + path, content=big, headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == 413
    assert httpx.get(served.url + "/health").status_code == 200
