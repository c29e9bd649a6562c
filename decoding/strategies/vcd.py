"""``vcd``: Visual Contrastive Decoding against a diffusion-noised copy of the image."""

from __future__ import annotations

from pydantic import Field

from decoding.strategies.base import CONTRASTIVE_UNSUPPORTED, Strategy, StrategyParams
from decoding.strategies.registry import register_strategy


class VCDParams(StrategyParams):
    """VCD parameters; defaults are the paper's for LLaVA-1.5 (alpha 1, beta 0.1, T 500)."""

    #: Contrast strength: ``(1+alpha)*l - alpha*l_noised``; 0 = plain decoding.
    alpha: float = Field(default=1.0, ge=0.0, le=10.0)
    #: Plausibility cutoff: keep tokens with ``p >= beta * max p`` under the clean logits.
    beta: float = Field(default=0.1, ge=0.0, le=1.0)
    #: Diffusion step of the noise, of 1000 (500 = ``0.863 x + 0.505 eps``).
    noise_step: int = Field(default=500, ge=0, le=999)
    #: Seed of the noise ``eps`` (a dedicated CPU generator), so a request is reproducible.
    noise_seed: int = Field(default=0, ge=0, le=2**63 - 1)


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
    Params = VCDParams
    needs_image = True
    cost_factor = 2.0
    unsupported_sampling = CONTRASTIVE_UNSUPPORTED
