"""Command line: ``python -m eval pope ...`` and ``python -m eval chair ...``.

Each benchmark either runs strategies against a model (``--url`` for a running server,
``--inprocess MODEL`` for an engine inside this process) or re-scores an existing file
(``--answers`` / ``--captions``) without a model.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
from pathlib import Path
from typing import Any

from eval.jobs.report import chair_plot, chair_table, pope_plot, pope_table, write_json
from eval.jobs.runner import JobError
from eval.jobs.settings import load_settings, select_strategies

SAMPLING_FLAGS = ("max_tokens", "temperature", "top_p", "seed")


def _common(p: argparse.ArgumentParser, benchmark: str) -> None:
    p.add_argument("--config", help=f"settings YAML, preset name or results.json "
                   f"(default eval/configs/{benchmark}.yaml)")  # fmt: skip
    src = p.add_argument_group("model (one of)")
    src.add_argument("--url", help="running server, e.g. http://127.0.0.1:8000")
    src.add_argument("--inprocess", metavar="MODEL", help="run the server and engine in-process")
    src.add_argument("--engine-arg", action="append", default=[], metavar="ARG",
                     help="engine argument for --inprocess (repeatable), "
                     "e.g. --engine-arg=--dtype=float32")  # fmt: skip
    p.add_argument("--model", help="served model name (default: the first of /v1/models)")
    p.add_argument("--api-key", help="API key (default $OPENAI_API_KEY)")
    p.add_argument("--strategies", help="comma-separated, e.g. none,vcd,avc,damro,opera,var")
    p.add_argument("--decoding-params", type=json.loads, default={}, metavar="JSON",
                   help='per-strategy parameters, e.g. \'{"vcd": {"alpha": 1.0}}\'')  # fmt: skip
    p.add_argument("--images", help="folder with the images (COCO val2014)")
    p.add_argument("--prompt", help="prompt template")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--limit", type=int, help="at most this many questions per split / images")
    p.add_argument("--concurrency", type=int, help="requests in flight")
    p.add_argument("--out", type=Path, help="output folder (default results/<config name>)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="benchmark", required=True)
    pope = sub.add_parser("pope", help="POPE: yes/no object probing")
    _common(pope, "pope")
    pope.add_argument("--answers", type=Path, help="re-score this answers file (no model)")
    pope.add_argument("--split", help="split of a POPE-format answers file")
    pope.add_argument("--parser", choices=["official", "vcd", "lmms", "opera"])
    pope.add_argument("--question-set", help="coco-llava15, coco-current, coco-vcd, aokvqa, gqa")
    pope.add_argument("--questions", action="append", metavar="SPLIT=PATH",
                      help="custom question file for a split (repeatable)")  # fmt: skip
    pope.add_argument("--splits", help="comma-separated subset of the splits")
    pope.add_argument("--allow-unknown-questions", action="store_true",
                      help="accept question files of an unknown hash")  # fmt: skip
    chair = sub.add_parser("chair", help="CHAIR: hallucinated objects in captions")
    _common(chair, "chair")
    chair.add_argument("--captions", type=Path, help="re-score this captions file (no model)")
    chair.add_argument(
        "--image-set", help="opera-llava15, opera-instructblip, pope-coco, or a file"
    )
    chair.add_argument("--image-template", help="file name of an image id")
    chair.add_argument("--gt-file", help="ground truth {image_id: [objects]}, or 'reference'")
    chair.add_argument("--gt-variant", help="variant of a two-variant ground-truth file")
    chair.add_argument("--coco-annotations", help="folder with COCO 2014 annotation JSONs")
    chair.add_argument("--truncate-incomplete", action=argparse.BooleanOptionalAction,
                       default=None, help="drop an unfinished last sentence")  # fmt: skip
    chair.add_argument("--download-nltk", action="store_true",
                       help="download missing NLTK data (needs internet)")  # fmt: skip
    chair.add_argument("--image-id-key", default="image_id")
    chair.add_argument("--caption-key", default="caption")
    return parser


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Settings file plus command-line overrides."""
    s = copy.deepcopy(load_settings(args.benchmark, args.config))
    for key in ("images", "prompt", "limit", "concurrency"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    s["sampling"] = dict(s.get("sampling") or {})
    for key in SAMPLING_FLAGS:
        if getattr(args, key) is not None:
            s["sampling"][key] = getattr(args, key)
    names = args.strategies.split(",") if args.strategies else None
    s["strategies"] = select_strategies(s, [n.strip() for n in names or [] if n.strip()])
    for name, params in args.decoding_params.items():
        s["strategies"].setdefault(name, {}).update(params)
    if args.benchmark == "pope":
        if args.question_set:
            s["questions"] = args.question_set
        if args.questions:
            s["questions"] = dict(q.split("=", 1) for q in args.questions)
            s.setdefault("splits", None)
            s["splits"] = list(s["questions"])
        if args.splits:
            s["splits"] = args.splits.split(",")
        if args.parser:
            s["parser"] = args.parser
    else:
        for key in ("image_set", "image_template"):
            if getattr(args, key) is not None:
                s[key] = getattr(args, key)
        if args.truncate_incomplete is not None:
            s["truncate_incomplete"] = args.truncate_incomplete
        gt = s["ground_truth"] = dict(s.get("ground_truth") or {})
        if args.gt_file:
            gt.update(file=args.gt_file, coco_annotations=None)
        if args.gt_variant:
            gt["variant"] = args.gt_variant
        if args.coco_annotations:
            gt["coco_annotations"] = args.coco_annotations
    return s


def _backend_factory(args: argparse.Namespace) -> Any:
    from eval.jobs.backend import inprocess_backend, url_backend

    if args.url:
        return lambda: url_backend(args.url, model=args.model, api_key=args.api_key)
    return lambda: inprocess_backend(args.inprocess, args.engine_arg, served_model=args.model)


def rescore_pope(args: argparse.Namespace, s: dict[str, Any]) -> dict[str, Any]:
    from eval.pope.data import load_questions
    from eval.pope.parsers import PARSER_SOURCES
    from eval.pope.score import load_answer_file, score_splits

    questions = None
    if args.split:
        questions = load_questions(s["questions"], allow_unknown=args.allow_unknown_questions)
    fmt, groups = load_answer_file(args.answers, questions=questions, split=args.split)
    strategies = {g: score_splits(by_split, s["parser"]) for g, by_split in groups.items()}
    print(f"{args.answers}: {fmt} format, parser {s['parser']}")
    print(pope_table(strategies))
    return {
        "benchmark": "pope",
        "source": {"answers": str(args.answers), "format": fmt},
        "parser": {"name": s["parser"], "source": PARSER_SOURCES[s["parser"]]},
        "strategies": strategies,
    }


def rescore_chair(args: argparse.Namespace, s: dict[str, Any]) -> dict[str, Any]:
    from eval.chair.captions import load_captions
    from eval.chair.gt import load_image_set
    from eval.chair.parser import CaptionParser
    from eval.jobs.chair_job import resolve_ground_truth, score_strategy_captions

    parser = CaptionParser(download_nltk=args.download_nltk)
    groups = load_captions(args.captions, image_id_key=args.image_id_key,
                           caption_key=args.caption_key)  # fmt: skip
    ids = sorted({i for caps in groups.values() for i, _ in caps})
    if args.image_set:  # only when asked: check that the file covers exactly that set
        want = set(load_image_set(args.image_set))
        if want != set(ids):
            print(f"warning: captions cover {len(ids)} images, image set has {len(want)}",
                  file=sys.stderr)  # fmt: skip
    gt, gt_info = resolve_ground_truth(s["ground_truth"], ids, parser, args.out)
    truncate = bool(s.get("truncate_incomplete"))
    strategies = {
        g: score_strategy_captions(caps, gt, parser, truncate=truncate)
        for g, caps in groups.items()
    }
    print(f"{args.captions}: ground truth {gt_info['source']} ({gt_info['variant']})")
    print(chair_table(strategies))
    return {
        "benchmark": "chair",
        "source": {"captions": str(args.captions)},
        "caption_parser": parser.variant,
        "truncate_incomplete": truncate,
        "ground_truth": gt_info,
        "strategies": strategies,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    s = resolve_settings(args)
    rescore_file = args.answers if args.benchmark == "pope" else args.captions
    if rescore_file is not None:
        results = (rescore_pope if args.benchmark == "pope" else rescore_chair)(args, s)
        if args.out:
            write_json(args.out / "results.json", results)
            if not args.no_plot:
                plot = pope_plot if args.benchmark == "pope" else chair_plot
                plot(args.out / "results.png", results["strategies"])
        return results
    if not (args.url or args.inprocess):
        flag = "--answers" if args.benchmark == "pope" else "--captions"
        raise JobError(f"give --url, --inprocess or {flag}")
    out = args.out or Path("results") / Path(args.config or args.benchmark).stem
    make_backend = _backend_factory(args)
    if args.benchmark == "pope":
        from eval.jobs.pope_job import run_pope

        job = run_pope(s, make_backend, out, allow_unknown_questions=args.allow_unknown_questions,
                       plot=not args.no_plot, progress=not args.no_progress)  # fmt: skip
    else:
        from eval.jobs.chair_job import run_chair

        job = run_chair(s, make_backend, out, download_nltk=args.download_nltk,
                        plot=not args.no_plot, progress=not args.no_progress)  # fmt: skip
    results = asyncio.run(job)
    print(f"results: {out / 'results.json'}")
    return results


def main(argv: list[str] | None = None) -> int:
    from eval.chair.gt import GroundTruthError
    from eval.chair.metrics import MissingGroundTruth
    from eval.chair.nltk_data import NltkDataMissing
    from eval.pope.data import QuestionFileError
    from eval.pope.score import AnswerFileError

    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (JobError, QuestionFileError, AnswerFileError, NltkDataMissing, GroundTruthError,
            MissingGroundTruth) as exc:  # fmt: skip
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    return 0
