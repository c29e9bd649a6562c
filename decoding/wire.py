"""What travels between the API process and the engine, typed, in one vLLM-free module.

Two reserved keys ride in ``SamplingParams.extra_args`` (vLLM's only per-request channel,
whose values must be flat):

* :data:`DECODING_KEY`: the validated ``decoding`` object of a user request, set by the
  HTTP layer and read by the engine client (``{"strategy": name, **params}`` as JSON);
* :data:`ENGINE_KEY`: the settings of one engine request that the engine's hooks act on,
  set by a runner and read by the row carrier inside the engine. One frozen settings type
  per engine kind (:class:`PairSettings`, :class:`VarSettings`, :class:`OperaProbe`).

Every settings object names the strategy it serves (for errors) and the engine hook
points it needs (:meth:`EngineSettings.needs`): the engine fails a row whose needs no
registered hook covers instead of decoding it plainly.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

#: ``extra_args`` key of a user request's validated ``decoding`` object (JSON).
DECODING_KEY = "lucid_decoding"
#: ``extra_args`` key of one engine request's settings (JSON of an :class:`EngineSettings`).
ENGINE_KEY = "lucid_engine"
#: Both keys; a client that sends either in ``vllm_xargs`` gets a 400.
RESERVED_KEYS = (DECODING_KEY, ENGINE_KEY)

#: Engine hook points, in the order a step reaches them.
EMBED, FORWARD, ATTENTION, LOGITS = "embed", "forward", "attention", "logits"
HOOK_POINTS = (EMBED, FORWARD, ATTENTION, LOGITS)

#: A hook a row needs: (mechanism, hook point), e.g. ``("var", "attention")``.
Need = tuple[str, str]


class WireError(ValueError):
    """Settings that do not decode: unknown kind, missing or unexpected fields."""


@dataclass(frozen=True)
class EngineSettings:
    """Base of the per-kind engine settings."""

    kind: ClassVar[str]
    #: The strategy the request serves (named in errors and fault reports).
    strategy: str

    def needs(self) -> frozenset[Need]:
        """The (mechanism, hook point) pairs that must act on this request's rows."""
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **_plain(dataclasses.asdict(self))})


@dataclass(frozen=True)
class BlindMask:
    """AVC's contrast: mask the image embeddings the clean prefill does not over-attend."""

    gamma: float
    lamb: float
    mask: Literal["zeros", "ones"]
    #: Position of the query token: the last token of the ORIGINAL prompt.
    query: int
    image_token: int


@dataclass(frozen=True)
class PairSettings(EngineSettings):
    """One row of a contrastive pair (``main`` + ``contrast``, or ``solo`` at alpha 0)."""

    kind: ClassVar[str] = "cd"
    pair: str
    role: Literal["main", "contrast", "solo"]
    alpha: float = 0.0
    beta: float = 0.0
    #: Engine-side contrast input of the contrast row: ``"outliers"`` (DAMRO's top-k
    #: vision tokens, computed when the image is embedded) or ``"blind_mask"`` (AVC).
    contrast: Literal["outliers", "blind_mask"] | None = None
    blind: BlindMask | None = None

    def needs(self) -> frozenset[Need]:
        need = {("cd", LOGITS)}
        if self.contrast == "outliers":
            need.add(("outliers", EMBED))
        elif self.contrast == "blind_mask":
            need |= {("blind_mask", FORWARD), ("blind_mask", ATTENTION)}
        return frozenset(need)


@dataclass(frozen=True)
class VarSettings(EngineSettings):
    """VAR's edit of one request (parameters in the paper's meaning, model constants
    resolved from the profile)."""

    kind: ClassVar[str] = "var"
    p: float
    rho: float
    summ: float
    tau: float
    dims: tuple[int, ...]
    layers: tuple[int, ...]
    image_token_id: int

    def needs(self) -> frozenset[Need]:
        return frozenset({("var", FORWARD), ("var", ATTENTION)})


@dataclass(frozen=True)
class OperaProbe(EngineSettings):
    """One OPERA look-ahead: return the last layer's attention row in-band."""

    kind: ClassVar[str] = "opera"
    layer: int
    prompt_len: int
    #: ``[start, end)`` runs of image tokens in the prompt.
    image: tuple[tuple[int, int], ...]
    candidates: int

    def needs(self) -> frozenset[Need]:
        return frozenset({("opera", ATTENTION), ("opera", LOGITS)})


#: Every engine kind, by its ``kind`` tag.
KINDS: dict[str, type[EngineSettings]] = {
    cls.kind: cls for cls in (PairSettings, VarSettings, OperaProbe)
}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def decode_engine(raw: str | dict[str, Any]) -> EngineSettings:
    """Settings from their JSON (or an already parsed dict)."""
    data = dict(json.loads(raw) if isinstance(raw, str) else raw)
    kind = data.pop("kind", None)
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"unknown engine settings kind {kind!r}; known: {', '.join(KINDS)}")
    names = {f.name for f in dataclasses.fields(cls)}
    extra = set(data) - names
    if extra:
        raise WireError(f"{kind} settings: unexpected fields {sorted(extra)}")
    if cls is PairSettings and isinstance(data.get("blind"), dict):
        data["blind"] = BlindMask(**data["blind"])
    try:
        return cls(**{k: _tuples(v) for k, v in data.items()})
    except TypeError as exc:
        raise WireError(f"{kind} settings: {exc}") from None


def encode_decoding(strategy: str, params: dict[str, Any]) -> str:
    """The ``DECODING_KEY`` value of a validated request."""
    return json.dumps({"strategy": strategy, **params})


def decode_decoding(raw: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(strategy, params)`` from the ``DECODING_KEY`` value."""
    data = dict(json.loads(raw) if isinstance(raw, str) else raw)
    return str(data.pop("strategy", "none")), data
