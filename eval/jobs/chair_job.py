"""The CHAIR job: caption every image of an image set under each strategy, then score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval import lab
from eval.chair.gt import (
    GroundTruth,
    gt_file_variants,
    gt_from_coco,
    load_gt_file,
    load_image_set,
    save_gt_file,
)
from eval.chair.metrics import score_captions
from eval.chair.parser import CaptionParser, drop_incomplete_sentence
from eval.io import DATA_DIR, read_bytes, sha256_hex
from eval.jobs.common import BackendFactory, results_header, run_job, run_summary
from eval.jobs.report import chair_plot, chair_table, write_json
from eval.jobs.runner import JobError, WorkItem

#: Shipped ground truth of OPERA's released image sets, both parser variants.
REFERENCE_GT = DATA_DIR / "reference" / "chair" / "opera_log_images_gt.json.gz"


def resolve_ground_truth(
    spec: dict[str, Any], image_ids: list[int], parser: CaptionParser, cache_dir: Path | None
) -> tuple[GroundTruth, dict[str, Any]]:
    """Ground truth from COCO annotations, the shipped reference sets, or a GT file."""
    if spec.get("coco_annotations"):
        cache = cache_dir / "ground_truth.json" if cache_dir else None
        if cache is not None and cache.exists():
            gt = load_gt_file(cache)
            if all(i in gt for i in image_ids):
                return gt, {"source": str(cache), "variant": parser.variant, "built_from": "coco"}
        gt = gt_from_coco(spec["coco_annotations"], image_ids, parser.parse)
        if cache is not None:
            save_gt_file(gt, cache)
        info = {"source": str(spec["coco_annotations"]), "variant": parser.variant}
        return gt, {**info, "built_from": "coco"}
    file = spec.get("file") or "reference"
    if lab.is_lab(file):  # the synthetic world's scenes, as many as the image set holds
        path = lab.ground_truth_file(f"lab:{max(image_ids, default=0) + 1}")
    else:
        path = REFERENCE_GT if file == "reference" else Path(file)
    variant = spec.get("variant") or "lemmatize_opera"
    gt = load_gt_file(path, variant=variant)
    missing = [i for i in image_ids if i not in gt]
    if missing:
        hint = (
            "the shipped reference covers OPERA's image sets only; " if file == "reference" else ""
        )
        raise JobError(
            f"ground truth {path} lacks {len(missing)} image(s), e.g. {missing[:3]}; {hint}"
            "pass --coco-annotations DIR or a --gt-file covering the image set"
        )
    if not gt_file_variants(path):
        variant = "as built (single-variant file)"
    info = {"source": str(file), "variant": variant, "sha256": sha256_hex(read_bytes(path))}
    return gt, info


def score_strategy_captions(
    captions: list[tuple[int, str]],
    gt: GroundTruth,
    parser: CaptionParser,
    *,
    truncate: bool,
) -> dict[str, Any]:
    if truncate:
        captions = [(i, drop_incomplete_sentence(c)) for i, c in captions]
    return score_captions(captions, gt, parser)


async def run_chair(
    settings: dict[str, Any],
    make_backend: BackendFactory,
    out_dir: Path,
    *,
    download_nltk: bool = False,
    plot: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a CHAIR job; write captions.jsonl, results.json and results.png."""
    parser = CaptionParser(download_nltk=download_nltk)  # fail before any request
    image_ids = load_image_set(str(settings["image_set"]))
    if settings.get("limit"):
        image_ids = image_ids[: int(settings["limit"])]
    gt, gt_info = resolve_ground_truth(settings["ground_truth"], image_ids, parser, out_dir)
    if not settings.get("images"):
        raise JobError("set the image folder (--images, COCO val2014)")
    images = Path(lab.resolve_images(settings["images"]))
    paths = {i: images / settings["image_template"].format(image_id=i) for i in image_ids}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise JobError(
            f"{len(missing)} image(s) not found, e.g. {missing[:3]}; download COCO val2014 "
            "(see README) and pass its folder as --images"
        )
    items = [
        WorkItem(
            key=f"{strategy}/{i}",
            strategy=strategy,
            image=paths[i],
            prompt=settings["prompt"],
            decoding={"strategy": strategy, **params},
            record={"image_id": i},
        )
        for strategy, params in settings["strategies"].items()
        for i in image_ids
    ]
    log_name = "captions.jsonl"
    stats, done, backend = await run_job(
        "chair",
        settings,
        items,
        out_dir,
        log_name,
        make_backend,
        default_concurrency=4,
        progress=progress,
    )
    truncate = bool(settings.get("truncate_incomplete"))
    strategies: dict[str, Any] = {}
    for strategy in settings["strategies"]:
        if strategy in stats.unavailable:  # reported under "unavailable", not scored
            continue
        caps = [(i, done[f"{strategy}/{i}"]["answer"]) for i in image_ids]
        strategies[strategy] = {
            "decoding": stats.decoding_echo.get(strategy),
            **score_strategy_captions(caps, gt, parser, truncate=truncate),
        }
    results = {
        **results_header("chair", settings, backend),
        "caption_parser": parser.variant,
        "truncate_incomplete": truncate,
        "image_set": {"name": str(settings["image_set"]), "images": len(image_ids)},
        "ground_truth": gt_info,
        "strategies": strategies,
        "unavailable": stats.unavailable,
        "run": run_summary(stats, "captions_file", log_name),
    }
    write_json(out_dir / "results.json", results)
    if plot:
        chair_plot(out_dir / "results.png", strategies)
    print(chair_table(strategies))
    return results
