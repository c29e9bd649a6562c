"""The POPE job: ask every question under each strategy, then score per split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval import lab
from eval.jobs.common import BackendFactory, results_header, run_job, run_summary
from eval.jobs.report import pope_plot, pope_table, write_json
from eval.jobs.runner import JobError, WorkItem
from eval.pope.data import QuestionFile, load_questions
from eval.pope.parsers import PARSER_SOURCES
from eval.pope.score import score_splits


def build_items(
    settings: dict[str, Any], qfiles: dict[str, QuestionFile]
) -> tuple[list[WorkItem], dict[str, list[str]]]:
    """Work items, and the keys of each ``strategy/split`` in question order."""
    if not settings.get("images"):
        raise JobError("set the image folder (--images, COCO val2014 for the COCO sets)")
    images = Path(lab.resolve_images(settings["images"]))
    limit = settings.get("limit")
    items: list[WorkItem] = []
    order: dict[str, list[str]] = {}
    missing: set[str] = set()
    for split, qf in qfiles.items():
        questions = qf.questions[:limit] if limit else qf.questions
        missing.update(q.image for q in questions if not (images / q.image).exists())
        for strategy, params in settings["strategies"].items():
            decoding = {"strategy": strategy, **params}
            keys = order.setdefault(f"{strategy}/{split}", [])
            for q in questions:
                key = f"{strategy}/{split}/{q.question_id}"
                keys.append(key)
                items.append(
                    WorkItem(
                        key=key,
                        strategy=strategy,
                        image=images / q.image,
                        prompt=settings["prompt"].format(question=q.text),
                        decoding=decoding,
                        record={
                            "split": split,
                            "question_id": q.question_id,
                            "image": q.image,
                            "question": q.text,
                            "label": q.label,
                        },
                    )
                )
    if missing:
        raise JobError(
            f"{len(missing)} image(s) not found in {images}, e.g. {sorted(missing)[:3]}; "
            "download COCO val2014 (see README) and pass its folder as --images"
        )
    return items, order


async def run_pope(
    settings: dict[str, Any],
    make_backend: BackendFactory,
    out_dir: Path,
    *,
    allow_unknown_questions: bool = False,
    plot: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a POPE job; write answers.jsonl, results.json and results.png."""
    qfiles = load_questions(settings["questions"], allow_unknown=allow_unknown_questions)
    qfiles = {s: qfiles[s] for s in settings.get("splits") or qfiles if s in qfiles}
    if not qfiles:
        raise JobError(f"no split of {settings.get('splits')} in the question set")
    items, order = build_items(settings, qfiles)
    log_name = "answers.jsonl"
    stats, done, backend = await run_job(
        "pope",
        settings,
        items,
        out_dir,
        log_name,
        make_backend,
        default_concurrency=8,
        progress=progress,
    )
    strategies: dict[str, Any] = {}
    for strategy in settings["strategies"]:
        if strategy in stats.unavailable:  # reported under "unavailable", not scored
            continue
        by_split = {
            split: [(done[k]["answer"], done[k]["label"]) for k in order[f"{strategy}/{split}"]]
            for split in qfiles
        }
        strategies[strategy] = {
            "decoding": stats.decoding_echo.get(strategy),
            **score_splits(by_split, settings["parser"]),
        }
    results = {
        **results_header("pope", settings, backend),
        "parser": {"name": settings["parser"], "source": PARSER_SOURCES[settings["parser"]]},
        "question_files": {s: qf.describe() for s, qf in qfiles.items()},
        "strategies": strategies,
        "unavailable": stats.unavailable,
        "run": run_summary(stats, "answers_file", log_name),
    }
    write_json(out_dir / "results.json", results)
    if plot:
        pope_plot(out_dir / "results.png", strategies)
    print(pope_table(strategies))
    return results
