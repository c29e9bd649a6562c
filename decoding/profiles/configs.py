"""What a checkpoint config says about itself: family, text-model shape, image token.

Configs come as ``transformers`` config objects or plain dicts (``config.json``). The
families differ in where they keep things:

- LLaVA-1.5 / LLaVA-NeXT / LLaVA-OneVision keep the text model in ``text_config`` and
  name the image placeholder ``image_token_index`` (llava-hf) or ``image_token_id``.
- Qwen2.5-VL / Qwen3-VL name it ``image_token_id``; their ``config.json`` keeps the text
  fields at the top level (Qwen2.5-VL) or in ``text_config`` (Qwen3-VL), and
  ``transformers`` 5 moves both into ``text_config``. Both places are read.

The family is read from ``model_type`` first: the server renames ``architectures`` to its
hooked classes (``Lucid<original>``, :mod:`decoding.engine.families`) but leaves
``model_type`` alone. ``architectures[0]`` (with that prefix stripped) is the fallback.
"""

from __future__ import annotations

from typing import Any

#: family -> (``model_type``, ``architectures[0]``) of its checkpoints.
FAMILIES: dict[str, tuple[str, str]] = {
    "llava-1.5": ("llava", "LlavaForConditionalGeneration"),
    "llava-next": ("llava_next", "LlavaNextForConditionalGeneration"),
    "llava-onevision": ("llava_onevision", "LlavaOnevisionForConditionalGeneration"),
    "qwen2.5-vl": ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3-vl": ("qwen3_vl", "Qwen3VLForConditionalGeneration"),
}
HOOKED_PREFIX = "Lucid"


def as_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, dict):
        return config
    return config.to_dict()


def architecture(cfg: dict[str, Any]) -> str | None:
    """``architectures[0]`` without the server's hooked-class prefix."""
    archs = cfg.get("architectures") or []
    if not archs:
        return None
    name = str(archs[0])
    if name.startswith(HOOKED_PREFIX) and name[len(HOOKED_PREFIX) :] in _BY_ARCH:
        return name[len(HOOKED_PREFIX) :]
    return name


_BY_TYPE = {model_type: fam for fam, (model_type, _) in FAMILIES.items()}
_BY_ARCH = {arch: fam for fam, (_, arch) in FAMILIES.items()}


def family_of(config: Any) -> str | None:
    """The family name of a config, or ``None`` if it names none of :data:`FAMILIES`."""
    cfg = as_dict(config)
    fam = _BY_TYPE.get(str(cfg.get("model_type")))
    if fam is None:
        fam = _BY_ARCH.get(architecture(cfg) or "")
    return fam


def text_shape(config: Any) -> tuple[int | None, int | None]:
    """``(hidden_size, num_hidden_layers)`` of the language model."""
    cfg = as_dict(config)
    text = cfg.get("text_config") or {}
    if not isinstance(text, dict):
        text = as_dict(text)
    hidden = text.get("hidden_size", cfg.get("hidden_size"))
    layers = text.get("num_hidden_layers", cfg.get("num_hidden_layers"))
    return (
        int(hidden) if hidden is not None else None,
        int(layers) if layers is not None else None,
    )


def text_model_type(config: Any) -> str | None:
    """``text_config.model_type`` (``llama``, ``mistral``, ``qwen2``...), if the config
    has a text sub-config."""
    text = as_dict(config).get("text_config") or {}
    if not isinstance(text, dict):
        text = as_dict(text)
    value = text.get("model_type")
    return str(value) if value else None


def image_token_id(config: Any) -> int | None:
    """``image_token_id`` if set, else ``image_token_index`` (llava-hf's name)."""
    cfg = as_dict(config)
    for key in ("image_token_id", "image_token_index"):
        if cfg.get(key) is not None:
            return int(cfg[key])
    return None
