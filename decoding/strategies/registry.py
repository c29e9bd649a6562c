"""The strategy registry: one closed set of names, validated at admission.

A strategy is its declaration module (:mod:`decoding.strategies.base`); the registry
finds them, so adding one edits no list:

* built-ins: every module of this package that is not infrastructure (``base``,
  ``contrast``, ``errors``, ``registry``, ``rules``, ``docs``);
* installed extensions: modules named by the ``lucid.strategies`` entry-point group;
* deployment extensions: modules named in ``LUCID_STRATEGY_MODULES`` (comma-separated),
  read in the API process and in the engine processes alike.

Modules are imported the first time the registry is read (no torch, no vLLM).
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from decoding.strategies.base import Strategy, StrategyParams
from decoding.strategies.errors import DecodingParamError

#: Modules of this package that declare no strategy.
INFRASTRUCTURE = {"base", "contrast", "errors", "registry", "rules", "docs"}
#: Environment variable naming extra declaration modules.
MODULES_ENV = "LUCID_STRATEGY_MODULES"
ENTRY_POINT_GROUP = "lucid.strategies"

_REGISTRY: dict[str, type[Strategy]] = {}
_loaded = False


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add a strategy under ``cls.name`` (names are unique)."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"strategy name {cls.name!r} is already registered by {existing!r}")
    _REGISTRY[cls.name] = cls
    return cls


def unregister_strategy(name: str) -> None:
    """Remove a strategy (extensions loaded for one run, tests)."""
    _REGISTRY.pop(name, None)


def declaration_modules() -> list[str]:
    """Every module that declares strategies: built-ins, entry points, environment."""
    package = importlib.import_module("decoding.strategies")
    names = [
        f"decoding.strategies.{m.name}"
        for m in pkgutil.iter_modules(package.__path__)
        if not m.name.startswith("_") and m.name not in INFRASTRUCTURE
    ]
    names += [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]
    names += [m.strip() for m in os.environ.get(MODULES_ENV, "").split(",") if m.strip()]
    return list(dict.fromkeys(names))


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in declaration_modules():
        importlib.import_module(module)


def available() -> list[str]:
    """Registered strategy names in their declared order (``none`` first)."""
    _load_builtins()
    return sorted(_REGISTRY, key=lambda name: (_REGISTRY[name].order, name))


def strategies() -> list[type[Strategy]]:
    """Every declaration, in :func:`available` order."""
    return [_REGISTRY[name] for name in available()]


def get_strategy(name: str) -> type[Strategy]:
    """Look a strategy up by name; the error lists the available names."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        maybe = f" Did you mean {hint[0]!r}?" if hint else ""
        raise DecodingParamError(
            f"unknown strategy {name!r}; available: {', '.join(available())}.{maybe}",
            param="decoding.strategy",
        ) from None


@dataclass(frozen=True)
class Decoding:
    """A validated ``decoding`` object: the strategy and its full parameter set."""

    strategy: type[Strategy]
    params: StrategyParams

    @property
    def name(self) -> str:
        return self.strategy.name

    def as_dict(self) -> dict[str, Any]:
        """The applied strategy and every parameter (defaults filled in)."""
        return {"strategy": self.name, **self.params.model_dump()}


def _pydantic_message(err: dict[str, Any]) -> str:
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"unknown parameter (value {value!r})"
    return f"{err['msg']} (got {value!r})"


def resolve(
    decoding: Any, *, enabled: list[str] | None = None, prefix: str = "decoding"
) -> Decoding:
    """Validate a raw ``decoding`` object (``None`` means the baseline ``none``).

    ``enabled`` restricts the names a deployment accepts. Errors are
    :class:`DecodingParamError` with ``param`` as a dotted path, e.g. ``decoding.alpha``.
    """
    if decoding is None:
        decoding = {}
    if not isinstance(decoding, dict):
        raise DecodingParamError(
            f"'{prefix}' must be an object, got {type(decoding).__name__} {decoding!r}",
            param=prefix,
        )
    raw = dict(decoding)
    name = raw.pop("strategy", "none")
    if not isinstance(name, str):
        raise DecodingParamError(
            f"'{prefix}.strategy' must be a string, got {name!r}", param=f"{prefix}.strategy"
        )
    strategy = get_strategy(name)
    if enabled is not None and name not in enabled:
        raise DecodingParamError(
            f"strategy {name!r} is not enabled on this server; enabled: {', '.join(enabled)}",
            param=f"{prefix}.strategy",
        )
    try:
        params = strategy.Params.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise DecodingParamError(
            f"invalid '{prefix}.{loc}' for strategy {name!r}: {_pydantic_message(err)}",
            param=f"{prefix}.{loc}",
        ) from None
    return Decoding(strategy=strategy, params=params)
