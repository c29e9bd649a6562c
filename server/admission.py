"""Admission control by expected cost: costly strategies cannot starve plain requests.

Every generation request is charged its strategy's declared cost for its parameters
(``get_strategy(name).cost(params)``: engine work relative to plain decoding, e.g.
OPERA's ``num_beams * (1 + num_candidates)``) times its number of answers, for as long
as it runs. Plain requests (cost at most 1) are always admitted at once; their charge
still counts, so a busy server admits less costly work. A costly request is admitted
when the charges in flight plus its own fit the budget and its strategy is under its
concurrency cap; one that alone exceeds the budget is admitted only when no other costly
request runs. Otherwise it waits, first come first served, at most ``max_wait``
seconds, then gets 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field

#: Requests at or below this cost are never queued.
PLAIN_COST = 1.0


class Overloaded(Exception):
    """The request waited ``waited`` seconds and was not admitted."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message, self.retry_after = message, retry_after


@dataclass
class Ticket:
    strategy: str
    cost: float
    queued: bool = False


@dataclass
class _Waiter:
    ticket: Ticket
    future: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class Settings:
    #: Cost units in flight at once (``--decoding-budget``).
    budget: float
    #: Per-strategy limit on concurrently running requests (``--decoding-max-concurrency``).
    caps: dict[str, int] = field(default_factory=dict)
    #: Longest wait of a costly request before its 429 (``--decoding-queue-timeout``).
    max_wait: float = 30.0
    #: Engine requests in flight for fan-out strategies (``decoding.engine.pacing``).
    fanout: int | None = None


class Admission:
    def __init__(self, settings: Settings, on_event=None) -> None:  # noqa: ANN001
        self.settings = settings
        #: ``on_event(kind, strategy)`` with kind queued, dequeued (admitted
        #: after waiting, or gone), rejected (429 after waiting), admitted, released.
        self.on_event = on_event or (lambda kind, strategy: None)
        self.in_use = 0.0
        self.costly = 0
        self.running: dict[str, int] = {}
        self.waiting: deque[_Waiter] = deque()

    def _fits(self, t: Ticket) -> bool:
        cap = self.settings.caps.get(t.strategy)
        if cap is not None and self.running.get(t.strategy, 0) >= cap:
            return False
        return self.in_use + t.cost <= self.settings.budget or self.costly == 0

    def _take(self, t: Ticket) -> None:
        self.in_use += t.cost
        self.running[t.strategy] = self.running.get(t.strategy, 0) + 1
        if t.cost > PLAIN_COST:
            self.costly += 1
        self.on_event("admitted", t.strategy)

    async def acquire(self, strategy: str, cost: float) -> Ticket:
        t = Ticket(strategy, cost)
        if cost <= PLAIN_COST or (not self.waiting and self._fits(t)):
            self._take(t)
            return t
        t.queued = True
        w = _Waiter(t)
        self.waiting.append(w)
        self.on_event("queued", strategy)
        try:
            await asyncio.wait_for(asyncio.shield(w.future), self.settings.max_wait)
        except asyncio.TimeoutError:
            if not w.future.done():
                self.waiting.remove(w)
                self.on_event("rejected", strategy)
                raise Overloaded(
                    f"the server is at its decoding budget ({self._describe()}); a "
                    f"{strategy!r} request costing {cost:g} waited {self.settings.max_wait:g} s "
                    "and was not admitted; retry later or lower its cost parameters",
                    retry_after=max(1, math.ceil(self.settings.max_wait)),
                ) from None
        except BaseException:  # cancelled (client gone): give back a slot granted meanwhile
            if w.future.done():
                self.release(t)
            elif w in self.waiting:
                self.waiting.remove(w)
                self.on_event("dequeued", strategy)
            raise
        return t

    def release(self, t: Ticket) -> None:
        self.in_use = max(0.0, self.in_use - t.cost)
        self.running[t.strategy] -= 1
        if t.cost > PLAIN_COST:
            self.costly -= 1
        self.on_event("released", t.strategy)
        self._wake()

    def _wake(self) -> None:
        # First come first served: a big request at the head is not overtaken (no
        # starvation of OPERA at its maxima by a stream of cheaper contrastive requests).
        while self.waiting and self._fits(self.waiting[0].ticket):
            w = self.waiting.popleft()
            self.on_event("dequeued", w.ticket.strategy)
            self._take(w.ticket)
            w.future.set_result(None)

    def others_running(self, besides: frozenset[str]) -> bool:
        """Whether a request of a strategy outside ``besides`` is in flight."""
        return any(n > 0 for s, n in self.running.items() if s not in besides)

    def _describe(self) -> str:
        return f"{self.in_use:g} of {self.settings.budget:g} cost units in flight"
