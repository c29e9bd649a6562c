"""Pacing of fan-out strategies: a bound on their engine requests in flight.

OPERA's runner turns one HTTP request into ``num_beams * num_candidates`` one-token
look-ahead requests per step (512 at the parameter maxima). Submitted all at once they
fill every engine step, and plain requests that share those steps slow down by an order
of magnitude however few OPERA requests the admission budget lets in. Runners of
strategies that fan out (:func:`paced`, from their declarations) therefore get an engine
whose ``generate`` first takes one of :func:`set_limit` slots shared by all such
requests of the process and holds it until that engine request ends; while other
requests are running, the look-aheads of a step then run a few at a time and the engine
keeps room for everyone else. Alone on the server, OPERA keeps the whole engine.
Contrastive pairs are not paced: their two requests must be scheduled together.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any


def paced() -> frozenset[str]:
    """Strategies whose runner fans out into independent engine requests."""
    from decoding.strategies.registry import strategies

    return frozenset(d.name for d in strategies() if d.engine.fans_out)


_limit: int | None = None
_idle_limit: int | None = None


def _always() -> bool:
    return True


_contended: Callable[[], bool] = _always
_slots: _Slots | None = None


def set_limit(
    limit: int | None,
    contended: Callable[[], bool] | None = None,
    idle_limit: int | None = None,
) -> None:
    """Engine requests of paced strategies in flight at once (None: unbounded) while
    ``contended()`` says other requests are running (default: always), and
    ``idle_limit`` (None: unbounded) otherwise. An idle limit of the engine's
    ``max_num_seqs`` costs nothing (the engine runs no more at once) and bounds what
    must drain from the engine's queue when a plain request arrives."""
    global _limit, _idle_limit, _contended, _slots
    _limit, _idle_limit, _slots = limit, idle_limit, None
    _contended = contended or _always


def limit() -> int | None:
    return _limit


class _Slots:
    """A semaphore whose bound holds only under contention (work-conserving: alone, a
    paced request may use the whole engine)."""

    def __init__(self, bound: int) -> None:
        self.bound, self.in_flight = bound, 0
        self.cond = asyncio.Condition()

    def _free(self) -> bool:
        if _contended():
            return self.in_flight < self.bound
        return _idle_limit is None or self.in_flight < _idle_limit

    async def __aenter__(self) -> None:
        async with self.cond:
            await self.cond.wait_for(self._free)
            self.in_flight += 1

    async def __aexit__(self, *exc: object) -> None:
        async with self.cond:
            self.in_flight -= 1
            # Wake one waiter per freed slot; two when uncontended, so that the number in
            # flight grows back once the other requests are gone.
            self.cond.notify(1 if _contended() else 2)


class PacedEngine:
    """``engine`` with ``generate`` bounded by the shared slots; the rest delegated."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        global _slots
        if _limit is None:
            async for out in self._engine.generate(*args, **kwargs):
                yield out
            return
        if _slots is None:  # created lazily: inside the serving event loop
            _slots = _Slots(_limit)
        async with _slots:
            gen = self._engine.generate(*args, **kwargs)
            try:
                async for out in gen:
                    yield out
            finally:
                await gen.aclose()


def engine_for(strategy: str, engine: Any) -> Any:
    return PacedEngine(engine) if _limit is not None and strategy in paced() else engine
