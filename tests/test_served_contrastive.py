"""VCD, DAMRO and AVC served in the engine: parity with the reference engine over HTTP,
sampling log-probabilities, alpha = 0, cancellation, parameters and metrics.

The probe cases are held-out scenes of the synthetic world whose prior partner is absent
(:func:`decoding.testing.parity.cases`), where the strategies change answers: parity is
checked where it matters, and each strategy's effect there is asserted."""

from __future__ import annotations

import asyncio
import math
import time

import httpx
import openai
import pytest

from decoding.testing import parity, synthetic

pytestmark = pytest.mark.server

CONTRASTIVE = ("vcd", "damro", "avc")
MAX_TOKENS = 32
#: Least share of the 16 probe answers each strategy changes at its defaults. Measured on
#: the recipe-5 tiny checkpoint: DAMRO 5 of 16, AVC 3 of 16, VCD 1 of 16 (the probes mix
#: four prompts; VCD acts on captions: tests/test_tiny_llava.py measures it on 40).
MIN_CHANGED = {"damro": 0.25, "avc": 0.18}  # at least 4 and 3 of 16; VCD at least 1


token_ids = parity.token_ids


def request(served, case: parity.Case, decoding: dict, **kw) -> dict:  # noqa: ANN001
    return {**parity.chat_request(served.model, case, decoding, MAX_TOKENS), **kw}


def check(model_dir, results: list[tuple[parity.Case, str, list[int]]]) -> None:  # noqa: ANN001
    verdicts = [
        parity.compare(case, served, parity.reference(model_dir, case, {"strategy": s}, MAX_TOKENS))
        for case, s, served in results
    ]
    bad, ties = parity.judge(verdicts)
    if ties:
        print(f"numerical ties (excused): {parity.describe(ties)}")
    assert not bad, parity.describe(bad)


@pytest.fixture(scope="module")
def alone(served) -> dict[str, list[list[int]]]:  # noqa: ANN001
    """Served greedy answers to the probe cases, one request at a time, per strategy."""
    client = served.client()
    return {
        s: [
            token_ids(
                client.chat.completions.create(**request(served, case, {"strategy": s})).choices[0]
            )
            for case in parity.cases(16)
        ]
        for s in ("none", *CONTRASTIVE)
    }


@pytest.mark.parametrize("strategy", CONTRASTIVE)
def test_parity_one_at_a_time(served, tiny_llava_dir, alone, strategy: str) -> None:  # noqa: ANN001
    cases = parity.cases(16)
    check(
        tiny_llava_dir, [(c, strategy, ids) for c, ids in zip(cases, alone[strategy], strict=True)]
    )


@pytest.mark.parametrize("strategy", CONTRASTIVE)
def test_defaults_change_a_share_of_answers(alone, strategy: str) -> None:  # noqa: ANN001
    changed = [a != b for a, b in zip(alone[strategy], alone["none"], strict=True)]
    print(f"{strategy}: {sum(changed)}/{len(changed)} greedy answers changed")
    assert sum(changed) >= max(1, MIN_CHANGED.get(strategy, 0) * len(changed)), changed


def test_parity_all_in_flight_mixed(served, tiny_llava_dir) -> None:  # noqa: ANN001
    """16 cases x (none, vcd, damro, avc) at once: 64 answers in one batch mix."""
    cases = parity.cases(16)
    client = openai.AsyncOpenAI(base_url=served.base_url, api_key="t", max_retries=0)

    async def go() -> list:
        jobs = [
            client.chat.completions.create(**request(served, case, {"strategy": s}))
            for case in cases
            for s in ("none", *CONTRASTIVE)
        ]
        return await asyncio.gather(*jobs)

    out = asyncio.run(go())
    labels = [(case, s) for case in cases for s in ("none", *CONTRASTIVE)]
    check(
        tiny_llava_dir,
        [(c, s, token_ids(r.choices[0])) for (c, s), r in zip(labels, out, strict=True)],
    )


@pytest.mark.parametrize("strategy", CONTRASTIVE)
def test_seeded_sampling_logprobs_are_the_combined_distribution(
    served, tiny_llava_dir, strategy: str
) -> None:  # noqa: ANN001
    client = served.client()
    for case in parity.cases(3, first_seed=400):
        body = request(served, case, {"strategy": strategy}, temperature=1.0, seed=7)
        r = client.chat.completions.create(**body)
        again = client.chat.completions.create(**body)
        ids = token_ids(r.choices[0])
        assert ids == token_ids(again.choices[0])  # the seed makes it reproducible
        ref = parity.reference(
            tiny_llava_dir,
            case,
            {"strategy": strategy},
            MAX_TOKENS,
            temperature=1.0,
            forced_tokens=ids,
        )
        served_lp = [t.logprob for t in r.choices[0].logprobs.content]
        assert len(served_lp) == len(ref.logprobs)
        for a, b in zip(served_lp, ref.logprobs, strict=True):
            assert math.isclose(a, b, abs_tol=1e-3), (a, b)


@pytest.mark.parametrize("strategy", CONTRASTIVE)
def test_alpha_zero_is_none(served, strategy: str) -> None:  # noqa: ANN001
    client = served.client()
    for case in parity.cases(4, first_seed=500):
        plain = client.chat.completions.create(**request(served, case, {"strategy": "none"}))
        zero = client.chat.completions.create(
            **request(served, case, {"strategy": strategy, "alpha": 0.0})
        )
        assert token_ids(zero.choices[0]) == token_ids(plain.choices[0])


def test_streaming_n_and_stop(served) -> None:  # noqa: ANN001
    client = served.client()
    case = parity.cases(1, first_seed=600)[0]
    whole = client.chat.completions.create(**request(served, case, {"strategy": "vcd"}))
    text = whole.choices[0].message.content
    body = request(served, case, {"strategy": "vcd"})
    body.pop("logprobs")
    chunks = list(client.chat.completions.create(**body, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason is not None
    many = client.chat.completions.create(**{**body, "n": 2, "temperature": 0.8, "seed": 3})
    assert [c.index for c in many.choices] == [0, 1]
    assert all(c.message.content for c in many.choices)
    stop_word = text.split()[2]
    stopped = client.chat.completions.create(**{**body, "stop": [stop_word]})
    assert stopped.choices[0].finish_reason == "stop"
    assert stop_word not in stopped.choices[0].message.content


@pytest.mark.parametrize(
    ("decoding", "param"),
    [
        ({"strategy": "vcd", "alpha": -1}, "decoding.alpha"),
        ({"strategy": "damro", "top_k": 0}, "decoding.top_k"),
        ({"strategy": "avc", "gamma": 2}, "decoding.gamma"),
        ({"strategy": "avc", "mask": "noise"}, "decoding.mask"),
        ({"strategy": "vcd", "noise_step": 1000}, "decoding.noise_step"),
    ],
)
def test_bad_parameters_are_400(served, decoding: dict, param: str) -> None:  # noqa: ANN001
    body = {
        "model": served.model,
        "max_tokens": 2,
        "decoding": decoding,
        "messages": synthetic.chat_messages(synthetic.sample(1)[0], "Hi"),
    }
    r = httpx.post(served.base_url + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


_metric = parity.metric


@pytest.mark.parametrize("strategy", CONTRASTIVE)
def test_disconnect_releases_both_requests_and_cache(served, strategy: str) -> None:  # noqa: ANN001
    body = {
        "model": served.model,
        "max_tokens": 1500,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "decoding": {"strategy": strategy},
        "messages": synthetic.chat_messages(synthetic.sample(9)[0], "Describe."),
    }
    before = httpx.get(served.url + "/metrics").text
    with httpx.stream("POST", served.base_url + "/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for i, _ in enumerate(r.iter_lines()):
            if i > 5:
                break  # a few chunks, then hang up
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = httpx.get(served.url + "/metrics").text
        if (
            _metric(text, "vllm:num_requests_running") == 0
            and _metric(text, "vllm:num_requests_waiting") == 0
            and _metric(text, "vllm:kv_cache_usage_perc") == 0
        ):
            break
        time.sleep(0.5)
    assert _metric(text, "vllm:num_requests_running") == 0
    assert _metric(text, "vllm:kv_cache_usage_perc") == 0
    spent = _metric(text, "lucid:extra_forward_tokens_total", strategy=strategy)
    assert spent > _metric(before, "lucid:extra_forward_tokens_total", strategy=strategy)
    assert httpx.get(served.url + "/health").status_code == 200


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"use_beam_search": True, "n": 2}, "use_beam_search"),
        ({"prompt_logprobs": 1}, "prompt_logprobs"),
    ],
)
def test_unsupported_options_are_400(served, extra: dict, param: str) -> None:  # noqa: ANN001
    body = {
        "model": served.model,
        "max_tokens": 2,
        "decoding": {"strategy": "damro"},
        "messages": synthetic.chat_messages(synthetic.sample(1)[0], "Hi"),
        **extra,
    }
    r = httpx.post(served.base_url + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"]
