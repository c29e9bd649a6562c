"""The strategy registry and admission of the ``decoding`` object (no server needed)."""

from __future__ import annotations

import json

import pytest

from decoding.strategies import DecodingParamError, available, resolve
from decoding.wire import DECODING_KEY
from server.decoding_api import RequestRejected, admit


def test_none_is_default_and_registered_first() -> None:
    assert available()[0] == "none"
    d = resolve(None)
    assert d.name == "none" and d.as_dict() == {"strategy": "none"}
    assert resolve({}).name == "none"


@pytest.mark.parametrize(
    ("raw", "param", "quoted"),
    [
        ({"strategy": "vdc"}, "decoding.strategy", "'vdc'"),
        ({"strategy": 3}, "decoding.strategy", "3"),
        ("vcd", "decoding", "'vcd'"),
        ({"strategy": "none", "alpha": 1}, "decoding.alpha", "1"),
    ],
)
def test_errors_name_the_parameter_and_quote_the_value(raw, param, quoted) -> None:
    with pytest.raises(DecodingParamError) as exc:
        resolve(raw)
    assert exc.value.param == param
    assert quoted in exc.value.message


def test_unknown_strategy_lists_available_names() -> None:
    with pytest.raises(DecodingParamError) as exc:
        resolve({"strategy": "nope"})
    for name in available():
        assert name in exc.value.message


def test_enabled_subset_is_enforced() -> None:
    names = available()
    if len(names) < 2:
        pytest.skip("only one strategy registered")
    with pytest.raises(DecodingParamError, match="not enabled"):
        resolve({"strategy": names[1]}, enabled=["none"])


def test_admit_moves_decoding_into_vllm_xargs_only_when_needed() -> None:
    body, d = admit(
        {"model": "m", "messages": [], "decoding": {"strategy": "none"}}, "chat", ["none"]
    )
    assert "decoding" not in body and "vllm_xargs" not in body and d.name == "none"
    body, _ = admit({"model": "m", "vllm_xargs": {"k": 1}}, "chat", ["none"])
    assert body["vllm_xargs"] == {"k": 1}


def test_admit_rejects_reserved_key_and_bad_shapes() -> None:
    with pytest.raises(RequestRejected) as exc:
        admit({"vllm_xargs": {DECODING_KEY: "{}"}}, "chat", ["none"])
    assert exc.value.param == f"vllm_xargs.{DECODING_KEY}"
    with pytest.raises(RequestRejected) as exc:
        admit([1, 2], "chat", ["none"])
    assert exc.value.status == 400
    with pytest.raises(RequestRejected) as exc:
        admit({"vllm_xargs": "x"}, "chat", ["none"])
    assert exc.value.param == "vllm_xargs"


def test_admit_carries_full_parameter_set_for_non_baseline() -> None:
    names = [n for n in available() if n != "none"]
    if not names:
        pytest.skip("no strategy with parameters registered")
    name = names[0]
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "x"}},
                {"type": "text", "text": "hi"},
            ],
        }
    ]
    body, d = admit({"messages": msgs, "decoding": {"strategy": name}}, "chat", [name])
    carried = json.loads(body["vllm_xargs"][DECODING_KEY])
    assert carried == d.as_dict() and carried["strategy"] == name


def test_server_strategy_list() -> None:
    from server.cli import parse_strategies

    assert parse_strategies("all") == available()
    assert parse_strategies("none") == ["none"]
    # Registry order and none first, whatever order the flag lists them in.
    assert parse_strategies("var,vcd") == ["none", "vcd", "var"]
    with pytest.raises(SystemExit, match="unknown strategy 'halc'"):
        parse_strategies("none,halc")


def test_strategy_that_needs_an_image_rejects_text_only_requests() -> None:
    from decoding.strategies import get_strategy

    needy = [n for n in available() if get_strategy(n).needs_image]
    if not needy:
        pytest.skip("no registered strategy needs an image")
    name = needy[0]
    text_only = {"messages": [{"role": "user", "content": "hi"}], "decoding": {"strategy": name}}
    with pytest.raises(RequestRejected) as exc:
        admit(text_only, "chat", [name])
    assert exc.value.param == "decoding.strategy" and "image" in exc.value.message
    with pytest.raises(RequestRejected):
        admit({"prompt": "hi", "decoding": {"strategy": name}}, "completion", [name])
