"""DAMRO's contrast input inside the engine: only the top-k [CLS]-outlier patch features.

The contrast request of a DAMRO pair carries its image with an extra ``lucid_topk`` field
(and its own multimodal hash, so the encoder and prefix caches keep it apart from the
clean image) and ``top_k`` image placeholders. vLLM builds the LLaVA vision tower only up
to the feature layer, so the tower's last layer is the one whose [CLS] attention DAMRO
scores: its fused ``qkv_proj`` output gives the full-width ``q``/``k`` of
:func:`decoding.cores.damro.cls_patch_attention`. The selected projected features are
returned in descending score order, as the reference engine splices them.

LLaVA-NeXT: the tower sees every anyres tile of every image; each image is scored by the
[CLS] row of its base tile (the whole image, resized), whose patches are the first rows
of the image's features (``Family.cls_rows``); crops' tokens are not candidates.

Limit: with tensor parallelism the vision ``qkv_proj`` is sharded by heads; this reads
one shard, so DAMRO needs ``tensor_parallel_size=1`` or a data-parallel vision tower.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from decoding.cores import damro as damro_core
from decoding.engine.families import family_for
from decoding.engine.worker import hooks
from decoding.wire import EMBED


@hooks.register(EMBED, "outliers", order=10)
def top_patch_features(
    model: Any, topk: Any, embed: Callable[..., Any], kwargs: dict[str, Any]
) -> list[torch.Tensor]:
    family = family_for(model.config)
    vision = family.vision_attention
    assert vision is not None, "DAMRO is refused at admission on towers without [CLS]"
    attn = vision(model)
    rows = family.cls_rows(kwargs["pixel_values"])
    seen: list[torch.Tensor] = []
    handle = attn.qkv_proj.register_forward_hook(
        lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        feats = embed(**kwargs)
    finally:
        handle.remove()
    q, k, _ = seen[-1].chunk(3, dim=-1)
    counts = torch.as_tensor(topk).reshape(-1).tolist()
    out = []
    for b, count in enumerate(counts):
        scores = damro_core.cls_patch_attention(q[rows[b]], k[rows[b]])
        out.append(feats[b][damro_core.top_outliers(scores, int(count))])
    return out
