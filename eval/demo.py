"""``make eval-demo``: every strategy on the embedded tiny checkpoint, in the synthetic
world, through the served path: POPE (three splits) and CHAIR, with bootstrap intervals
over scenes and each strategy's cost.

The jobs are the ordinary POPE and CHAIR jobs with the lab presets
(``eval/configs/pope-lab.yaml``, ``chair-lab.yaml``); this module starts the server
(unless ``--url``), runs them, and summarises their answer logs. Strategies run at the
server's defaults (the papers' values). Writes ``demo.json``, ``demo.png`` and the
jobs' own folders under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from decoding.testing.parity import metric
from eval.bootstrap import Interval, interval, resamples
from eval.jobs.report import _table, write_json

STRATEGIES = ("none", "vcd", "avc", "damro", "opera", "var")
#: CHAIR runs twice: with the preset's detailed-description prompt and with this one.
SHORT_PROMPT = "Describe the image."
#: Summary key and job folder of each CHAIR run.
CHAIR_RUNS = (("chair", "chair"), ("chair_short", "chair-short"))
SPLITS = ("random", "popular", "adversarial")


def _ensure_nltk() -> None:
    """CHAIR's parser needs NLTK data; use a local copy (``LUCID_SHARED_DATA/nltk`` or
    ``../shared/data/nltk``) when the default locations lack it."""
    import os

    from eval.chair.nltk_data import add_nltk_dir, missing_packages

    shared = Path(
        os.environ.get("LUCID_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    if missing_packages() and (shared / "nltk").is_dir():
        add_nltk_dir(str(shared / "nltk"))


def _metrics(url: str) -> str:
    import httpx

    return httpx.get(url.rstrip("/").removesuffix("/v1") + "/metrics", timeout=30).text


# --- per-scene units and statistics ---------------------------------------------------------


def pope_units(records: list[dict], strategy: str, split: str) -> dict[str, list[tuple]]:
    """Per image: (prediction, label) of each question."""
    from eval.pope.parsers import official_prediction

    out: dict[str, list[tuple]] = {}
    for r in records:
        if r["strategy"] == strategy and r["split"] == split:
            out.setdefault(r["image"], []).append((official_prediction(r["answer"]), r["label"]))
    return out


def false_yes(units: list[list[tuple]]) -> float:
    """Share of absent-object questions answered yes: POPE's hallucination rate."""
    neg = [p for u in units for p, gold in u if gold == "no"]
    return sum(p == "yes" for p in neg) / max(1, len(neg))


def accuracy(units: list[list[tuple]]) -> float:
    cells = [p == gold for u in units for p, gold in u]
    return sum(cells) / max(1, len(cells))


def f1(units: list[list[tuple]]) -> float:
    tp = sum(p == "yes" and g == "yes" for u in units for p, g in u)
    fp = sum(p == "yes" and g == "no" for u in units for p, g in u)
    fn = sum(p != "yes" and g == "yes" for u in units for p, g in u)
    return 2 * tp / max(1, 2 * tp + fp + fn)


def chair_s(units: list[dict]) -> float:
    return sum(bool(u["hallucinated"]) for u in units) / max(1, len(units))


def chair_i(units: list[dict]) -> float:
    return sum(len(u["hallucinated"]) for u in units) / max(
        1, sum(len(u["mentions"]) for u in units)
    )


def recall(units: list[dict]) -> float:
    hits = sum(len({n for _, n in u["mentions"]} & set(u["ground_truth"])) for u in units)
    return hits / max(1, sum(len(u["ground_truth"]) for u in units))


def _with_delta(units: list, base: list, stat, draws) -> dict[str, Any]:  # noqa: ANN001
    own = interval(units, stat, draws)
    pairs = list(zip(units, base, strict=True))
    delta = interval(pairs, lambda ps: stat([a for a, _ in ps]) - stat([b for _, b in ps]), draws)
    return {**own.as_dict(), "delta": delta.as_dict()}


def summarise_pope(answers: Path, strategies: list[str], rounds: int) -> dict[str, Any]:
    from eval.io import iter_jsonl_tolerant

    records = [r for r in iter_jsonl_tolerant(answers) if not r.get("error")]
    out: dict[str, Any] = {}
    for split in SPLITS:
        by = {s: pope_units(records, s, split) for s in strategies}
        images = sorted(by[strategies[0]])
        draws = resamples(len(images), rounds, seed=1)
        base = [by[strategies[0]][i] for i in images]
        for s in strategies:
            units = [by[s][i] for i in images]
            out.setdefault(s, {})[split] = {
                name: _with_delta(units, base, stat, draws)
                for name, stat in (("false_yes", false_yes), ("accuracy", accuracy), ("f1", f1))
            }
    return out


def summarise_chair(details: dict[str, list[dict]], rounds: int) -> dict[str, Any]:
    strategies = list(details)
    draws = resamples(len(details[strategies[0]]), rounds, seed=2)
    base = details[strategies[0]]
    return {
        s: {
            name: _with_delta(details[s], base, stat, draws)
            for name, stat in (("chair_s", chair_s), ("chair_i", chair_i), ("recall", recall))
        }
        for s in strategies
    }


def chair_details(captions: Path, strategies: list[str], gt_spec: dict) -> dict[str, list]:
    from eval.chair.metrics import score_captions
    from eval.chair.parser import CaptionParser
    from eval.io import iter_jsonl_tolerant
    from eval.jobs.chair_job import resolve_ground_truth

    records = [r for r in iter_jsonl_tolerant(captions) if not r.get("error")]
    ids = sorted({r["image_id"] for r in records})
    parser = CaptionParser()
    gt, _ = resolve_ground_truth(gt_spec, ids, parser, None)
    out = {}
    for s in strategies:
        caps = sorted((r["image_id"], r["answer"]) for r in records if r["strategy"] == s)
        out[s] = score_captions(caps, gt, parser, keep_details=True)["details"]
    return out


# --- the run --------------------------------------------------------------------------------


async def _jobs(url: str, args: argparse.Namespace, strategies: list[str]) -> dict[str, Any]:
    from eval.jobs.backend import url_backend
    from eval.jobs.chair_job import run_chair
    from eval.jobs.pope_job import run_pope
    from eval.jobs.settings import load_settings, select_strategies

    spec = f"lab:{args.scenes}"
    pope = load_settings("pope", "pope-lab")
    pope.update(questions=spec, strategies=select_strategies(pope, strategies))
    chair = load_settings("chair", "chair-lab")
    chair.update(image_set=spec, strategies=select_strategies(chair, strategies))
    # The same CHAIR job on short captions: the world's other caption form.
    short = {**chair, "prompt": SHORT_PROMPT, "sampling": {**chair["sampling"], "max_tokens": 32}}
    if args.concurrency:
        pope["concurrency"] = chair["concurrency"] = short["concurrency"] = args.concurrency
    cost: dict[str, dict[str, float]] = {}
    for name in ("pope", *(folder for _, folder in CHAIR_RUNS)):  # the jobs resume
        shutil.rmtree(args.out / name, ignore_errors=True)  # the demo starts afresh
    before = _metrics(url)
    await run_pope(pope, lambda: url_backend(url), args.out / "pope", progress=args.progress)
    for (_, name), settings in zip(CHAIR_RUNS, (chair, short), strict=True):
        await run_chair(settings, lambda: url_backend(url), args.out / name, progress=args.progress)
    after = _metrics(url)
    for s in strategies:
        extra = metric(after, "lucid:extra_forward_tokens_total", strategy=s)
        extra -= metric(before, "lucid:extra_forward_tokens_total", strategy=s)
        cost[s] = {"extra_forward_tokens": extra}
    return {"pope": pope, "chair": chair, "cost": cost}


def _latency(path: Path, key: str = "strategy") -> dict[str, float]:
    from eval.io import iter_jsonl_tolerant

    sums: dict[str, list[float]] = {}
    for r in iter_jsonl_tolerant(path):
        if "latency_s" in r:
            sums.setdefault(r[key], []).append(r["latency_s"])
    return {s: sum(v) / len(v) for s, v in sums.items()}


def table(summary: dict[str, Any]) -> str:
    """One row per strategy: POPE false-yes rate per split, CHAIR_s, CHAIR_i, recall, cost."""
    header = ["strategy", *(f"POPE {s[:3]} FY%" for s in SPLITS), "POPE adv Acc%",
              "CHAIR_s%", "CHAIR_i%", "Recall%", "short CHAIR_s%", "short Recall%",
              "x latency", "extra tok/req"]  # fmt: skip
    rows = []
    for s, pope in summary["pope"].items():
        chair, brief = summary["chair"][s], summary["chair_short"][s]
        cost = summary["cost"][s]

        def cell(d: dict[str, Any]) -> str:
            return Interval(d["value"], d["low"], d["high"]).pct()

        fy = [cell(pope[sp]["false_yes"]) for sp in SPLITS]
        rows.append(
            [s, *fy, cell(pope["adversarial"]["accuracy"]), cell(chair["chair_s"]),
             cell(chair["chair_i"]), cell(chair["recall"]), cell(brief["chair_s"]),
             cell(brief["recall"]), f"{cost['latency_ratio']:.2f}",
             f"{cost['extra_tokens_per_request']:.0f}"]
        )  # fmt: skip
    return _table(header, rows, left=1)


def plot(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["pope"])
    panels = [(f"POPE {sp}: false yes", lambda s, sp=sp: summary["pope"][s][sp]["false_yes"])
              for sp in SPLITS]  # fmt: skip
    panels += [("CHAIR_s", lambda s: summary["chair"][s]["chair_s"]),
               ("CHAIR_i", lambda s: summary["chair"][s]["chair_i"]),
               ("CHAIR_s short", lambda s: summary["chair_short"][s]["chair_s"])]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), sharey=True)
    for ax, (title, get) in zip(axes, panels, strict=True):
        vals = [get(s) for s in names]
        mid = [100 * v["value"] for v in vals]
        err = [[100 * (v["value"] - v["low"]) for v in vals],
               [100 * (v["high"] - v["value"]) for v in vals]]  # fmt: skip
        ax.bar(range(len(names)), mid, yerr=err, capsize=3, color="tab:red", alpha=0.7)
        ax.set_xticks(range(len(names)), names, rotation=45)
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("% (95% bootstrap CI over scenes; lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running server on the tiny checkpoint (default: start one)")
    ap.add_argument("--model", help="checkpoint to serve (default: the embedded tiny one)")
    ap.add_argument("--scenes", type=int, default=40, help="held-out scenes (default 40)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--concurrency", type=int)
    ap.add_argument("--out", type=Path, default=Path("build/eval-demo"))
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if strategies[0] != "none":
        strategies = ["none", *[s for s in strategies if s != "none"]]
    _ensure_nltk()
    start = time.monotonic()
    served = None
    url = args.url
    if url is None:
        from decoding.testing.tiny_llava import ensure_tiny_llava
        from server.process import start_server

        args.out.mkdir(parents=True, exist_ok=True)
        model = Path(args.model) if args.model else ensure_tiny_llava()
        served = start_server(model, args.out / "server.log")
        url = served.url
    try:
        ran = asyncio.run(_jobs(url, args, strategies))
    finally:
        if served is not None:
            from server.process import stop_server

            stop_server(served)
    pope_lat = _latency(args.out / "pope" / "answers.jsonl")
    chair_lat = _latency(args.out / "chair" / "captions.jsonl")
    n_req = {s: 0 for s in strategies}
    from eval.io import iter_jsonl_tolerant

    logs = ["pope/answers.jsonl", *(f"{folder}/captions.jsonl" for _, folder in CHAIR_RUNS)]
    for name in logs:
        for r in iter_jsonl_tolerant(args.out / name):
            n_req[r["strategy"]] += 1
    cost = {
        s: {
            "latency_ratio": (pope_lat[s] + chair_lat[s]) / (pope_lat["none"] + chair_lat["none"]),
            "pope_latency_s": pope_lat[s],
            "chair_latency_s": chair_lat[s],
            "extra_tokens_per_request": ran["cost"][s]["extra_forward_tokens"] / max(1, n_req[s]),
        }
        for s in strategies
    }
    summary = {
        "scenes": args.scenes,
        "bootstrap": args.bootstrap,
        "pope": summarise_pope(args.out / "pope" / "answers.jsonl", strategies, args.bootstrap),
        **{
            key: summarise_chair(
                chair_details(
                    args.out / name / "captions.jsonl", strategies, ran["chair"]["ground_truth"]
                ),
                args.bootstrap,
            )
            for key, name in CHAIR_RUNS
        },
        "cost": cost,
        "seconds": round(time.monotonic() - start, 1),
    }
    write_json(args.out / "demo.json", summary)
    plot(args.out / "demo.png", summary)
    print(f"\nHallucination on {args.scenes} held-out scenes of the synthetic world "
          "(95% bootstrap CI over scenes; FY = yes to an absent object):")  # fmt: skip
    print(table(summary))
    print(f"\n{args.out / 'demo.json'}, {args.out / 'demo.png'} ({summary['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
