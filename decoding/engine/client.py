"""The engine client every request goes through: strategy dispatch and observation.

vLLM's OpenAI serving layer calls ``engine_client.generate(prompt, sampling_params,
request_id, ...)`` after it has templated the chat, loaded the images and built the
sampling parameters. :class:`StrategyEngineClient` wraps vLLM's ``AsyncLLM`` and, for that
one call, reads the validated ``decoding`` object that the HTTP layer put into
``sampling_params.extra_args`` and hands the request to the served strategy's runner.
Everything else is delegated unchanged.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams

from decoding.engine.pacing import engine_for
from decoding.tally import current_tally

#: Key in ``vllm_xargs`` / ``SamplingParams.extra_args`` carrying the validated
#: ``decoding`` object as JSON (vLLM's extra args are flat, so a nested dict cannot ride).
DECODING_KEY = "lucid_decoding"


class StrategyObserver(Protocol):
    """Receives per-request facts for metrics; implemented by the server."""

    def request_finished(
        self,
        strategy: str,
        *,
        ttft: float | None,
        e2e: float,
        finish_reason: str,
        generation_tokens: int,
    ) -> None: ...

    def extra_forward_tokens(self, strategy: str, kind: str, tokens: int) -> None: ...

    def event(self, strategy: str, name: str, count: int = 1) -> None: ...


Runner = Callable[..., AsyncGenerator[RequestOutput, None]]
_RUNNERS: dict[str, Runner] = {}


def register_runner(name: str) -> Callable[[Runner], Runner]:
    """Register the served implementation of strategy ``name``.

    A runner is ``async def run(ctx: RunContext, prompt, sampling_params, request_id,
    params: dict, **kwargs)`` yielding ``RequestOutput`` objects, exactly like
    ``EngineClient.generate``.
    """

    def deco(fn: Runner) -> Runner:
        _RUNNERS[name] = fn
        return fn

    return deco


def served_strategies() -> list[str]:
    _load_runners()
    return list(_RUNNERS)


def _load_runners() -> None:
    # Importing the package registers the built-in runners.
    import decoding.engine.runners  # noqa: F401


class RunContext:
    """What a runner gets: the raw engine and the observer, tagged with its strategy."""

    def __init__(self, engine: Any, observer: StrategyObserver | None, strategy: str) -> None:
        self.engine = engine
        self.observer = observer
        self.strategy = strategy
        #: The HTTP request's own tally (``usage.decoding``); None outside a request.
        self.tally = current_tally()

    def extra_tokens(self, kind: str, tokens: int) -> None:
        if self.tally is not None and tokens:
            self.tally.add_tokens(kind, tokens)
        if self.observer is not None and tokens:
            self.observer.extra_forward_tokens(self.strategy, kind, tokens)

    def event(self, name: str, count: int = 1) -> None:
        if self.tally is not None and count:
            self.tally.add_event(name, count)
        if self.observer is not None and count:
            self.observer.event(self.strategy, name, count)


def pop_decoding(sampling_params: SamplingParams) -> dict[str, Any]:
    """Take our ``decoding`` object out of ``extra_args`` (``{}`` when absent)."""
    extra = sampling_params.extra_args
    if not extra or DECODING_KEY not in extra:
        return {}
    raw = extra.pop(DECODING_KEY)
    if not extra:
        sampling_params.extra_args = None
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


class StrategyEngineClient:
    """A transparent proxy of vLLM's ``EngineClient`` whose ``generate`` dispatches."""

    def __init__(self, engine: Any, observer: StrategyObserver | None = None) -> None:
        self._engine = engine
        self._observer = observer
        _load_runners()

    @property
    def engine(self) -> Any:
        return self._engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(
        self,
        prompt: Any,
        sampling_params: SamplingParams,
        request_id: str,
        **kwargs: Any,
    ) -> AsyncGenerator[RequestOutput, None]:
        params = (
            pop_decoding(sampling_params) if isinstance(sampling_params, SamplingParams) else {}
        )
        name = params.pop("strategy", "none")
        runner = _RUNNERS.get(name)
        if runner is None:
            raise ValueError(f"strategy {name!r} has no served implementation")
        ctx = RunContext(engine_for(name, self._engine), self._observer, name)
        gen = runner(ctx, prompt, sampling_params, request_id, params, **kwargs)
        async for out in self._observe(name, gen):
            yield out

    async def _observe(
        self, strategy: str, gen: AsyncGenerator[RequestOutput, None]
    ) -> AsyncGenerator[RequestOutput, None]:
        start = time.perf_counter()
        first: float | None = None
        final: RequestOutput | None = None
        reason = "abort"
        try:
            async for out in gen:
                if first is None and any(o.token_ids for o in out.outputs):
                    first = time.perf_counter() - start
                final = out
                yield out
            if final is not None and final.outputs:
                reason = str(final.outputs[0].finish_reason or "stop")
        except Exception:
            reason = "error"
            raise
        finally:
            await gen.aclose()
            if self._observer is not None:
                tokens = sum(len(o.token_ids) for o in final.outputs) if final else 0
                self._observer.request_finished(
                    strategy,
                    ttft=first,
                    e2e=time.perf_counter() - start,
                    finish_reason=reason,
                    generation_tokens=tokens,
                )
