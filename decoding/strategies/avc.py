"""``avc``: Attentional Vision Calibration (AvisC) against the "blind" image tokens."""

from __future__ import annotations

from typing import Literal

from decoding.strategies import contrast
from decoding.strategies.base import (
    CONTRASTIVE_REJECTS,
    BenchTarget,
    Family,
    Graphs,
    Strategy,
    StrategyParams,
    pair_needs,
    param,
)
from decoding.strategies.registry import register_strategy
from decoding.wire import ATTENTION, FORWARD

SRC = "sangminwoo/AvisC 772eba49 eval_bench/pope_eval_llavab.py:79-85, eval_bench/scripts/*.sh"


class AVCParams(StrategyParams):
    """AVC parameters; defaults are the official POPE setting for LLaVA-1.5."""

    alpha: float = param(
        1.0,
        "Contrast strength (AMBER / LLaVA-Bench use 2.5); 0 = plain decoding.",
        SRC,
        ge=0.0,
        le=10.0,
    )
    beta: float = param(0.1, "Plausibility cutoff on the clean logits.", SRC, ge=0.0, le=1.0)
    gamma: float = param(
        0.5,
        "Layer selection: the top layers covering this share of the image attention.",
        SRC,
        gt=0.0,
        le=1.0,
    )
    lamb: float = param(
        1.0,
        "Blind tokens have attention >= mean + lamb * std (the python default is 0.99).",
        SRC,
        ge=-10.0,
        le=10.0,
    )
    mask: Literal["zeros", "ones"] = param(
        "zeros", "Value written into the non-blind image embeddings of the contrast input.", SRC
    )


@register_strategy
class AVCStrategy(Strategy):
    """AvisC ("Don't Miss the Forest for the Trees: Attentional Vision Calibration").

    Paper: Woo et al., arXiv 2405.17820. Official code: ``sangminwoo/AvisC`` commit
    ``772eba49`` (``avisc_utils/avisc_sample.py``, LLaVA masking in
    ``experiments/llava/model/language_model/llava_llama.py:93-112``). Defaults: gamma
    0.5, lamb 1.0 (shell scripts; the python default is 0.99), mask zeros, alpha 1 (POPE),
    beta 0.1 (``eval_bench/pope_eval_llavab.py:79-85``, ``eval_bench/scripts/*.sh``).

    At prefill the attention of the LAST prompt token to the image tokens (mean over heads,
    every layer) selects layers by cumulative share (gamma) and blind tokens by
    mean + lamb*std; the contrast branch is the same prompt with every NON-blind image
    embedding zeroed, with its own KV cache; then the VCD rule (:mod:`decoding.cores.avc`).

    Deviations: image positions come from the image-token id (official: hard-coded 35..610);
    greedy is supported; the "noise" mask is not offered.
    """

    name = "avc"
    summary = 'contrast against only the "blind" image tokens'
    order = 20
    family = Family.CONTRASTIVE
    Params = AVCParams
    needs_image = True
    rejects = CONTRASTIVE_REJECTS
    engine = pair_needs(
        hooks=frozenset({("blind_mask", FORWARD), ("blind_mask", ATTENTION)}),
        # The contrast prefill runs the language model twice in one step (piecewise graphs
        # would replay pass two from pass one's input addresses); the head mean needs
        # every head.
        cuda_graphs=Graphs.EAGER,
        tensor_parallel=False,
    )
    bench_target = BenchTarget("none", 0.5)
    contrast = contrast.BlindTokens()
