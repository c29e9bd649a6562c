"""Per-model constants the strategies need, as small data files (one JSON per model).

A profile names the VAR sink dimensions, sink threshold and edited layer range, the
image-token id and the vision feature layer. Values for LLaVA-1.5-7B/13B come from the
papers and official repositories (each file cites its source); the tiny test checkpoint
has its own. The checkpoint's config is authoritative where it states a value
(``image_token_id``, ``vision_feature_layer``, and ``sink_dims`` of the tiny model).

Lookup: :func:`profile_for` matches a ``transformers`` LLaVA config (or a dict of it) by
the text model's hidden size and layer count, or by the ``sink_dims`` key the tiny
builder writes. No positions are hard-coded anywhere: image positions are found from
the image-token id in each prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class ModelProfile:
    name: str
    image_token_id: int | None
    vision_feature_layer: int
    image_tokens: int
    sink_dims: tuple[int, ...]
    sink_tau: float
    #: Decoder layers VAR edits and reads sinks in: ``range(*var_layers)``.
    var_layers: tuple[int, int]
    match: dict[str, Any]

    def var_layer_set(self) -> list[int]:
        return list(range(*self.var_layers))


def _from_json(data: dict[str, Any]) -> ModelProfile:
    v = data["var"]
    return ModelProfile(
        name=data["name"],
        image_token_id=data.get("image_token_id"),
        vision_feature_layer=int(data["vision_feature_layer"]),
        image_tokens=int(data["image_tokens"]),
        sink_dims=tuple(int(d) for d in v["sink_dims"]),
        sink_tau=float(v["tau"]),
        var_layers=(int(v["layers"][0]), int(v["layers"][1])),
        match=dict(data["match"]),
    )


def available() -> list[str]:
    """Names of the bundled profiles."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name[: -len(".json")] for f in files if f.name.endswith(".json"))


def load_profile(name: str) -> ModelProfile:
    """A bundled profile by name (``llava-1.5-7b``, ``llava-1.5-13b``, ``tiny-llava``)."""
    path = resources.files(__name__) / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no model profile {name!r}; available: {', '.join(available())}")
    return _from_json(json.loads(path.read_text()))


def _as_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, dict):
        return config
    return config.to_dict()


def profile_for(config: Any) -> ModelProfile:
    """The profile of a LLaVA config, with the config's own values filled in."""
    cfg = _as_dict(config)
    text = cfg.get("text_config") or {}
    chosen = None
    for name in available():
        prof = load_profile(name)
        m = prof.match
        if "config_has" in m:
            if m["config_has"] in cfg:
                chosen = prof
                break
        elif (
            text.get("hidden_size") == m["text_hidden_size"]
            and text.get("num_hidden_layers") == m["text_num_layers"]
        ):
            chosen = prof
            break
    if chosen is None:
        raise KeyError(
            "no model profile matches this checkpoint (text hidden size "
            f"{text.get('hidden_size')}, {text.get('num_hidden_layers')} layers); add one "
            "to decoding/profiles"
        )
    image_token = cfg.get("image_token_id", cfg.get("image_token_index"))
    updates: dict[str, Any] = {}
    if image_token is not None:
        updates["image_token_id"] = int(image_token)
    if isinstance(cfg.get("vision_feature_layer"), int):
        updates["vision_feature_layer"] = int(cfg["vision_feature_layer"])
    if cfg.get("sink_dims"):
        updates["sink_dims"] = tuple(int(d) for d in cfg["sink_dims"])
    return _replace(chosen, **updates)


def _replace(profile: ModelProfile, **changes: Any) -> ModelProfile:
    from dataclasses import replace

    return replace(profile, **changes)


__all__ = ["ModelProfile", "available", "load_profile", "profile_for"]
