"""Served model-family adapters: where each family's parts live inside vLLM's model.

Strategy code (runners, worker hooks) is written once against :class:`Family`; what
differs between architectures *as data* (image token, pixel layout, undefined
strategies) is in :mod:`decoding.families`, and what differs in vLLM's module tree is
here: the hooked model class the server selects, the language model's decoder layers
(VAR's residual-stream probes), the vision tower's [CLS] attention (DAMRO), and extra
per-step inputs a two-pass step must carry (Qwen3-VL's deepstack buffer, AVC).

The server picks the adapter from the checkpoint's architecture at start-up; with
strategies enabled on an architecture no adapter serves, start-up fails with the list of
supported families (``--strategies none`` serves any model vLLM serves). No vLLM import
here: the hooked classes are named as ``module:Class`` and built in ``worker/model.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from decoding.families import (
    LLAVA_15 as _LLAVA_15,
)
from decoding.families import (
    LLAVA_NEXT,
    LLAVA_ONEVISION,
    QWEN3_VL,
    QWEN25_VL,
    ModelFamily,
    UnsupportedModel,
    family_of,
)

__all__ = ["FAMILIES", "LLAVA_15", "Family", "UnsupportedModel", "family_for"]


class DeepstackBuffer:
    """Qwen3-VL adds image features after its first decoder layers from a buffer that
    ``embed_input_ids`` fills and ``forward`` zeroes after the pass (vLLM 0.32
    ``qwen3_vl.py:3161, 3217``). A second pass in the same step must put them back, with
    the rows of masked image tokens zeroed (AVC: the masked image must not re-enter)."""

    @staticmethod
    def save(model: Any, tokens: int) -> list[torch.Tensor] | None:
        buffers = getattr(model, "deepstack_input_embeds", None)
        if not buffers or not getattr(model, "deepstack_input_embeds_num_tokens", 0):
            return None
        return [b[:tokens].clone() for b in buffers]

    @staticmethod
    def restore(model: Any, saved: list[torch.Tensor] | None, masked: torch.Tensor) -> None:
        if saved is None:
            return
        for buffer, rows in zip(model.deepstack_input_embeds, saved, strict=True):
            rows[masked] = 0
            buffer[: rows.shape[0]].copy_(rows)
        model.deepstack_input_embeds_num_tokens = saved[0].shape[0]


def _one_row_per_image(pixel_values: Any) -> list[int]:
    return list(range(len(pixel_values)))


def _first_tile_rows(pixel_values: Any) -> list[int]:
    """LLaVA-NeXT stacks every image's anyres tiles into one tower batch (vLLM 0.32
    ``llava_next.py`` ``_process_image_pixels``); each image's first tile is its base
    (whole-image) view."""
    tiles = [int(v.shape[0]) for v in pixel_values]
    return [sum(tiles[:i]) for i in range(len(tiles))]


def _language_layers(model: Any) -> Any:
    return model.language_model.model.layers


def _clip_last_layer(model: Any) -> Any:
    return model.vision_tower.vision_model.encoder.layers[-1].self_attn


@dataclass(frozen=True)
class Family:
    model: ModelFamily
    #: The hooked model class: registered architecture name and ``module:Class``.
    hooked_architecture: str
    hooked_class: str
    #: ``model -> its language model's decoder layers`` (VAR's residual-stream probes).
    decoder_layers: Callable[[Any], Any] = _language_layers
    #: ``model -> the self-attention module of the vision tower's feature layer``, whose
    #: fused ``qkv_proj`` DAMRO reads; None where the tower has no [CLS] token.
    vision_attention: Callable[[Any], Any] | None = _clip_last_layer
    #: ``pixel_values -> the tower batch row whose [CLS] DAMRO scores, per image``; the
    #: selected patches are the first rows of that image's features.
    cls_rows: Callable[[Any], list[int]] = _one_row_per_image
    #: Per-step inputs besides the embeddings that a second pass must see again.
    extra_inputs: type[DeepstackBuffer] | None = None

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def architectures(self) -> tuple[str, ...]:
        return self.model.architectures

    @property
    def undefined(self) -> dict[str, str]:
        return self.model.undefined

    def image_token(self, hf_config: Any) -> int:
        return self.model.image_token(hf_config)


_MODEL = "decoding.engine.worker.model"

LLAVA_15 = Family(_LLAVA_15, "LucidLlavaForConditionalGeneration", f"{_MODEL}:LucidLlava")
FAMILIES: tuple[Family, ...] = (
    LLAVA_15,
    Family(
        LLAVA_NEXT,
        "LucidLlavaNextForConditionalGeneration",
        f"{_MODEL}:LucidLlavaNext",
        cls_rows=_first_tile_rows,
    ),
    Family(
        LLAVA_ONEVISION,
        "LucidLlavaOnevisionForConditionalGeneration",
        f"{_MODEL}:LucidLlavaOnevision",
        vision_attention=None,
    ),
    Family(
        QWEN25_VL,
        "LucidQwen2_5_VLForConditionalGeneration",
        f"{_MODEL}:LucidQwen2_5_VL",
        vision_attention=None,
    ),
    Family(
        QWEN3_VL,
        "LucidQwen3VLForConditionalGeneration",
        f"{_MODEL}:LucidQwen3VL",
        vision_attention=None,
        extra_inputs=DeepstackBuffer,
    ),
)
_HOOKED = {f.hooked_architecture: f.name for f in FAMILIES}


def family_for(hf_config: Any) -> Family:
    """The adapter serving ``hf_config``'s architecture (hooked or not)."""
    model = family_of(hf_config, _HOOKED)
    return next(f for f in FAMILIES if f.model is model)
