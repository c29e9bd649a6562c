"""The real server through the official ``openai`` client and raw HTTP."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from decoding.testing import parity, synthetic
from tests.conftest import image_data_url, image_message

pytestmark = pytest.mark.server


def chat(served, img, prompt: str, **kw):  # noqa: ANN001, ANN201
    kw.setdefault("max_tokens", 16)
    kw.setdefault("temperature", 0)
    return served.client().chat.completions.create(
        model=served.model, messages=image_message(img, prompt), **kw
    )


def test_models_health_version(served) -> None:  # noqa: ANN001
    models = served.client().models.list().data
    assert [m.id for m in models] == [served.model]
    assert httpx.get(served.url + "/health").status_code == 200
    v = httpx.get(served.url + "/version").json()
    assert v["vllm_version"] == "0.32.0" and "none" in v["strategies"]
    listed = httpx.get(served.url + "/v1/decoding/strategies").json()["data"]
    assert listed[0]["strategy"] == "none"


def test_chat_with_image_is_greedy_deterministic_and_echoes_decoding(served) -> None:  # noqa: ANN001
    img = synthetic.sample(1000)[0]
    a = chat(served, img, "Describe the image.")
    b = chat(served, img, "Describe the image.", extra_body={"decoding": {"strategy": "none"}})
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content.strip()
    assert a.model_extra["decoding"] == {"strategy": "none"}
    assert a.usage.prompt_tokens > 64  # the image expanded into its tokens


def test_output_depends_on_image_and_prompt(served) -> None:  # noqa: ANN001
    imgs = [synthetic.sample(s)[0] for s in (1000, 1001, 1002)]
    prompts = ["Describe the image.", "What is the background colour?"]
    out = {
        (i, p): chat(served, img, p).choices[0].message.content
        for i, img in enumerate(imgs)
        for p in prompts
    }
    assert len({out[0, p] for p in prompts}) == 2
    assert len({out[i, prompts[0]] for i in range(3)}) >= 2


def test_streaming_matches_non_streaming(served) -> None:  # noqa: ANN001
    img = synthetic.sample(1001)[0]
    full = chat(served, img, "Describe the image.").choices[0].message.content
    stream = chat(
        served, img, "Describe the image.", stream=True, stream_options={"include_usage": True}
    )
    parts, usage, echoes = [], None, []
    for chunk in stream:
        echoes.append(chunk.model_extra.get("decoding"))
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(parts) == full
    assert usage is not None and usage.completion_tokens > 0
    assert all(e == {"strategy": "none"} for e in echoes)


def test_n_and_seeds(served) -> None:  # noqa: ANN001
    img = synthetic.sample(1002)[0]
    kw = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 12}
    r = chat(served, img, "Describe the image.", n=3, seed=7, **kw)
    assert len(r.choices) == 3
    again = chat(served, img, "Describe the image.", n=3, seed=7, **kw)
    assert [c.message.content for c in r.choices] == [c.message.content for c in again.choices]
    texts = {
        chat(served, img, "Describe the image.", seed=s, **kw).choices[0].message.content
        for s in range(6)
    }
    assert len(texts) > 1  # sampling really samples


def test_logprobs(served) -> None:  # noqa: ANN001
    r = chat(
        served,
        synthetic.sample(3)[0],
        "Is there a circle in the image?",
        logprobs=True,
        top_logprobs=3,
        max_tokens=4,
    )
    content = r.choices[0].logprobs.content
    assert content and len(content[0].top_logprobs) == 3
    assert content[0].logprob == pytest.approx(content[0].top_logprobs[0].logprob, abs=1e-4)


def test_text_completions(served) -> None:  # noqa: ANN001
    r = served.client().completions.create(
        model=served.model, prompt="USER: Hello ASSISTANT:", max_tokens=5, temperature=0
    )
    assert r.choices[0].text and r.model_extra["decoding"] == {"strategy": "none"}


def post(served, body: bytes | dict) -> httpx.Response:  # noqa: ANN001
    if isinstance(body, dict):
        return httpx.post(served.base_url + "/chat/completions", json=body, timeout=60)
    return httpx.post(
        served.base_url + "/chat/completions",
        content=body,
        timeout=60,
        headers={"content-type": "application/json"},
    )


def bad_image_url(kind: str) -> str:
    if kind == "corrupt":
        return "data:image/png;base64," + base64.b64encode(b"\x89PNG not really").decode()
    img = Image.effect_noise((1400, 1400), 80).convert("RGB")  # incompressible: ~6 MB
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    ("decoding", "status", "param"),
    [
        ({"strategy": "no-such"}, 400, "decoding.strategy"),
        ({"strategy": 5}, 400, "decoding.strategy"),
        ("none", 400, "decoding"),
        ({"strategy": "none", "alpha": 1.0}, 400, "decoding.alpha"),
        ({"strategy": "vcd", "beta": 2.0}, 400, "decoding.beta"),
    ],
)
def test_bad_decoding_objects(served, decoding, status: int, param: str) -> None:  # noqa: ANN001
    body = {
        "model": served.model,
        "max_tokens": 2,
        "decoding": decoding,
        "messages": image_message(synthetic.sample(1)[0], "Hi"),
    }
    r = post(served, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["code"] == status
    with pytest.raises(openai.BadRequestError) as exc:
        served.client().chat.completions.create(
            model=served.model,
            messages=body["messages"],
            max_tokens=2,
            extra_body={"decoding": decoding},
        )
    assert exc.value.body["param"] == param


def test_malformed_and_bad_images_keep_the_server_serving(served) -> None:  # noqa: ANN001
    r = post(served, b'{"model": "x", "messages": [')
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = post(served, b"[1, 2]")
    assert r.status_code == 400
    for kind, expected in (("corrupt", 400), ("oversized", 413)):
        msgs = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": bad_image_url(kind)}},
                    {"type": "text", "text": "Describe the image."},
                ],
            }
        ]
        r = post(served, {"model": served.model, "messages": msgs, "max_tokens": 2})
        assert r.status_code == expected, (kind, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = post(
        served,
        {"model": served.model, "max_tokens": 2, "messages": [{"role": "user", "content": 3}]},
    )
    assert 400 <= r.status_code < 500
    assert httpx.get(served.url + "/health").status_code == 200
    ok = chat(served, synthetic.sample(5)[0], "Describe the image.")
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_metrics_have_vllm_and_product_series(served) -> None:  # noqa: ANN001
    chat(served, synthetic.sample(6)[0], "Describe the image.", max_tokens=3)
    post(served, {"model": served.model, "messages": [], "decoding": {"strategy": "zzz"}})
    text = httpx.get(served.url + "/metrics").text
    for name in (
        "vllm:num_requests_running",
        "vllm:e2e_request_latency_seconds_bucket",
        "lucid:build_info",
        "lucid:time_to_first_token_seconds_bucket",
        "lucid:e2e_request_latency_seconds_bucket",
        "lucid:extra_forward_tokens_total",
    ):
        assert name in text, name
    assert 'lucid:requests_total{finished_reason="length",' in text
    assert 'strategy="none"' in text
    assert 'lucid:request_errors_total{error_type="BadRequestError",' in text
    assert 'strategy="invalid"' in text


def test_image_url_in_data_form_roundtrip() -> None:
    url = image_data_url(synthetic.sample(1)[0])
    raw = base64.b64decode(url.split(",", 1)[1])
    assert Image.open(io.BytesIO(raw)).size == (112, 112)


_gauge = parity.metric


def test_client_disconnect_releases_the_engine_request(served) -> None:  # noqa: ANN001
    import time

    body = {
        "model": served.model,
        "max_tokens": 1500,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "messages": image_message(synthetic.sample(8)[0], "Describe."),
    }
    before = httpx.get(served.url + "/metrics").text
    aborted = 'lucid:requests_total{finished_reason="abort"'
    with httpx.stream("POST", served.base_url + "/chat/completions", json=body, timeout=60) as r:
        for _ in r.iter_lines():
            break  # one chunk, then hang up
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = httpx.get(served.url + "/metrics").text
        if (
            _gauge(text, "vllm:num_requests_running") == 0
            and aborted in text
            and (_gauge(text, "lucid:requests_total") > _gauge(before, "lucid:requests_total"))
        ):
            break
        time.sleep(0.5)
    assert _gauge(text, "vllm:num_requests_running") == 0
    assert aborted in text
    assert httpx.get(served.url + "/health").status_code == 200
