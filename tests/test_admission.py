"""Admission control by cost (server.admission) and the fan-out pacing of OPERA's
engine requests (decoding.engine.pacing), on an event loop without a server."""

from __future__ import annotations

import asyncio

import pytest

from decoding.engine import pacing
from server.admission import Admission, Overloaded, Settings
from server.app import parse_caps


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_plain_requests_never_wait_and_costly_ones_queue_fifo() -> None:
    async def main() -> list[str]:
        events: list[str] = []
        adm = Admission(Settings(budget=10, max_wait=5), lambda k, s: events.append(f"{k}:{s}"))
        big = await adm.acquire("opera", 8)
        plain = [await adm.acquire("none", 1) for _ in range(5)]  # over budget: still in
        assert adm.in_use == 13
        waiter = asyncio.create_task(adm.acquire("vcd", 2))
        await asyncio.sleep(0.01)
        assert not waiter.done() and len(adm.waiting) == 1
        for t in plain:
            adm.release(t)
        await asyncio.sleep(0.01)
        assert waiter.done()  # 8 + 2 fits again
        adm.release(waiter.result())
        adm.release(big)
        assert adm.in_use == 0 and adm.costly == 0
        return events

    events = run(main())
    assert events.count("queued:vcd") == 1 and events.count("dequeued:vcd") == 1
    assert "rejected:vcd" not in events


def test_over_budget_requests_get_429_after_the_wait() -> None:
    async def main() -> None:
        adm = Admission(Settings(budget=10, max_wait=0.05))
        first = await adm.acquire("opera", 528)  # alone over budget: admitted when alone
        with pytest.raises(Overloaded) as exc:
            await adm.acquire("opera", 528)
        assert exc.value.retry_after == 1 and "528" in exc.value.message
        assert not adm.waiting
        adm.release(first)
        again = await adm.acquire("opera", 528)
        adm.release(again)

    run(main())


def test_per_strategy_caps() -> None:
    async def main() -> None:
        adm = Admission(Settings(budget=1000, caps={"opera": 1}, max_wait=0.05))
        a = await adm.acquire("opera", 30)
        b = await adm.acquire("vcd", 2)  # other strategies are not capped
        with pytest.raises(Overloaded):
            await adm.acquire("opera", 30)
        adm.release(a)
        adm.release(b)

    run(main())


def test_cancelled_waiter_leaves_the_queue() -> None:
    async def main() -> None:
        adm = Admission(Settings(budget=4, max_wait=5))
        a = await adm.acquire("vcd", 4)
        w = asyncio.create_task(adm.acquire("vcd", 2))
        await asyncio.sleep(0.01)
        w.cancel()
        await asyncio.gather(w, return_exceptions=True)
        assert not adm.waiting
        adm.release(a)
        assert adm.in_use == 0

    run(main())


def test_parse_caps() -> None:
    assert parse_caps("opera=1,vcd=8", ["none", "vcd", "opera"]) == {"opera": 1, "vcd": 8}
    assert parse_caps("none", ["none"]) == {}
    with pytest.raises(SystemExit, match="not enabled"):
        parse_caps("avc=2", ["none"])
    with pytest.raises(SystemExit, match="STRATEGY=N"):
        parse_caps("opera=0", ["opera"])


def test_paced_engine_bounds_requests_in_flight_under_contention() -> None:
    class Engine:
        def __init__(self) -> None:
            self.now = self.peak = 0

        async def generate(self, i: int):  # noqa: ANN201
            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.005)
            self.now -= 1
            yield i

    async def main(
        limit: int | None, busy: bool = True, idle: int | None = None
    ) -> tuple[int, list[int]]:
        pacing.set_limit(limit, lambda: busy, idle)
        engine = Engine()
        paced = pacing.engine_for("opera", engine)

        async def one(i: int) -> int:
            return [o async for o in paced.generate(i)][0]

        outs = await asyncio.gather(*(one(i) for i in range(40)))
        return engine.peak, list(outs)

    try:
        peak, outs = run(main(3))
        assert peak == 3 and outs == list(range(40))
        assert pacing.engine_for("vcd", object()).__class__ is object  # pairs not paced
        peak, _ = run(main(None))
        assert peak == 40
        peak, outs = run(main(3, busy=False))  # alone on the server: not bounded
        assert peak == 40 and outs == list(range(40))
        peak, _ = run(main(3, busy=False, idle=10))
        assert peak == 10
    finally:
        pacing.set_limit(None)
