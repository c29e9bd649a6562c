"""``vcd``: Visual Contrastive Decoding against a diffusion-noised copy of the image."""

from __future__ import annotations

from typing import Any

from decoding.strategies import contrast
from decoding.strategies.base import (
    CONTRASTIVE_REJECTS,
    BenchTarget,
    Family,
    Strategy,
    StrategyParams,
    pair_needs,
    param,
)
from decoding.strategies.registry import register_strategy

SRC = "VCD paper Sec. 4.1; DAMO-NLP-SG/VCD d6568ff8 object_hallucination_vqa_llava.py:115-118"


class VCDParams(StrategyParams):
    """VCD parameters; defaults are the paper's for LLaVA-1.5 (alpha 1, beta 0.1, T 500)."""

    alpha: float = param(
        1.0,
        "Contrast strength: (1+alpha)*l - alpha*l_noised; 0 = plain decoding.",
        SRC,
        ge=0.0,
        le=10.0,
    )
    beta: float = param(
        0.1,
        "Plausibility cutoff: keep tokens with p >= beta * max p under the clean logits.",
        SRC,
        ge=0.0,
        le=1.0,
    )
    noise_step: int = param(
        500,
        "Diffusion step of the noise, of 1000 (500 = 0.863 x + 0.505 eps).",
        SRC,
        ge=0,
        le=999,
    )
    noise_seed: int = param(
        0,
        "Seed of the noise eps (a dedicated CPU generator), so a request is reproducible.",
        "not in the paper (the official code draws from the global RNG)",
        ge=0,
        le=2**63 - 1,
    )


def noised(pixels: Any, params: VCDParams) -> Any:
    """The image under diffusion noise at ``noise_step`` (:mod:`decoding.cores.vcd`)."""
    from decoding.cores.vcd import add_diffusion_noise

    out = add_diffusion_noise(pixels.unsqueeze(0).float(), params.noise_step, params.noise_seed)
    return out[0].to(pixels.dtype)


@register_strategy
class VCDStrategy(Strategy):
    """Visual Contrastive Decoding.

    Paper: Leng et al., "Mitigating Object Hallucinations in Large Vision-Language Models
    through Visual Contrastive Decoding", CVPR 2024, arXiv 2311.16922.
    Official code: ``DAMO-NLP-SG/VCD`` commit ``d6568ff8`` (``vcd_utils/vcd_sample.py``,
    ``vcd_utils/vcd_add_noise.py``). Defaults: alpha 1, beta 0.1, noise step 500
    (``experiments/eval/object_hallucination_vqa_llava.py:115-118``; the shipped POPE
    script uses beta 0.2).

    Each step runs the clean prompt and the prompt with the noised image (its OWN KV
    cache, unlike the official loop before commit ``c637c85``) and decodes from
    ``(1+alpha)*l - alpha*l'`` masked by the plausibility cutoff on ``l``
    (:mod:`decoding.cores.contrastive`, :mod:`decoding.cores.vcd`).

    Deviations: greedy is supported (official: sampling only); the noise is seeded per
    request (``noise_seed``) instead of drawn from the global RNG.
    """

    name = "vcd"
    summary = "contrast against a diffusion-noised image"
    order = 10
    family = Family.CONTRASTIVE
    Params = VCDParams
    needs_image = True
    rejects = CONTRASTIVE_REJECTS
    engine = pair_needs()
    bench_target = BenchTarget("none", 0.5)
    contrast = contrast.PixelContrast(
        transform=noised, tag=lambda p: f"vcd:{p.noise_step}:{p.noise_seed}"
    )
