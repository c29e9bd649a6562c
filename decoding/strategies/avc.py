"""``avc``: Attentional Vision Calibration (AvisC) against the "blind" image tokens."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from decoding.strategies.base import CONTRASTIVE_UNSUPPORTED, Strategy, StrategyParams
from decoding.strategies.registry import register_strategy


class AVCParams(StrategyParams):
    """AVC parameters; defaults are the official POPE setting for LLaVA-1.5."""

    #: Contrast strength (AMBER / LLaVA-Bench use 2.5); 0 = plain decoding.
    alpha: float = Field(default=1.0, ge=0.0, le=10.0)
    #: Plausibility cutoff on the clean logits.
    beta: float = Field(default=0.1, ge=0.0, le=1.0)
    #: Layer selection: the top layers covering this share of the image attention.
    gamma: float = Field(default=0.5, gt=0.0, le=1.0)
    #: Blind tokens have attention >= mean + lamb * std.
    lamb: float = Field(default=1.0, ge=-10.0, le=10.0)
    #: Value written into the non-blind image embeddings of the contrast input.
    mask: Literal["zeros", "ones"] = "zeros"


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
    Params = AVCParams
    needs_image = True
    cost_factor = 2.0
    unsupported_sampling = CONTRASTIVE_UNSUPPORTED
