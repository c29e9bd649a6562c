"""Strategy registry and one module per strategy."""

from decoding.strategies.base import NoParams, Strategy, StrategyParams
from decoding.strategies.errors import DecodingParamError
from decoding.strategies.registry import (
    Decoding,
    available,
    get_strategy,
    register_strategy,
    resolve,
)

__all__ = [
    "Decoding",
    "DecodingParamError",
    "NoParams",
    "Strategy",
    "StrategyParams",
    "available",
    "get_strategy",
    "register_strategy",
    "resolve",
]
