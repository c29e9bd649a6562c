"""Generated request bodies for every generation endpoint, with and without ``decoding``:
no answer is a 5xx, every refusal has an error object, and the server keeps serving.

Bodies start from a valid request of the endpoint's format and replace or add fields
with generated JSON (wrong types, out-of-range numbers, nested junk), including the
``decoding`` object built from the served strategies' parameter names. The run is
derandomized (the same examples in every CI run) and bounded by ``max_examples``;
generated lengths are small so valid requests finish quickly.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decoding.strategies import available, get_strategy
from decoding.testing import synthetic
from decoding.testing.synthetic import data_url

pytestmark = pytest.mark.server

EXAMPLES = 60
IMAGE = data_url(synthetic.sample(7)[0])
B64 = IMAGE.split(",", 1)[1]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 6),
    st.sampled_from([0, -1, 2**31, 2**63, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def base(path: str, model: str) -> dict[str, Any]:
    """A valid small request of the endpoint's own format, with an image where it takes one."""
    if path == "/v1/chat/completions":
        parts = [{"type": "image_url", "image_url": {"url": IMAGE}}, {"type": "text", "text": "Hi"}]
        return {"model": model, "max_tokens": 3, "messages": [{"role": "user", "content": parts}]}
    if path == "/v1/completions":
        return {"model": model, "max_tokens": 3, "prompt": "USER: Hi ASSISTANT:"}
    if path == "/v1/responses":
        parts = [{"type": "input_image", "image_url": IMAGE}, {"type": "input_text", "text": "Hi"}]
        return {
            "model": model,
            "max_output_tokens": 3,
            "input": [{"role": "user", "content": parts}],
        }
    source = {"type": "base64", "media_type": "image/png", "data": B64}
    parts = [{"type": "image", "source": source}, {"type": "text", "text": "Hi"}]
    return {"model": model, "max_tokens": 3, "messages": [{"role": "user", "content": parts}]}


FIELDS = [
    "max_tokens",
    "max_output_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "seed",
    "stop",
    "logprobs",
    "top_logprobs",
    "stream",
    "stream_options",
    "messages",
    "input",
    "prompt",
    "system",
    "vllm_xargs",
    "instructions",
]


@st.composite
def decodings(draw: st.DrawFn) -> Any:
    name = draw(st.sampled_from([*available(), "nope", 3]))
    if not isinstance(name, str) or name not in available():
        return draw(st.one_of(st.just({"strategy": name}), json_values))
    fields = list(get_strategy(name).Params.model_fields)
    keys = draw(st.lists(st.sampled_from([*fields, "extra"]), max_size=3, unique=True))
    # Valid small values often enough that strategies really run (OPERA stays small).
    values = st.one_of(st.integers(1, 3), st.floats(0, 1), st.booleans(), json_values)
    return {"strategy": name, **{k: draw(values) for k in keys}}


@st.composite
def bodies(draw: st.DrawFn, path: str, model: str, with_decoding: bool) -> dict[str, Any]:
    body = base(path, model)
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        body[key] = draw(json_values)
    if with_decoding:
        body["decoding"] = draw(decodings())
    # Keep valid requests short: a generated length above 3 is clipped.
    for key in ("max_tokens", "max_output_tokens"):
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and 3 < v < 2**31:
            body[key] = 3
    return body


def stream_errors(r: httpx.Response) -> list[Any]:
    """Error events of a streamed answer whose code is a server error (or missing)."""
    if not r.headers.get("content-type", "").startswith("text/event-stream"):
        return []
    bad = []
    for line in r.text.splitlines():
        if not line.startswith("data: {"):
            continue
        obj = json.loads(line[6:])
        err = obj.get("error") if isinstance(obj, dict) else None
        if obj.get("type") == "error" and err is None:
            err = obj  # Responses API error event
        if isinstance(err, dict) and not (isinstance(err.get("code"), int) and err["code"] < 500):
            bad.append(err)
    return bad


def send(served: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    with httpx.stream("POST", served.url + path, json=body, timeout=120) as r:
        r.read()  # streamed answers too: a 5xx can only show mid-stream as an error event
    return r


@pytest.mark.parametrize("with_decoding", [False, True], ids=["plain", "decoding"])
@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"]
)
def test_generated_bodies_never_get_a_5xx(served, path: str, with_decoding: bool) -> None:  # noqa: ANN001
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=bodies(path, served.model, with_decoding))
    def check(body: dict[str, Any]) -> None:
        r = send(served, path, body)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (body, r.text[:500])
        if r.status_code >= 400:
            assert isinstance(r.json().get("error"), dict), r.text[:500]
        else:
            assert not stream_errors(r), (body, stream_errors(r))

    check()
    assert any(code < 400 for code in seen), seen  # some generated requests were served
    assert any(code >= 400 for code in seen), seen  # and some refused
    assert httpx.get(served.url + "/health", timeout=30).status_code == 200
