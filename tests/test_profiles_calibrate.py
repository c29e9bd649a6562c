"""Model profiles of real checkpoints, their lookup, and the VAR calibration command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlavaConfig, LlavaNextConfig, Qwen2_5_VLConfig

from decoding.cores import var as var_core
from decoding.profiles import (
    CALIBRATE,
    VARUncalibrated,
    available,
    load_profile,
    load_profile_file,
    profile_for,
)
from decoding.profiles import calibrate as cal
from decoding.profiles import sinkdims as rule
from decoding.profiles.configs import FAMILIES

# --- the core rule on hand-sized tensors -------------------------------------------------


def test_peaks_are_var_phi_per_dimension() -> None:
    hidden = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    # token 0: RMS sqrt(25/4) = 2.5 -> |x|/RMS = 1.2, 1.6, 0, 0; token 1: RMS 1 -> 0, 0, 0, 2
    assert torch.allclose(rule.dim_peaks(hidden), torch.tensor([1.2, 1.6, 0.0, 2.0]), atol=1e-5)
    # phi over {1, 3} per token is what VAR thresholds
    phi = rule.normalised(hidden)[:, [1, 3]].max(dim=-1).values
    assert torch.allclose(phi, var_core.sink_scores(hidden, (1, 3)))


def test_massive_is_relative_to_the_median_peak() -> None:
    peaks = torch.tensor([1.0, 2.0, 1.0, 9.0, 3.0])  # median 2
    assert rule.massive(peaks, 3.0).tolist() == [False, False, False, True, False]  # >= 6
    assert rule.massive(peaks, 1.5).tolist() == [False, False, False, True, True]  # >= 3
    rows = torch.tensor([[1.0, 2.0, 1.0, 9.0, 3.0], [8.0, 2.0, 2.0, 2.0, 2.0]])
    assert rule.massive(rows, 3.0).tolist() == [
        [False, False, False, True, False],
        [True, False, False, False, False],
    ]


def test_sink_dims_need_consistency_across_observations() -> None:
    base = [1.0, 1.0, 1.0, 10.0, 1.0]
    rows = torch.tensor([base, base, base, base])
    rows[0, 0] = rows[1, 0] = 10.0  # dim 0 massive in 2 of 4
    rows[2, 1] = 10.0  # dim 1 in 1 of 4
    assert rule.sink_dims(rows, 3.0, 0.5) == (0, 3)
    assert rule.sink_dims(rows, 3.0, 0.75) == (3,)
    ranked = rule.rank_dims(rows, 3.0, top=3)
    assert [(s.dim, s.share) for s in ranked] == [(3, 1.0), (0, 0.5), (1, 0.25)]
    assert ranked[0].mean_peak == 10.0 and ranked[1].max_peak == 10.0


def test_layer_range_starts_where_the_dims_appear_never_at_layer_0() -> None:
    quiet, loud = [1.0, 1.0, 1.0], [1.0, 9.0, 1.0]
    by_layer = {
        0: torch.tensor([loud, loud]),  # embeddings: never edited
        1: torch.tensor([quiet, loud]),  # 50%
        2: torch.tensor([loud, loud]),
        3: torch.tensor([loud, loud]),
        4: torch.tensor([loud, loud]),
    }
    shares = rule.layer_shares(by_layer, (1,), 3.0)
    assert shares == {0: 1.0, 1: 0.5, 2: 1.0, 3: 1.0, 4: 1.0}
    assert rule.var_layers(shares, 5, 0.5) == (1, 4)
    assert rule.var_layers(shares, 5, 0.75) == (2, 4)  # the last layer (4) is not edited
    assert rule.var_layers({0: 1.0, 1: 0.0, 2: 0.0}, 3, 0.5) is None


def test_tau_is_ratio_times_the_bulk_level() -> None:
    peaks = torch.tensor([[1.0, 2.0, 9.0], [3.0, 3.0, 9.0], [4.0, 4.0, 9.0]])
    assert rule.bulk_level(peaks) == 3.0  # row medians 2, 3, 4 -> 3
    assert rule.derive_tau(peaks, 3.0) == 9.0


def test_tau_report_margins() -> None:
    rows = [
        (torch.tensor([10.0, 1.0, 7.0, 2.0]), torch.tensor([False, False, True, True])),
        (torch.tensor([8.0, 6.0, 3.0]), torch.tensor([False, True, False])),
    ]
    rep = rule.tau_report(rows, 5.0)
    assert rep.first_token_min == 8.0  # the first token of each observation: 10, 8
    assert rep.image_share == pytest.approx(2 / 3)  # 7, 2, 6
    assert rep.text_share == 0.0  # 1, 3
    assert (rep.below, rep.above) == (3.0, 6.0)
    assert rep.near == 0.0  # nothing within 4.5..5.5


def _observations(planted: tuple[int, ...], layers: int, prompts: int) -> list[cal.Observation]:
    """Random residual streams with massive ``planted`` dims on the first token and on two
    image tokens, from layer 1 on (layer 0 is plain, like token embeddings)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    image = torch.zeros(20, dtype=torch.bool)
    image[5:15] = True
    for p in range(prompts):
        for layer in range(layers):
            hidden = torch.randn(20, 256, generator=gen)
            if layer >= 1:
                for d in planted:
                    hidden[0, d] = 40.0
                    hidden[7, d] = 30.0
                    hidden[9, d] = -30.0
            peaks, top, values = cal.summarise(hidden, top_k=8)
            out.append(cal.Observation(layer, p, peaks, top, values, image))
    return out


def test_calibration_of_recorded_observations() -> None:
    obs = _observations((5, 11), layers=6, prompts=3)
    result = cal.calibrate_observations(obs, num_layers=6, ratio=3.0, min_share=0.5)
    assert result.dims == (5, 11)
    assert result.layers == (1, 5)
    assert result.layer_shares[0] == 0.0 and result.layer_shares[1] == 1.0
    assert result.prompts == 3 and result.approximate == 0
    assert result.tau == pytest.approx(3.0 * result.bulk)
    rep = result.report
    assert rep is not None and rep.first_token_min > result.tau
    assert rep.image_share == pytest.approx(0.2)  # tokens 7 and 9 of 10 image tokens
    given = cal.calibrate_observations(obs, 6, 3.0, 0.5, tau=20.0)
    assert given.tau == 20.0 and given.tau_given


# --- the command on the tiny checkpoint --------------------------------------------------


def _write_images(folder: Path, count: int) -> Path:
    from decoding.testing import synthetic

    folder.mkdir()
    for seed in range(count):
        img, _ = synthetic.sample(seed)
        img.save(folder / f"{seed:02d}.png")
    return folder


def _run(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> dict:
    images = _write_images(tmp_path / "images", 6)
    out = tmp_path / "profile.json"
    rc = cal.main([str(model_dir), "--images", str(images), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "D_sink" in printed and "massive in" in printed
    assert rc == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_command_recovers_the_tiny_llava_sink_dims(
    tiny_llava_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from decoding.testing.tiny_llava import TINY_SINK_DIMS

    data = _run(tiny_llava_dir, tmp_path, capsys)
    var = data["var"]
    assert tuple(var["sink_dims"]) == TINY_SINK_DIMS == (17, 93)
    assert var["layers"] == [1, 3]
    assert 3.0 < var["tau"] < 8.0  # below the BOS score (~8), above the bulk (~2)
    assert var["source"].startswith("calibrated: python -m decoding.profiles.calibrate")
    assert var["calibration"]["images"] == 6 and var["calibration"]["prompts"] == 3
    prof = load_profile_file(tmp_path / "profile.json")
    assert prof.var_calibrated and prof.family == "llava-1.5" and prof.name == "tiny-llava"


OTHER_FAMILIES = ("llava-next", "llava-onevision", "qwen2.5-vl", "qwen3-vl")


@pytest.mark.slow
@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_command_recovers_planted_dims_of_other_families(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tiny_models = pytest.importorskip("decoding.testing.tiny_models")
    ensure = getattr(tiny_models, "ensure_tiny", None)
    if ensure is None:
        pytest.skip("decoding.testing.tiny_models has no ensure_tiny yet")
    try:
        model_dir = Path(ensure(family))
    except KeyError as exc:  # the builder does not know this family (yet)
        pytest.skip(str(exc))
    planted = json.loads((model_dir / "config.json").read_text())["sink_dims"]
    data = _run(model_dir, tmp_path, capsys)
    assert data["var"]["sink_dims"] == sorted(planted)
    assert data["family"] == family


# --- lookup: every real checkpoint, minimal configs --------------------------------------


def _llava(model_type: str, arch: str, text_type: str, hidden: int, layers: int, token: int):
    return {
        "architectures": [arch],
        "model_type": model_type,
        "image_token_index": token,
        "vision_feature_layer": -2 if model_type != "llava_onevision" else -1,
        "text_config": {
            "model_type": text_type,
            "hidden_size": hidden,
            "num_hidden_layers": layers,
        },
    }


CONFIGS: dict[str, dict] = {
    "llava-1.5-7b": _llava("llava", "LlavaForConditionalGeneration", "llama", 4096, 32, 32000),
    "llava-1.5-13b": _llava("llava", "LlavaForConditionalGeneration", "llama", 5120, 40, 32000),
    "llava-v1.6-vicuna-7b": _llava(
        "llava_next", "LlavaNextForConditionalGeneration", "llama", 4096, 32, 32000
    ),
    "llava-v1.6-mistral-7b": _llava(
        "llava_next", "LlavaNextForConditionalGeneration", "mistral", 4096, 32, 32000
    ),
    "llava-onevision-qwen2-7b-ov": _llava(
        "llava_onevision", "LlavaOnevisionForConditionalGeneration", "qwen2", 3584, 28, 151646
    ),
    # Qwen2.5-VL's config.json keeps the text fields at the top level
    "qwen2.5-vl-3b-instruct": {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "hidden_size": 2048,
        "num_hidden_layers": 36,
        "image_token_id": 151655,
    },
    "qwen2.5-vl-7b-instruct": {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "hidden_size": 3584,
        "num_hidden_layers": 28,
        "image_token_id": 151655,
    },
    "qwen3-vl-8b-instruct": {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "image_token_id": 151655,
        "text_config": {
            "model_type": "qwen3_vl_text",
            "hidden_size": 4096,
            "num_hidden_layers": 36,
        },
    },
}


def _real() -> list[str]:
    return [n for n in available() if not n.startswith("tiny-")]


def test_every_real_profile_has_a_config_case() -> None:
    assert sorted(CONFIGS) == _real()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lookup_of_each_real_checkpoint(name: str) -> None:
    prof = profile_for(CONFIGS[name])
    assert prof.name == name
    assert prof.family in FAMILIES and prof.family == load_profile(name).family
    token = CONFIGS[name].get("image_token_index", CONFIGS[name].get("image_token_id"))
    assert prof.image_token_id == token


def test_three_4096x32_checkpoints_map_to_three_profiles() -> None:
    names = {profile_for(CONFIGS[n]).name for n in ("llava-1.5-7b", "llava-v1.6-vicuna-7b")}
    names.add(profile_for(CONFIGS["llava-v1.6-mistral-7b"]).name)
    assert names == {"llava-1.5-7b", "llava-v1.6-vicuna-7b", "llava-v1.6-mistral-7b"}


def test_published_configs_through_transformers() -> None:
    """``config.json`` as published (7B text configs omit hidden size and depth), loaded
    through the config classes: the defaults fill them in and the lookup still holds."""
    vicuna = {"model_type": "llama", "vocab_size": 32064}
    mistral = {"model_type": "mistral", "vocab_size": 32064, "num_key_value_heads": 8}
    llava = LlavaConfig(text_config=vicuna, image_token_index=32000)
    assert profile_for(llava).name == "llava-1.5-7b"
    assert profile_for(LlavaNextConfig(text_config=vicuna)).name == "llava-v1.6-vicuna-7b"
    assert profile_for(LlavaNextConfig(text_config=mistral)).name == "llava-v1.6-mistral-7b"
    qwen = Qwen2_5_VLConfig(hidden_size=3584, num_hidden_layers=28, image_token_id=151655)
    assert profile_for(qwen).name == "qwen2.5-vl-7b-instruct"


def test_served_architecture_names_and_ambiguity() -> None:
    # The server renames architectures to its hooked classes; model_type may be absent.
    hooked = dict(CONFIGS["llava-v1.6-vicuna-7b"])
    hooked["architectures"] = ["LucidLlavaNextForConditionalGeneration"]
    del hooked["model_type"]
    assert profile_for(hooked).name == "llava-v1.6-vicuna-7b"
    vague = dict(CONFIGS["llava-v1.6-vicuna-7b"])
    vague["text_config"] = {"hidden_size": 4096, "num_hidden_layers": 32}
    with pytest.raises(KeyError, match="several"):
        profile_for(vague)  # vicuna or mistral: refuse to guess
    with pytest.raises(KeyError, match="no model profile"):
        profile_for(dict(CONFIGS["qwen3-vl-8b-instruct"], text_config={"hidden_size": 999}))


def test_sources_and_uncalibrated_var() -> None:
    for name in _real():
        prof = load_profile(name)
        assert prof.checkpoint and prof.var_source
        assert {"match", "image_token_id", "vision_feature_layer", "image_tokens"} <= set(
            prof.sources
        )
        if not prof.var_calibrated:
            assert prof.sink_dims == () and prof.sink_tau is None
            assert "not published" in prof.var_source
    calibrated = {n for n in _real() if load_profile(n).var_calibrated}
    assert calibrated == {"llava-1.5-7b", "llava-1.5-13b"}


def test_uncalibrated_profile_names_the_calibration_command() -> None:
    prof = profile_for(CONFIGS["qwen2.5-vl-7b-instruct"])
    assert not prof.var_calibrated
    message = prof.var_missing_reason()
    assert CALIBRATE in message and "Qwen/Qwen2.5-VL-7B-Instruct" in message
    assert "PROFILES/qwen2.5-vl-7b-instruct.json" in message and "LUCID_PROFILES" in message
    with pytest.raises(VARUncalibrated, match="decoding.profiles.calibrate"):
        prof.require_var()
    assert isinstance(VARUncalibrated("x"), ValueError)
    ok = profile_for(CONFIGS["llava-1.5-7b"])
    assert ok.var_calibrated and ok.var_missing_reason() == ""
    ok.require_var()


def test_a_calibrated_profile_in_lucid_profiles_wins(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import json

    from decoding.profiles import PROFILES_ENV, resources

    bundled = json.loads(
        (resources.files("decoding.profiles") / "qwen2.5-vl-7b-instruct.json").read_text()
    )
    bundled["var"] = {**bundled["var"], "sink_dims": [458, 2570], "tau": 20.0, "source": "calib"}
    (tmp_path / "qwen2.5-vl-7b-instruct.json").write_text(json.dumps(bundled))
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path))
    prof = profile_for(CONFIGS["qwen2.5-vl-7b-instruct"])
    assert prof.var_calibrated and prof.sink_dims == (458, 2570) and prof.sink_tau == 20.0
    monkeypatch.delenv(PROFILES_ENV)
    assert not profile_for(CONFIGS["qwen2.5-vl-7b-instruct"]).var_calibrated


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tiny_checkpoints_of_every_family(family: str) -> None:
    model_type, arch = FAMILIES[family]
    cfg = {
        "architectures": [arch],
        "model_type": model_type,
        "sink_dims": [17, 93],
        "image_token_id": 7,
        "text_config": {"hidden_size": 128, "num_hidden_layers": 6},
    }
    prof = profile_for(cfg)
    assert prof.family == family and prof.name.startswith("tiny-")
    assert prof.sink_dims == (17, 93) and prof.sink_tau == 6.0 and prof.var_calibrated
    assert prof.var_layers == (1, 5)  # layer 0 and the last of 6 layers are not edited
    assert prof.image_token_id == 7
    assert profile_for(dict(cfg, sink_tau=4.5)).sink_tau == 4.5


def _random_model(family: str) -> torch.nn.Module:
    """A random-weight model of ``family``'s structure (no processor, no download)."""
    import transformers as tf

    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    clip = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    vit = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    mrope = {"mrope_section": [2, 3, 3]}
    configs = {
        "llava-1.5": lambda: tf.LlavaConfig(
            text_config=tf.LlamaConfig(**text), vision_config=tf.CLIPVisionConfig(**clip)
        ),
        "llava-next": lambda: tf.LlavaNextConfig(
            text_config=tf.LlamaConfig(**text), vision_config=tf.CLIPVisionConfig(**clip)
        ),
        "llava-onevision": lambda: tf.LlavaOnevisionConfig(
            text_config=tf.Qwen2Config(**text), vision_config=tf.SiglipVisionConfig(**clip)
        ),
        "qwen2.5-vl": lambda: tf.Qwen2_5_VLConfig(
            text_config=dict(text, rope_scaling={"type": "mrope", **mrope}),
            vision_config=dict(vit, fullatt_block_indexes=[1]),
        ),
        "qwen3-vl": lambda: tf.Qwen3VLConfig(
            text_config=dict(
                text,
                head_dim=16,
                rope_scaling={"rope_type": "default", "mrope_interleaved": True, **mrope},
            ),
            vision_config=dict(vit, deepstack_visual_indexes=[1], num_position_embeddings=16),
        ),
    }
    return tf.AutoModelForImageTextToText.from_config(configs[family]()).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decoder_layers_are_found_in_every_family(family: str) -> None:
    model = _random_model(family)
    layers = cal.decoder_layers(model, 3)
    assert [n for n, m in model.named_modules() if m is layers] == ["model.language_model.layers"]
    embeds: list[torch.Tensor] = []
    model.get_input_embeddings().register_forward_hook(lambda m, a, out: embeds.append(out))
    with cal.recording(layers, top_k=4) as seen, torch.inference_mode():
        model(input_ids=torch.tensor([[1, 2, 3, 4, 5]]), use_cache=False)
    assert sorted(seen) == [0, 1, 2]
    peaks, top, values = seen[0]
    # layer 0 receives the token embeddings
    assert torch.allclose(peaks, rule.dim_peaks(embeds[0][0]))
    assert values.shape == (5, 4) and top.shape == (4,)
