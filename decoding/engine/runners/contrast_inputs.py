"""Contrast inputs built on the API side from vLLM's processed multimodal input.

One builder per form a declaration can name (:mod:`decoding.strategies.contrast`), so a
new contrastive strategy needs no engine code. Every contrast input gets its own
multimodal hash, so that vLLM's encoder cache and prefix cache never hand the contrast
request the clean image's embeddings or KV.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from vllm.multimodal.inputs import (
    MultiModalFieldConfig,
    MultiModalFieldElem,
    MultiModalKwargsItem,
    MultiModalKwargsItems,
    PlaceholderRange,
)

from decoding.engine.families import Family
from decoding.strategies import contrast as forms
from decoding.strategies.base import StrategyParams
from decoding.wire import BlindMask

MODALITY = "image"


@dataclasses.dataclass(frozen=True)
class Contrast:
    """A contrast input: the engine prompt, the engine-side contrast its rows need, and
    whether it must be prefilled in full (its KV depends on the whole prompt pass)."""

    prompt: dict
    engine: Literal["outliers", "blind_mask"] | None = None
    blind: BlindMask | None = None
    full_prefill: bool = False


def build(
    form: forms.ContrastInput, prompt: dict, params: StrategyParams, family: Family, hf: Any
) -> Contrast:
    """The contrast input of ``form`` for the main input ``prompt`` on a checkpoint of
    ``family`` (config ``hf``): pixel transforms see the image in the family's layout."""
    image_token = family.image_token(hf)
    if isinstance(form, forms.PixelContrast):

        def transform(pixels: torch.Tensor) -> torch.Tensor:
            return form.transform(pixels, params)

        items = [
            replace_field(
                item,
                "pixel_values",
                family.model.map_pixels(item["pixel_values"].data, transform, hf),
            )
            for item in image_items(prompt)
        ]
        return Contrast(with_items(prompt, items, form.tag(params)))
    if isinstance(form, forms.OutlierTokens):
        return _outliers(prompt, form.count(params), image_token)
    if isinstance(form, forms.BlindTokens):
        return _blind(prompt, params, image_token)
    raise TypeError(f"unknown contrast input {form!r}")


def _outliers(prompt: dict, top_k: int, image_token: int) -> Contrast:
    """DAMRO: ``top_k`` image placeholders per image; the item's ``lucid_topk`` field makes
    the engine embed only its top-k [CLS]-outlier tokens (descending score order)."""
    ranges = sorted(prompt["mm_placeholders"][MODALITY], key=lambda r: r.offset)
    counts = [min(top_k, r.length) for r in ranges]
    ids, placeholders = shrink_images(prompt, counts, image_token)
    items = [
        add_field(item, "lucid_topk", torch.tensor(count))
        for item, count in zip(image_items(prompt), counts, strict=True)
    ]
    tagged = with_items(
        prompt, items, f"damro:{top_k}", prompt_token_ids=ids, mm_placeholders=placeholders
    )
    return Contrast(tagged, engine="outliers")


def _blind(prompt: dict, params: StrategyParams, image_token: int) -> Contrast:
    """AVC: the same image under its own hash; the engine finds the blind tokens from the
    clean prefill attention of the last prompt token and masks the other image
    embeddings before the contrast KV is written, so it is always prefilled in full."""
    gamma, lamb, mask = float(params.gamma), float(params.lamb), str(params.mask)  # type: ignore[attr-defined]
    blind = BlindMask(
        gamma=gamma,
        lamb=lamb,
        mask=mask,  # type: ignore[arg-type]
        # The query is the last token of the ORIGINAL prompt, also after restarts.
        query=len(prompt["prompt_token_ids"]) - 1,
        image_token=image_token,
    )
    tagged = with_items(prompt, image_items(prompt), f"avc:{gamma}:{lamb}:{mask}")
    return Contrast(tagged, engine="blind_mask", blind=blind, full_prefill=True)


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
