"""``damro``: the contrast request holds only the image's ``top_k`` [CLS]-outlier tokens.

The contrast prompt has ``top_k`` image placeholders per image, and the image item
carries a ``lucid_topk`` field; the engine's :mod:`decoding.engine.worker.damro` scores
the patches with the vision tower's [CLS] attention and returns the top-k features in
descending score order (reference contract)."""

from __future__ import annotations

from typing import Any

import torch

from decoding.engine.runners import contrast_inputs as ci
from decoding.engine.runners.pairs import Contrast, register_contrastive


def outlier_input(prompt: dict, params: dict[str, Any], hf_config: Any) -> Contrast:
    ranges = sorted(prompt["mm_placeholders"][ci.MODALITY], key=lambda r: r.offset)
    counts = [min(int(params["top_k"]), r.length) for r in ranges]
    ids, placeholders = ci.shrink_images(prompt, counts, int(hf_config.image_token_index))
    items = [
        ci.add_field(item, "lucid_topk", torch.tensor(count))
        for item, count in zip(ci.image_items(prompt), counts, strict=True)
    ]
    return Contrast(
        ci.with_items(
            prompt,
            items,
            f"damro:{params['top_k']}",
            prompt_token_ids=ids,
            mm_placeholders=placeholders,
        )
    )


register_contrastive("damro", outlier_input)
