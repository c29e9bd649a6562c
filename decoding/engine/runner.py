"""The runner interface: how a served strategy turns one request into engine requests.

A runner serves every strategy of one family (``single``, ``pair``) or one strategy that
needs its own orchestration (``opera``); which runner serves a strategy is part of its
declaration (:meth:`decoding.strategies.base.Strategy.runner_name`). Runners register
with :func:`register_runner`; :mod:`decoding.engine.runners` imports them all.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from vllm.exceptions import VLLMServerError
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams

from decoding.engine.families import Family, family_for
from decoding.observe import Event, ExtraTokens, StrategyObserver
from decoding.strategies.base import Strategy, StrategyParams
from decoding.tally import Tally, current_tally

__all__ = ["Event", "ExtraTokens", "RunContext", "Runner", "StrategyFault", "StrategyObserver"]


class StrategyFault(VLLMServerError):
    """The engine did not apply a strategy to a request (a hook it needs is missing, or
    its settings did not reach the hooks): the request fails with a 500 naming the
    strategy instead of returning a plain answer."""

    def __init__(self, strategy: str, detail: str) -> None:
        super().__init__(f"strategy {strategy!r} was not applied by the engine: {detail}")
        self.strategy = strategy


@dataclass
class RunContext:
    """What a runner gets besides the request: the raw engine, the declaration and
    the observer."""

    engine: Any
    strategy: type[Strategy]
    observer: StrategyObserver | None = None
    #: The HTTP request's own tally (``usage.decoding``); None outside a request.
    tally: Tally | None = field(default_factory=current_tally)

    @property
    def name(self) -> str:
        return self.strategy.name

    def extra_tokens(self, kind: ExtraTokens, tokens: int) -> None:
        if self.tally is not None and tokens:
            self.tally.add_tokens(kind, tokens)
        if self.observer is not None and tokens:
            self.observer.extra_forward_tokens(self.name, kind, tokens)

    def event(self, name: Event, count: int = 1) -> None:
        if self.tally is not None and count:
            self.tally.add_event(name, count)
        if self.observer is not None and count:
            self.observer.event(self.name, name, count)

    def family(self) -> Family:
        """The served checkpoint's model-family adapter."""
        return family_for(self.engine.model_config.hf_config)

    def image_token(self) -> int:
        return self.family().image_token(self.engine.model_config.hf_config)

    def stall_token(self) -> int:
        """The token the engine forces on rows it cannot decode as asked (the image
        placeholder: never a real answer token)."""
        return self.image_token()


class Runner(Protocol):
    """``EngineClient.generate`` with the strategy's context and validated parameters."""

    def __call__(
        self,
        ctx: RunContext,
        prompt: Any,
        sampling_params: SamplingParams,
        request_id: str,
        params: StrategyParams,
        **kwargs: Any,
    ) -> AsyncGenerator[RequestOutput, None]: ...


_RUNNERS: dict[str, Runner] = {}


def register_runner(name: str) -> Callable[[Runner], Runner]:
    def deco(fn: Runner) -> Runner:
        _RUNNERS[name] = fn
        return fn

    return deco


def runners() -> dict[str, Runner]:
    import decoding.engine.runners  # noqa: F401  (registers the built-in runners)

    return dict(_RUNNERS)
