"""Model profiles: the bundled values and the lookup from a checkpoint config."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlavaConfig

from decoding.profiles import available, load_profile, profile_for
from decoding.testing.tiny_llava import TINY_SINK_DIMS


def test_bundled_profiles() -> None:
    assert available() == [
        "llava-1.5-13b",
        "llava-1.5-7b",
        "llava-onevision-qwen2-7b-ov",
        "llava-v1.6-mistral-7b",
        "llava-v1.6-vicuna-7b",
        "qwen2.5-vl-3b-instruct",
        "qwen2.5-vl-7b-instruct",
        "qwen3-vl-8b-instruct",
        "tiny-llava",
        "tiny-llava-next",
        "tiny-llava-onevision",
        "tiny-qwen2.5-vl",
        "tiny-qwen3-vl",
    ]
    p7 = load_profile("llava-1.5-7b")
    assert p7.sink_dims == (1415, 2533) and p7.sink_tau == 20.0
    assert p7.var_layer_set() == list(range(2, 31))  # layers 2..30, last layer untouched
    assert (p7.image_token_id, p7.vision_feature_layer, p7.image_tokens) == (32000, -2, 576)
    p13 = load_profile("llava-1.5-13b")
    assert p13.sink_dims == (2100, 4743) and p13.var_layers == (2, 39)
    assert load_profile("tiny-llava").sink_dims == tuple(TINY_SINK_DIMS)
    with pytest.raises(KeyError):
        load_profile("llava-9b")


def test_lookup_by_text_shape_and_config_values_win() -> None:
    cfg = LlavaConfig(text_config=LlamaConfig(hidden_size=5120, num_hidden_layers=40))
    cfg.image_token_id = 32001
    prof = profile_for(cfg)
    assert prof.name == "llava-1.5-13b" and prof.image_token_id == 32001
    tiny = LlavaConfig(text_config=LlamaConfig(hidden_size=128, num_hidden_layers=4))
    with pytest.raises(KeyError):
        profile_for(tiny)
    tiny.sink_dims = [5, 9]
    prof = profile_for(tiny)
    assert prof.name == "tiny-llava" and prof.sink_dims == (5, 9)
