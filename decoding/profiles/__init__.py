"""Per-model constants the strategies need, as small data files (one JSON per model).

A profile names the model family, the image-token id, the vision feature layer, the
number of image tokens (``None`` where it depends on the image size) and VAR's sink
dimensions, sink threshold and edited layer range. Every value in a bundled file cites
its source (a config field of the checkpoint, a paper with its official repository, or
"not published"); ``docs/profiles.md`` lists them.

VAR's sink dimensions are published only for LLaVA-1.5 (Kang et al., ICLR 2025). Other
profiles carry ``"sink_dims": null, "tau": null``: :attr:`ModelProfile.var_calibrated`
is then false and :meth:`ModelProfile.var_missing_reason` names the command that
measures them (:mod:`decoding.profiles.calibrate`), so the server can refuse VAR instead
of guessing.

Lookup (:func:`profile_for`): the checkpoint's family (``model_type``, else
``architectures[0]``), the text model's hidden size and layer count, and the text
model's ``model_type`` where the config names one. All three are needed: LLaVA-1.5-7B,
LLaVA-NeXT-Vicuna-7B and LLaVA-NeXT-Mistral-7B all have a 4096-wide, 32-layer text model
(family tells the first from the others, ``llama``/``mistral`` the last two). Test
checkpoints carry ``sink_dims`` at the top of their config and match the
``tiny-<family>`` profile. The config is authoritative where it states a value
(``image_token_id``/``image_token_index``, ``vision_feature_layer``, and the tiny models'
``sink_dims``/``sink_tau``). No positions are hard-coded anywhere: image positions are
found from the image-token id in each prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from decoding.profiles.configs import (
    as_dict,
    family_of,
    image_token_id,
    text_model_type,
    text_shape,
)

CALIBRATE = "python -m decoding.profiles.calibrate"
#: Profiles of test checkpoints match on this config key.
TINY_KEY = "sink_dims"


class VARUncalibrated(ValueError):
    """VAR was asked for on a model whose sink dimensions or threshold are unknown."""


@dataclass(frozen=True)
class ModelProfile:
    name: str
    image_token_id: int | None
    #: ``hidden_states`` index LLaVA reads image features from; ``None`` for Qwen (the
    #: merger output of the last ViT block).
    vision_feature_layer: int | None
    #: Image tokens per image; ``None`` where it depends on the image (anyres, dynamic
    #: resolution).
    image_tokens: int | None
    #: VAR's ``D_sink``; empty when not calibrated.
    sink_dims: tuple[int, ...]
    #: VAR's ``tau`` on ``phi``; ``None`` when not calibrated.
    sink_tau: float | None
    #: Decoder layers VAR edits and reads sinks in: ``range(*var_layers)``.
    var_layers: tuple[int, int]
    match: dict[str, Any]
    family: str = "llava-1.5"
    #: The Hugging Face repository the values were taken from (``None`` for test models).
    checkpoint: str | None = None
    #: Where the VAR values come from, or why they are missing.
    var_source: str = ""
    #: Field name -> source, as in the JSON file.
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def var_layer_set(self) -> list[int]:
        return list(range(*self.var_layers))

    @property
    def var_calibrated(self) -> bool:
        """Sink dimensions and threshold are both known."""
        return bool(self.sink_dims) and self.sink_tau is not None

    def var_missing_reason(self) -> str:
        """Why VAR cannot run on this model and how to fix it; ``""`` if it can."""
        if self.var_calibrated:
            return ""
        model = self.checkpoint or self.name
        return (
            f"VAR is not calibrated for {model}: its sink dimensions and sink threshold are "
            f"not published (model profile {self.name!r}). Measure them with "
            f"`{CALIBRATE} MODEL_DIR --images DIR --out PROFILES/{self.name}.json` and "
            f"start the server with {PROFILES_ENV}=PROFILES"
        )

    def require_var(self) -> None:
        """Raise :class:`VARUncalibrated` with :meth:`var_missing_reason` if needed."""
        if not self.var_calibrated:
            raise VARUncalibrated(self.var_missing_reason())


def _from_json(data: dict[str, Any]) -> ModelProfile:
    v = data["var"]
    dims = v.get("sink_dims")
    tau = v.get("tau")
    vfl = data.get("vision_feature_layer")
    tokens = data.get("image_tokens")
    return ModelProfile(
        name=data["name"],
        image_token_id=data.get("image_token_id"),
        vision_feature_layer=int(vfl) if vfl is not None else None,
        image_tokens=int(tokens) if tokens is not None else None,
        sink_dims=tuple(int(d) for d in dims) if dims else (),
        sink_tau=float(tau) if tau is not None else None,
        var_layers=(int(v["layers"][0]), int(v["layers"][1])),
        match=dict(data["match"]),
        family=data.get("family", "llava-1.5"),
        checkpoint=data.get("checkpoint"),
        var_source=str(v.get("source", "")),
        sources=dict(data.get("sources", {})),
    )


#: Directories (``os.pathsep``-separated) of extra profiles, e.g. calibrations; a profile
#: there that matches a checkpoint wins over the bundled one.
PROFILES_ENV = "LUCID_PROFILES"


def user_profiles() -> list[ModelProfile]:
    """The profiles in the ``LUCID_PROFILES`` directories, in name order."""
    import os

    out = []
    for folder in filter(None, os.environ.get(PROFILES_ENV, "").split(os.pathsep)):
        out += [load_profile_file(f) for f in sorted(Path(folder).glob("*.json"))]
    return out


def available() -> list[str]:
    """Names of the bundled profiles."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name[: -len(".json")] for f in files if f.name.endswith(".json"))


@cache
def _bundled_text(name: str) -> str | None:
    # Cached: the reference engine looks a profile up per request.
    path = resources.files(__name__) / f"{name}.json"
    return path.read_text() if path.is_file() else None


def load_profile(name: str) -> ModelProfile:
    """A bundled profile by name (``llava-1.5-7b``, ``qwen2.5-vl-7b-instruct``, ...)."""
    text = _bundled_text(name)
    if text is None:
        raise KeyError(f"no model profile {name!r}; available: {', '.join(available())}")
    return _from_json(json.loads(text))


def load_profile_file(path: str | Path) -> ModelProfile:
    """A profile from any JSON file of the bundled schema (e.g. a calibration's output)."""
    return _from_json(json.loads(Path(path).read_text()))


def _matches(prof: ModelProfile, cfg: dict[str, Any], family: str | None) -> bool:
    """Family, text shape, and the text model's type where both sides name it (it tells
    LLaVA-NeXT-Vicuna-7B from LLaVA-NeXT-Mistral-7B: same family, same shape)."""
    m = prof.match
    if family is not None and prof.family != family:
        return False
    if (m.get("text_hidden_size"), m.get("text_num_layers")) != text_shape(cfg):
        return False
    text_type = text_model_type(cfg)
    return not (m.get("text_model_type") and text_type and m["text_model_type"] != text_type)


def profile_for(config: Any) -> ModelProfile:
    """The profile of a checkpoint config (object or dict), with the config's own values
    filled in. Raises ``KeyError`` when no profile, or more than one, matches."""
    cfg = as_dict(config)
    family = family_of(cfg)
    shape = text_shape(cfg)
    profiles = [load_profile(n) for n in available()]
    tiny = bool(cfg.get(TINY_KEY))
    if tiny:
        # A family-less dict is the LLaVA-1.5 layout the tiny builder started with.
        fam = family or "llava-1.5"
        found = [p for p in profiles if p.match.get("config_has") == TINY_KEY and p.family == fam]
    else:
        for source in (user_profiles(), profiles):  # calibrations first
            found = [p for p in source if "config_has" not in p.match and _matches(p, cfg, family)]
            if found:
                break
    if len(found) != 1:
        what = "no model profile matches" if not found else "several model profiles match"
        raise KeyError(
            f"{what} this checkpoint (family {family or 'unknown'}, text hidden size "
            f"{shape[0]}, {shape[1]} layers{', test model' if tiny else ''}"
            f"{': ' + ', '.join(p.name for p in found) if found else ''}); add or fix a "
            "profile in decoding/profiles"
        )
    return _with_config_values(found[0], cfg, tiny, shape[1])


def _with_config_values(
    prof: ModelProfile, cfg: dict[str, Any], tiny: bool, layers: int | None
) -> ModelProfile:
    updates: dict[str, Any] = {}
    token = image_token_id(cfg)
    if token is not None:
        updates["image_token_id"] = token
    if isinstance(cfg.get("vision_feature_layer"), int):
        updates["vision_feature_layer"] = int(cfg["vision_feature_layer"])
    if tiny:
        updates["sink_dims"] = tuple(int(d) for d in cfg[TINY_KEY])
        if cfg.get("sink_tau") is not None:
            updates["sink_tau"] = float(cfg["sink_tau"])
        # Test models differ in depth: edit from the profile's first layer to L - 2.
        if layers is not None and layers - 1 > prof.var_layers[0]:
            updates["var_layers"] = (prof.var_layers[0], layers - 1)
    return replace(prof, **updates)


__all__ = [
    "CALIBRATE",
    "ModelProfile",
    "VARUncalibrated",
    "available",
    "load_profile",
    "load_profile_file",
    "profile_for",
]
