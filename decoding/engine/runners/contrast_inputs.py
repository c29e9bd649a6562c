"""Contrast inputs built on the API side from vLLM's processed multimodal input.

Every contrast input gets its own multimodal hash, so that vLLM's encoder cache and
prefix cache never hand the contrast request the clean image's embeddings or KV.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.multimodal.inputs import (
    MultiModalFieldConfig,
    MultiModalFieldElem,
    MultiModalKwargsItem,
    MultiModalKwargsItems,
    PlaceholderRange,
)

MODALITY = "image"


def image_items(prompt: dict) -> list[MultiModalKwargsItem]:
    items = list(prompt["mm_kwargs"][MODALITY])
    if any(item is None for item in items):
        # The API process keeps image data (the server turns its processor cache off when
        # strategies are enabled); a None item means that setting was overridden.
        raise RuntimeError("image inputs are not available to the strategy (processor cache on)")
    return items


def with_items(prompt: dict, items: list[MultiModalKwargsItem], tag: str, **extra: Any) -> dict:
    """``prompt`` with new image items and hashes suffixed by ``tag``."""
    out = dict(prompt)
    out["mm_kwargs"] = MultiModalKwargsItems({**prompt["mm_kwargs"], MODALITY: items})
    hashes = dict(prompt["mm_hashes"])
    hashes[MODALITY] = [f"{h}:{tag}" for h in prompt["mm_hashes"][MODALITY]]
    out["mm_hashes"] = hashes
    out.pop("prompt", None)
    out.update(extra)
    return out


def replace_field(item: MultiModalKwargsItem, key: str, data: torch.Tensor) -> MultiModalKwargsItem:
    new = MultiModalKwargsItem(dict(item))
    new[key] = MultiModalFieldElem(data=data, field=item["pixel_values"].field)
    return new


def add_field(item: MultiModalKwargsItem, key: str, data: torch.Tensor) -> MultiModalKwargsItem:
    """``item`` plus a per-image tensor field (batched like ``pixel_values``)."""
    new = MultiModalKwargsItem(dict(item))
    (elem,) = MultiModalFieldConfig.batched(MODALITY).build_elems(key, data.unsqueeze(0))
    new[key] = elem
    return new


def shrink_images(prompt: dict, counts: list[int], image_token: int) -> tuple[list[int], dict]:
    """Prompt ids and placeholders with image ``i`` reduced to ``counts[i]`` tokens."""
    ids = list(prompt["prompt_token_ids"])
    ranges = sorted(prompt["mm_placeholders"][MODALITY], key=lambda r: r.offset)
    out: list[int] = []
    new: list[PlaceholderRange] = []
    end = 0
    for rng, count in zip(ranges, counts, strict=True):
        out += ids[end : rng.offset]
        new.append(PlaceholderRange(offset=len(out), length=count))
        out += [image_token] * count
        end = rng.offset + rng.length
    out += ids[end:]
    return out, {**prompt["mm_placeholders"], MODALITY: new}
