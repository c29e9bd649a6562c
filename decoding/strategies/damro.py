"""``damro``: contrast against a prompt holding only the vision tower's outlier tokens."""

from __future__ import annotations

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
from decoding.wire import EMBED

SRC = "coder-gx/DAMRO 03008aca evaluation/eval_pope/run_pope.py:124-126"


class DAMROParams(StrategyParams):
    """DAMRO parameters; defaults are the official LLaVA-1.5 ones (alpha 2, beta .1, k 10)."""

    alpha: float = param(2.0, "Contrast strength; 0 = plain decoding.", SRC, ge=0.0, le=10.0)
    beta: float = param(0.1, "Plausibility cutoff on the clean logits.", SRC, ge=0.0, le=1.0)
    top_k: int = param(
        10,
        "Number of outlier image tokens (highest [CLS] attention) in the contrast prompt.",
        SRC,
        ge=1,
        le=4096,
    )


@register_strategy
class DAMROStrategy(Strategy):
    """DAMRO ("Dive into the Attention Mechanism of LVLM to Reduce Object Hallucination").

    Paper: Gong et al., EMNLP 2024, arXiv 2410.04514. Official code: ``coder-gx/DAMRO``
    commit ``03008aca`` (``sample_method/sample.py``; LLaVA glue in
    ``transformers-4.43.0/src/transformers/models/llava/modeling_llava.py:438-482``).
    Defaults: alpha 2, top_k 10, beta 0.1 (``evaluation/eval_pope/run_pope.py:124-126``).

    The [CLS] row of the vision tower's feature layer (one full-width head from its q/k
    projections) ranks the patches; the contrast prompt contains only the ``top_k``
    highest, in descending score order, in place of the image, with its own KV cache;
    then the VCD rule (:mod:`decoding.cores.damro`).

    Deviations: greedy is supported and temperature/top-p apply (official: sampling with
    no warpers, identical at T=1, top-p=1); ``top_k`` larger than the number of image
    tokens keeps them all.
    """

    name = "damro"
    summary = "contrast against the top-k ViT [CLS]-outlier tokens"
    order = 30
    family = Family.CONTRASTIVE
    Params = DAMROParams
    needs_image = True
    rejects = CONTRASTIVE_REJECTS
    # The vision q/k projection is sharded by heads under tensor parallelism: the [CLS]
    # row would be scored on one shard.
    engine = pair_needs(hooks=frozenset({("outliers", EMBED)}), tensor_parallel=False)
    bench_target = BenchTarget("none", 0.5)
    contrast = contrast.OutlierTokens(count=lambda p: p.top_k)
