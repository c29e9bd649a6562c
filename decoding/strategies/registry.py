"""The strategy registry: one closed set of names, validated at admission.

Built-in strategies live one per module in this package and are imported lazily the
first time the registry is read, so importing the registry stays cheap (no torch).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from decoding.strategies.base import Strategy, StrategyParams
from decoding.strategies.errors import DecodingParamError

#: Modules of the built-in strategies, in the order they are listed to users.
BUILTIN_MODULES = (
    "decoding.strategies.none",
    "decoding.strategies.vcd",
    "decoding.strategies.avc",
    "decoding.strategies.damro",
    "decoding.strategies.opera",
    "decoding.strategies.var",
)

_REGISTRY: dict[str, type[Strategy]] = {}
_loaded = False


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add a strategy under ``cls.name`` (names are unique)."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"strategy name {cls.name!r} is already registered by {existing!r}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # A built-in strategy module that is not part of this build is simply absent.
            if exc.name != module:
                raise
    _loaded = True


def available() -> list[str]:
    """Registered strategy names: ``none`` first, then in registration order (which
    depends on import order, so ``none`` is pinned)."""
    _load_builtins()
    return sorted(_REGISTRY, key=lambda name: name != "none")


def get_strategy(name: str) -> type[Strategy]:
    """Look a strategy up by name; the error lists the available names."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        maybe = f" Did you mean {hint[0]!r}?" if hint else ""
        raise DecodingParamError(
            f"unknown strategy {name!r}; available: {', '.join(_REGISTRY)}.{maybe}",
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
