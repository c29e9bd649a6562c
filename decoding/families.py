"""Model families: the facts about a VLM architecture that strategies depend on.

A family is what differs between LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL and
Qwen3-VL *as data*: which ``architectures`` it serves, its image-placeholder id, how its
processor lays out pixels (so a pixel transform noises the image, not its layout), which
strategies are undefined on it and why, and whether its image features also enter deeper
layers (Qwen3-VL's deepstack). This module imports neither vLLM nor ``transformers``:
the API process (admission), the served engine (:mod:`decoding.engine.families`, the
vLLM attribute paths) and the reference engine (:mod:`decoding.reference.families`) all
read it. Adding a family means one entry here, one adapter on each engine side, a
profile (:mod:`decoding.profiles`) and a test-checkpoint builder.

Measured facts per family: ``../shared/docs/model-families.md`` (vLLM 0.32, CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

PixelFn = Callable[[torch.Tensor], torch.Tensor]

NO_CLS = (
    "DAMRO scores image tokens by the attention the vision tower's [CLS] token pays them "
    "(Gong et al., EMNLP 2024, arXiv 2410.04514); the {tower} vision tower of {family} has no "
    "[CLS] token, so the method is undefined on this model"
)


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def image_token_id(hf_config: Any) -> int:
    """The image placeholder id: LLaVA configs name it ``image_token_index`` (llava-hf)
    or ``image_token_id``; Qwen configs only ``image_token_id``."""
    for key in ("image_token_index", "image_token_id"):
        value = _get(hf_config, key)
        if value is not None:
            return int(value)
    raise ValueError("the model config names no image token (image_token_index/_id)")


@dataclass(frozen=True)
class ModelFamily:
    name: str
    title: str
    #: The checkpoints' ``architectures`` entries this family serves.
    architectures: tuple[str, ...]
    #: How ``pixel_values`` of one image are laid out: ``"images"`` (``(..., C, H, W)``,
    #: tiles included, normalised float) or ``"patches"`` (Qwen: ``(patches,
    #: C*T*P*P)`` rows, each still frame repeated ``T`` times).
    pixel_layout: str = "images"
    #: Strategies undefined on this family, with why (a 400 at admission).
    undefined: dict[str, str] = field(default_factory=dict)
    #: Image features are also added after early decoder layers (Qwen3-VL deepstack).
    deepstack: bool = False
    #: Several images in one request are served.
    multi_image: bool = True
    #: What the strategies do differently here, for the docs (strategy -> deviation).
    deviations: dict[str, str] = field(default_factory=dict)

    def image_token(self, hf_config: Any) -> int:
        return image_token_id(hf_config)

    def map_pixels(self, pixels: torch.Tensor, fn: PixelFn, hf_config: Any) -> torch.Tensor:
        """``pixels`` of one image with ``fn`` applied to the image it encodes.

        ``fn`` receives float pixels shaped like an image (``(..., C, H, W)``; for patch
        layouts ``(patches, C, P, P)``, one temporal copy) and must return the same
        shape; for patch layouts its result is repeated over the temporal copies, so a
        random transform draws once per frame, not once per copy.
        """
        if self.pixel_layout == "images":
            return fn(pixels)
        vision = _get(hf_config, "vision_config")
        t = int(_get(vision, "temporal_patch_size", 2))
        p = int(_get(vision, "patch_size", 14))
        c = int(_get(vision, "in_channels", _get(vision, "in_chans", 3)))
        if pixels.dtype == torch.uint8:
            raise ValueError(
                "pixel transforms need normalised pixels; the server turns "
                "mm_device_do_normalize off for this family"
            )
        rows = pixels.reshape(-1, c, t, p, p)
        frame = fn(rows[:, :, 0].contiguous())
        out = frame.unsqueeze(2).expand(-1, c, t, p, p)
        return out.reshape(pixels.shape).to(pixels.dtype)


LLAVA_15 = ModelFamily(
    name="llava-1.5",
    title="LLaVA-1.5",
    architectures=("LlavaForConditionalGeneration",),
)

LLAVA_NEXT = ModelFamily(
    name="llava-next",
    title="LLaVA-NeXT (1.6)",
    architectures=("LlavaNextForConditionalGeneration",),
    deviations={
        "damro": "one [CLS] per anyres tile: each image is scored by its base tile's "
        "[CLS] (the whole image, resized) over that tile's patches, which lead the "
        "image's features; high-resolution crop tokens are not candidates (their "
        "features are unpadded and interleaved with newline tokens)",
        "vcd": "the noise is drawn per tile (base image and each high-resolution crop)",
    },
)

LLAVA_ONEVISION = ModelFamily(
    name="llava-onevision",
    title="LLaVA-OneVision",
    architectures=("LlavaOnevisionForConditionalGeneration",),
    undefined={"damro": NO_CLS.format(tower="SigLIP", family="LLaVA-OneVision")},
    deviations={"vcd": "the noise is drawn per tile, as on LLaVA-NeXT"},
)

QWEN25_VL = ModelFamily(
    name="qwen2.5-vl",
    title="Qwen2.5-VL",
    architectures=("Qwen2_5_VLForConditionalGeneration",),
    pixel_layout="patches",
    undefined={"damro": NO_CLS.format(tower="window-attention ViT", family="Qwen2.5-VL")},
    deviations={
        "vcd": "noise on the normalised patch rows, one draw per frame repeated over the "
        "two temporal copies (the server turns mm_device_do_normalize off)",
    },
)

QWEN3_VL = ModelFamily(
    name="qwen3-vl",
    title="Qwen3-VL",
    architectures=("Qwen3VLForConditionalGeneration",),
    pixel_layout="patches",
    deepstack=True,
    undefined={"damro": NO_CLS.format(tower="ViT", family="Qwen3-VL")},
    deviations={
        "vcd": "as on Qwen2.5-VL; the noised image also feeds the deepstack features",
        "avc": "blind-masked image tokens also lose their deepstack features (zeroed), "
        "otherwise the image would re-enter after the first decoder layers",
    },
)

FAMILIES: tuple[ModelFamily, ...] = (LLAVA_15, LLAVA_NEXT, LLAVA_ONEVISION, QWEN25_VL, QWEN3_VL)


class UnsupportedModel(ValueError):
    pass


def architectures_of(hf_config: Any) -> list[str]:
    return list(_get(hf_config, "architectures") or [])


def family_named(name: str) -> ModelFamily:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(f"no model family {name!r}; families: {', '.join(f.name for f in FAMILIES)}")


def family_of(hf_config: Any, hooked: dict[str, str] | None = None) -> ModelFamily:
    """The family serving ``hf_config``'s architecture; ``hooked`` maps the engine's
    hooked architecture names back to family names."""
    archs = architectures_of(hf_config)
    for family in FAMILIES:
        if any(a in family.architectures or (hooked or {}).get(a) == family.name for a in archs):
            return family
    supported = ", ".join(f"{f.name} ({', '.join(f.architectures)})" for f in FAMILIES)
    raise UnsupportedModel(
        f"strategies are not supported on architecture {', '.join(archs) or 'unknown'}; "
        f"supported families: {supported}. Serve it with --strategies none"
    )
