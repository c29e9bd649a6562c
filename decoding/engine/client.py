"""The engine client every request goes through: strategy dispatch and observation.

vLLM's OpenAI serving layer calls ``engine_client.generate(prompt, sampling_params,
request_id, ...)`` after it has templated the chat, loaded the images and built the
sampling parameters. :class:`StrategyEngineClient` wraps vLLM's ``AsyncLLM`` and, for that
one call, reads the validated ``decoding`` object that the HTTP layer put into
``sampling_params.extra_args`` (:data:`decoding.wire.DECODING_KEY`), validates it into
the strategy's parameter object and hands the request to the runner the strategy's
declaration names. Everything else is delegated unchanged.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams

from decoding.engine.pacing import engine_for
from decoding.engine.runner import (
    RunContext,
    Runner,
    StrategyFault,
    StrategyObserver,
    runners,
)
from decoding.strategies import Decoding, resolve
from decoding.wire import DECODING_KEY, decode_decoding

log = logging.getLogger("lucid.engine")


@functools.cache
def _plain() -> Decoding:
    return resolve(None)


def pop_decoding(sampling_params: SamplingParams) -> Decoding:
    """Take the ``decoding`` object out of ``extra_args`` (``none`` when absent)."""
    extra = sampling_params.extra_args
    if not extra or DECODING_KEY not in extra:
        return _plain()  # plain requests: no validation on the hot path
    raw = extra.pop(DECODING_KEY)
    if not extra:
        sampling_params.extra_args = None
    name, params = decode_decoding(raw)
    # Validated at admission already; this gives the runner the typed parameter object.
    return resolve({"strategy": name, **params})


class StrategyEngineClient:
    """A transparent proxy of vLLM's ``EngineClient`` whose ``generate`` dispatches."""

    def __init__(self, engine: Any, observer: StrategyObserver | None = None) -> None:
        self._engine = engine
        self._observer = observer
        self._runners: dict[str, Runner] = runners()

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
        if isinstance(sampling_params, SamplingParams):
            decoding = pop_decoding(sampling_params)
        else:
            decoding = _plain()
        strategy = decoding.strategy
        runner = self._runners.get(strategy.runner_name())
        if runner is None:
            # Start-up checks make this unreachable for enabled strategies.
            raise StrategyFault(strategy.name, f"no runner {strategy.runner_name()!r}")
        ctx = RunContext(engine_for(strategy.name, self._engine), strategy, self._observer)
        gen = runner(ctx, prompt, sampling_params, request_id, decoding.params, **kwargs)
        async for out in self._observe(strategy.name, gen):
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
        except StrategyFault as exc:
            reason = "error"
            log.error("%s", exc)
            raise
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
