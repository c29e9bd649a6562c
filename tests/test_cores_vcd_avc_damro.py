"""VCD noise, AVC blind-token selection and DAMRO outliers on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from decoding.cores import avc, damro, vcd


def test_noise_schedule_values() -> None:
    keep, mix = vcd.noise_coefficients(500)
    assert keep == pytest.approx(0.863, abs=1e-3)
    assert mix == pytest.approx(0.505, abs=1e-3)
    keep, mix = vcd.noise_coefficients(999)
    assert (keep, mix) == (pytest.approx(0.285, abs=1e-3), pytest.approx(0.959, abs=1e-3))
    keep, _ = vcd.noise_coefficients(0)
    beta0 = 1.0 / (1.0 + math.exp(6.0)) * (5e-3 - 1e-5) + 1e-5
    assert keep == pytest.approx(math.sqrt(1.0 - beta0), rel=1e-12)
    with pytest.raises(ValueError):
        vcd.noise_coefficients(1000)


def test_noise_is_the_seeded_mixture() -> None:
    x = torch.ones(1, 3, 4, 4)
    out = vcd.add_diffusion_noise(x, 500, noise_seed=7)
    eps = torch.randn((1, 3, 4, 4), generator=torch.Generator().manual_seed(7))
    keep, mix = vcd.noise_coefficients(500)
    assert torch.allclose(out, keep * x + mix * eps)
    assert torch.equal(out, vcd.add_diffusion_noise(x, 500, noise_seed=7))
    assert not torch.equal(out, vcd.add_diffusion_noise(x, 500, noise_seed=8))


def test_layer_selection_by_cumulative_share() -> None:
    # shares .1 .4 .3 .2 -> sorted 1(.4) 2(.3) 3(.2) 0(.1); cumulative .4 .7 .9 1.0
    s = torch.tensor([1.0, 4.0, 3.0, 2.0])
    assert avc.select_layers(s, 0.5).tolist() == [1, 2]  # one below .5, plus one
    assert avc.select_layers(s, 0.4).tolist() == [1]  # .4 < .4 is false -> k = 1
    assert avc.select_layers(s, 0.75).tolist() == [1, 2, 3]
    assert avc.select_layers(s, 1.5).tolist() == [1, 2, 3, 0]


def test_blind_tokens_mean_plus_lambda_std() -> None:
    # layer 0 holds most image attention -> only layer 0 selected for gamma .5
    attn = torch.tensor(
        [
            [0.10, 0.10, 0.10, 0.50],
            [0.01, 0.01, 0.01, 0.01],
        ]
    )
    # a = [.1 .1 .1 .5]; mean .2, unbiased std .2 -> threshold (lamb 1) .4
    assert avc.blind_tokens(attn, 0.5, 1.0).tolist() == [False, False, False, True]
    # lamb 0: threshold = mean .2 -> same; lamb -1: threshold 0 -> all
    assert avc.blind_tokens(attn, 0.5, -1.0).all()
    # gamma 1.0: both layers, a = [.055 .055 .055 .255], same ranking
    assert avc.blind_tokens(attn, 1.0, 1.0).tolist() == [False, False, False, True]


def test_contrast_mask_zeroes_non_blind_image_tokens() -> None:
    embeds = torch.arange(12, dtype=torch.float32).reshape(6, 2) + 1
    positions = torch.tensor([1, 2, 3])
    blind = torch.tensor([False, True, False])
    out = avc.mask_image_embeddings(embeds, positions, blind)
    assert out[[1, 3]].eq(0).all()
    assert torch.equal(out[[0, 2, 4, 5]], embeds[[0, 2, 4, 5]])
    assert avc.mask_image_embeddings(embeds, positions, blind, "ones")[1].eq(1).all()
    with pytest.raises(ValueError):
        avc.mask_image_embeddings(embeds, positions, blind, "noise")


def test_cls_attention_is_one_full_width_head() -> None:
    q = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    k = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
    # q_cls . k = [0, 2, 2] / sqrt(2) -> softmax over 3 then drop CLS
    z = torch.tensor([0.0, 2.0, 2.0]) / math.sqrt(2.0)
    expected = torch.softmax(z, 0)[1:]
    assert torch.allclose(damro.cls_patch_attention(q, k), expected)


def test_top_outliers_descending_with_stable_ties() -> None:
    scores = torch.tensor([0.1, 0.4, 0.2, 0.4, 0.05])
    assert damro.top_outliers(scores, 3).tolist() == [1, 3, 2]
    assert damro.top_outliers(scores, 10).tolist() == [1, 3, 2, 0, 4]


def test_feature_layer_index() -> None:
    assert damro.feature_layer_index(-2, 24) == 22
    assert damro.feature_layer_index(-1, 3) == 2
    assert damro.feature_layer_index(2, 3) == 1
    with pytest.raises(ValueError):
        damro.feature_layer_index(0, 3)  # the embeddings are not a layer output
