"""What every benchmark job does around its own items and scoring: run, check, report."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from eval.jobs.backend import Backend
from eval.jobs.runner import JobError, RunStats, WorkItem, done_records, run_items
from eval.jobs.settings import check_manifest

BackendFactory = Callable[[], AbstractAsyncContextManager[Backend]]


async def run_job(
    benchmark: str,
    settings: dict[str, Any],
    items: list[WorkItem],
    out_dir: Path,
    log_name: str,
    make_backend: BackendFactory,
    *,
    default_concurrency: int,
    progress: bool,
) -> tuple[RunStats, dict[str, dict[str, Any]], dict[str, Any]]:
    """Run (or resume) the items; returns the stats, every answered record by key, and
    the backend's description. Failed requests stop the job before scoring."""
    check_manifest(out_dir, benchmark, settings)
    log = out_dir / log_name
    async with make_backend() as backend:
        unavailable = await backend.unavailable()
        skipped = {i.strategy for i in items if i.strategy in unavailable}
        items = [i for i in items if i.strategy not in skipped]
        stats = await run_items(
            backend,
            items,
            settings["sampling"],
            log,
            concurrency=int(settings.get("concurrency") or default_concurrency),
            desc=benchmark.upper(),
            progress=progress,
        )
        stats.unavailable = {s: unavailable[s] for s in sorted(skipped)}
    if stats.failed:
        raise JobError(
            f"{stats.failed} request(s) failed (logged in {log}); rerun the same command to retry"
        )
    return stats, done_records(log), backend.describe()


def results_header(benchmark: str, settings: dict[str, Any], backend: dict[str, Any]) -> dict:
    """The fields every results.json starts with (a run is reproducible from them)."""
    return {
        "benchmark": benchmark,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "backend": backend,
        "prompt_template": settings["prompt"],
        "sampling": settings["sampling"],
    }


def run_summary(stats: RunStats, file_key: str, log_name: str) -> dict[str, Any]:
    return {
        file_key: log_name,
        "requests_total": stats.total,
        "already_done": stats.already_done,
        "requests_made": stats.answered,
        "seconds": round(stats.seconds, 1),
    }
