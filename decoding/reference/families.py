"""Reference-engine model-family adapters: where each family's parts live in
``transformers`` (5.x) and which processor outputs its encoder and forward take.

The shared facts (image token, pixel layout, undefined strategies) are in
:mod:`decoding.families`; the served engine's counterpart is
:mod:`decoding.engine.families`. The reference is the oracle, so these adapters use only
``transformers``' public model structure: the encoder is the model's own
``get_image_features``, the forward splices with the model's own code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.families import (
    FAMILIES,
    LLAVA_15,
    LLAVA_NEXT,
    LLAVA_ONEVISION,
    QWEN3_VL,
    QWEN25_VL,
    ModelFamily,
    family_of,
)


@dataclass(frozen=True)
class ReferenceFamily:
    model: ModelFamily
    #: Processor outputs the image encoder takes besides ``pixel_values``.
    vision_keys: tuple[str, ...] = ()
    #: Processor outputs the forward needs at prefill besides the ids and the encoding.
    forward_keys: tuple[str, ...] = ()
    #: The processor returns per-token modality types the forward's M-RoPE needs.
    token_types: bool = False
    #: The encoder reads the config's feature layer and selection strategy.
    feature_layer: bool = True

    def encode_images(self, model: Any, pixels: torch.Tensor, vision: dict[str, Any]) -> Any:
        kwargs: dict[str, Any] = dict(vision)
        if self.feature_layer:
            cfg = model.config
            kwargs["vision_feature_layer"] = cfg.vision_feature_layer
            kwargs["vision_feature_select_strategy"] = cfg.vision_feature_select_strategy
        return model.model.get_image_features(pixel_values=pixels, return_dict=True, **kwargs)

    def per_image(self, pixels: torch.Tensor, vision: dict[str, Any]) -> list[torch.Tensor]:
        """The pixels of each image, in the layout the served engine's items hold."""
        if self.model.pixel_layout == "patches":
            sizes = vision["image_grid_thw"].prod(-1).tolist()
            return list(torch.split(pixels, [int(s) for s in sizes]))
        return list(pixels)

    def join(self, images: list[torch.Tensor]) -> torch.Tensor:
        if self.model.pixel_layout == "patches":
            return torch.cat(images)
        return torch.stack(images)

    def cls_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(1, C, H, W)``: the view of one image whose [CLS] DAMRO scores (LLaVA-NeXT:
        the base tile, the whole image resized, whose patches lead the features)."""
        return pixels[:1] if pixels.dim() == 4 else pixels.unsqueeze(0)

    def decoder_layers(self, model: Any) -> Any:
        return model.model.language_model.layers

    def vision_layers(self, model: Any) -> Any:
        """The vision tower's encoder layers (DAMRO's [CLS] scores)."""
        tower = model.model.vision_tower
        return getattr(tower, "vision_model", tower).encoder.layers


_QWEN = {"vision_keys": ("image_grid_thw",), "token_types": True, "feature_layer": False}

REFERENCE_FAMILIES: dict[str, ReferenceFamily] = {
    LLAVA_15.name: ReferenceFamily(LLAVA_15),
    LLAVA_NEXT.name: ReferenceFamily(LLAVA_NEXT, vision_keys=("image_sizes",)),
    LLAVA_ONEVISION.name: ReferenceFamily(
        LLAVA_ONEVISION, vision_keys=("image_sizes",), feature_layer=True
    ),
    QWEN25_VL.name: ReferenceFamily(
        QWEN25_VL, forward_keys=("image_grid_thw", "mm_token_type_ids"), **_QWEN
    ),
    QWEN3_VL.name: ReferenceFamily(
        QWEN3_VL, forward_keys=("image_grid_thw", "mm_token_type_ids"), **_QWEN
    ),
}
assert set(REFERENCE_FAMILIES) == {f.name for f in FAMILIES}


def reference_family(hf_config: Any) -> ReferenceFamily:
    return REFERENCE_FAMILIES[family_of(hf_config).name]
