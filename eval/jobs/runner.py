"""Resumable, concurrent request runner writing one JSON line per answer.

Each work item has a stable key. The log is append-only; a rerun reads the keys already
answered and sends only the rest, so an interrupted job (Ctrl-C, crash, lost server)
continues where it stopped. A torn last line is cut off before appending. Failed
requests are logged with an ``error`` field and retried on the next run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.io import iter_jsonl_tolerant
from eval.jobs.backend import Backend


class JobError(RuntimeError):
    """A job cannot go on (bad settings, or the server rejects the requests)."""


@dataclass(frozen=True)
class WorkItem:
    key: str
    strategy: str
    image: Path
    prompt: str
    decoding: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)  # copied into the log line


@dataclass
class RunStats:
    total: int = 0
    already_done: int = 0
    answered: int = 0
    failed: int = 0
    seconds: float = 0.0
    decoding_echo: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Strategies of the job the server's model family does not define, with why.
    unavailable: dict[str, str] = field(default_factory=dict)


def _repair_tail(path: Path) -> None:
    """Drop an incomplete last line left by an interrupted write."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def done_records(path: Path) -> dict[str, dict[str, Any]]:
    """Successful records of a log, by key (a later line wins)."""
    return {r["key"]: r for r in iter_jsonl_tolerant(path) if "key" in r and not r.get("error")}


def _fatal(exc: Exception) -> bool:
    """Client errors other than timeouts/rate limits repeat for every item: stop early."""
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)


async def run_items(
    backend: Backend,
    items: Sequence[WorkItem],
    sampling: dict[str, Any],
    log_path: Path,
    *,
    concurrency: int = 8,
    desc: str = "requests",
    progress: bool = True,
) -> RunStats:
    """Answer every item whose key is not yet in ``log_path``."""
    from tqdm import tqdm

    log_path.parent.mkdir(parents=True, exist_ok=True)
    _repair_tail(log_path)
    done = done_records(log_path)
    stats = RunStats(total=len(items), already_done=sum(i.key in done for i in items))
    for rec in done.values():
        if rec.get("decoding") and rec.get("strategy"):
            stats.decoding_echo.setdefault(rec["strategy"], rec["decoding"])
    pending = [i for i in items if i.key not in done]
    queue: asyncio.Queue[WorkItem] = asyncio.Queue()
    for item in pending:
        queue.put_nowait(item)
    start = time.monotonic()
    bar = tqdm(total=len(items), initial=stats.already_done, desc=desc, disable=not progress)
    with log_path.open("a", encoding="utf-8") as log:

        def write(rec: dict[str, Any]) -> None:
            log.write(json.dumps(rec, ensure_ascii=False) + "\n")
            log.flush()  # each answer is durable as soon as it is written

        async def worker() -> None:
            while True:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                rec: dict[str, Any] = {"key": item.key, "strategy": item.strategy, **item.record}
                t0 = time.monotonic()
                try:
                    gen = await backend.generate(item.image, item.prompt, item.decoding, sampling)
                except Exception as exc:  # logged, retried on the next run
                    if _fatal(exc):
                        msg = f"the server rejected a {item.strategy!r} request: {exc}"
                        raise JobError(msg) from exc
                    write({**rec, "error": f"{type(exc).__name__}: {exc}"})
                    stats.failed += 1
                else:
                    rec.update(
                        prompt=item.prompt,
                        answer=gen.text,
                        finish_reason=gen.finish_reason,
                        decoding=gen.decoding,
                        latency_s=round(time.monotonic() - t0, 3),
                    )
                    write(rec)
                    stats.answered += 1
                    if gen.decoding:
                        stats.decoding_echo.setdefault(item.strategy, gen.decoding)
                bar.update(1)

        tasks = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bar.close()
    stats.seconds = time.monotonic() - start
    return stats
