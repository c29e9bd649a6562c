"""Model families: what differs between VLM architectures, in one adapter each.

Strategy code (runners, worker hooks) asks the family adapter of the served checkpoint
for what depends on the architecture: the image-token id (also the stall token: a
placeholder is never a real answer token), the decoder layers VAR probes, the vision
attention DAMRO scores, and the hooked model class the server selects. The server picks
the adapter from the checkpoint's architecture at start-up; with strategies enabled on an
architecture no adapter serves, start-up fails with the list of supported families
(``--strategies none`` serves any model vLLM serves).

Supported: LLaVA-1.5 (``LlavaForConditionalGeneration``). Adding a family means one
adapter here, a hooked model class in ``worker/model.py``, a profile in
``decoding/profiles`` and a test-checkpoint builder in ``decoding/testing``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Family:
    name: str
    #: The checkpoints' ``architectures`` entries this adapter serves.
    architectures: tuple[str, ...]
    #: The hooked model class: registered architecture name and ``module:Class``.
    hooked_architecture: str
    hooked_class: str
    #: ``hf_config -> image placeholder id``.
    image_token: Callable[[Any], int]
    #: ``model -> its language model's decoder layers`` (VAR's residual-stream probes).
    decoder_layers: Callable[[Any], Any]
    #: ``model -> the self-attention module of the vision tower's feature layer``, whose
    #: fused ``qkv_proj`` DAMRO reads; None where the tower has no [CLS] token.
    vision_attention: Callable[[Any], Any] | None
    #: Strategies undefined on this family, each with why (a 400 at admission).
    undefined: dict[str, str] = field(default_factory=dict)


def _llava_image_token(hf_config: Any) -> int:
    return int(getattr(hf_config, "image_token_index", None) or hf_config.image_token_id)


LLAVA_15 = Family(
    name="llava-1.5",
    architectures=("LlavaForConditionalGeneration",),
    hooked_architecture="LucidLlavaForConditionalGeneration",
    hooked_class="decoding.engine.worker.model:LucidLlava",
    image_token=_llava_image_token,
    decoder_layers=lambda model: model.language_model.model.layers,
    vision_attention=lambda model: model.vision_tower.vision_model.encoder.layers[-1].self_attn,
)

FAMILIES: tuple[Family, ...] = (LLAVA_15,)


class UnsupportedModel(ValueError):
    pass


def _architectures(hf_config: Any) -> list[str]:
    archs = getattr(hf_config, "architectures", None)
    if archs is None and isinstance(hf_config, dict):
        archs = hf_config.get("architectures")
    return list(archs or [])


def family_for(hf_config: Any) -> Family:
    """The adapter serving ``hf_config``'s architecture (hooked or not)."""
    archs = _architectures(hf_config)
    for family in FAMILIES:
        if any(a in family.architectures or a == family.hooked_architecture for a in archs):
            return family
    supported = ", ".join(f"{f.name} ({', '.join(f.architectures)})" for f in FAMILIES)
    raise UnsupportedModel(
        f"strategies are not supported on architecture {', '.join(archs) or 'unknown'}; "
        f"supported families: {supported}. Serve it with --strategies none"
    )
