"""Contrastive rule and token choice, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from decoding.cores.contrastive import (
    choose,
    contrast_logits,
    plausibility_mask,
    warp,
)

INF = float("inf")


def test_plausibility_cutoff_on_original_logits() -> None:
    # p = softmax([0, ln .5, ln .05, ln .2]) ∝ [1, .5, .05, .2]; beta=.1 keeps p >= .1*max
    logits = torch.tensor([0.0, math.log(0.5), math.log(0.05), math.log(0.2)])
    assert plausibility_mask(logits, 0.1).tolist() == [True, True, False, True]
    assert plausibility_mask(logits, 0.0).all()
    assert plausibility_mask(logits, 1.0).tolist() == [True, False, False, False]


def test_contrast_combination_by_hand() -> None:
    l_clean = torch.tensor([2.0, 1.0, 0.0, -5.0])
    l_contr = torch.tensor([2.0, 0.0, 1.0, -9.0])
    # alpha=1: 2*l - l' = [2, 2, -1, -1]; cutoff log(.1)+2 = -0.3026 on l drops index 3
    out = contrast_logits(l_clean, l_contr, alpha=1.0, beta=0.1)
    assert out.tolist() == [2.0, 2.0, -1.0, -INF]
    # beta=.5: cutoff 2 + log(.5) = 1.307 keeps index 0 only
    assert contrast_logits(l_clean, l_contr, 1.0, 0.5).tolist() == [2.0, -INF, -INF, -INF]
    # alpha=0.5: 1.5*l - .5*l' = [2, 1.5, -.5, -3]; beta=0 keeps all
    out = contrast_logits(l_clean, l_contr, alpha=0.5, beta=0.0)
    assert out.tolist() == [2.0, 1.5, -0.5, -3.0]


def test_contrast_cutoff_uses_clean_not_contrasted() -> None:
    # Index 1 is implausible under l (1 < log(.5)+3) although it wins after contrasting.
    l_clean = torch.tensor([3.0, 1.0])
    l_contr = torch.tensor([3.0, -10.0])
    out = contrast_logits(l_clean, l_contr, alpha=1.0, beta=0.5)
    assert out.tolist() == [3.0, -INF]


def test_alpha_zero_is_exactly_the_clean_logits() -> None:
    l_clean = torch.tensor([0.3, -1.7, 2.9])
    out = contrast_logits(l_clean, torch.randn(3), alpha=0.0, beta=0.0)
    assert torch.equal(out, l_clean)


def test_nan_contrast_falls_back_to_clean() -> None:
    out = contrast_logits(torch.tensor([1.0, 0.0]), torch.tensor([float("nan"), 0.0]), 1.0, 0.0)
    assert out.tolist() == [1.0, 0.0]


def test_greedy_choice_logprob_and_margin() -> None:
    scores = torch.tensor([math.log(0.2), math.log(0.5), math.log(0.3), -INF])
    c = choose(scores)
    assert c.token == 1
    assert c.logprob == pytest.approx(math.log(0.5))
    assert c.margin == pytest.approx(math.log(0.5) - math.log(0.3))


def test_single_plausible_token_has_infinite_margin() -> None:
    c = choose(torch.tensor([-INF, 1.0, -INF]))
    assert (c.token, c.logprob, c.margin) == (1, 0.0, INF)


def test_top_p_keeps_smallest_nucleus() -> None:
    scores = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = torch.isfinite(warp(scores, 1.0, 0.75)).tolist()
    assert kept == [True, True, False, False]  # .5 < .75 <= .8
    kept = torch.isfinite(warp(scores, 1.0, 0.8)).tolist()
    assert kept == [True, True, False, False]  # .8 reaches .8
    kept = torch.isfinite(warp(scores, 1.0, 0.81)).tolist()
    assert kept == [True, True, True, False]
    assert torch.isfinite(warp(scores, 1.0, 0.01)).tolist() == [True, False, False, False]


def test_temperature_scales_scores() -> None:
    assert warp(torch.tensor([2.0, -4.0]), 2.0, 1.0).tolist() == [1.0, -2.0]


def test_sampling_is_seeded_and_reports_the_warped_distribution() -> None:
    scores = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    draws = [choose(scores, 1.0, 0.75, torch.Generator().manual_seed(s)).token for s in range(40)]
    again = [choose(scores, 1.0, 0.75, torch.Generator().manual_seed(s)).token for s in range(40)]
    assert draws == again
    assert set(draws) == {0, 1}  # the nucleus only
    c = choose(scores, 1.0, 0.75, torch.Generator().manual_seed(0))
    expected = {0: math.log(0.5 / 0.8), 1: math.log(0.3 / 0.8)}[c.token]
    assert c.logprob == pytest.approx(expected, abs=1e-6)
    assert c.margin == pytest.approx(math.log(0.5 / 0.3), abs=1e-6)


def test_forced_choice_reports_the_imposed_token() -> None:
    from decoding.cores.contrastive import forced_choice

    scores = torch.tensor([0.0, math.log(3.0), float("-inf")])
    c = forced_choice(scores, 0)  # greedy distribution: softmax = [1/4, 3/4, 0]
    assert c.token == 0 and math.isclose(c.logprob, math.log(0.25), rel_tol=1e-6)
    assert math.isclose(c.margin, math.log(3.0), rel_tol=1e-6)
    hot = forced_choice(scores, 1, temperature=0.5)  # [1, 9] / 10
    assert math.isclose(hot.logprob, math.log(0.9), rel_tol=1e-6)
