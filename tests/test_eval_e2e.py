"""End to end: POPE and CHAIR jobs against the real server on the tiny checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from eval.chair.nltk_data import add_nltk_dir, missing_packages
from eval.cli import main

pytestmark = pytest.mark.server

SHARED = Path(
    os.environ.get("LUCID_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
SHAPES = [("red", "ellipse"), ("blue", "rectangle"), ("green", "ellipse")]


def _draw(colour: str, shape: str) -> Image.Image:
    im = Image.new("RGB", (64, 64), "white")
    getattr(ImageDraw.Draw(im), shape)((8, 8, 56, 56), fill=colour)
    return im


def _strategies(served) -> str:  # noqa: ANN001
    """'none' plus one other strategy the server offers, to get a two-row table."""
    names = ["none"]
    try:
        listed = httpx.get(served.base_url + "/decoding/strategies", timeout=10).json()
        data = listed.get("data", listed) if isinstance(listed, dict) else listed
        others = [d.get("strategy", d.get("name")) if isinstance(d, dict) else str(d) for d in data]
        names += [n for n in others if n not in names][:1]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass
    return ",".join(names)


def test_pope_job_end_to_end(served, tmp_path: Path) -> None:  # noqa: ANN001
    imgs = tmp_path / "images"
    imgs.mkdir()
    questions = []
    for n, (colour, shape) in enumerate(SHAPES):
        _draw(colour, shape).save(imgs / f"img{n}.png")
        for obj, label in ((f"{colour} {shape}", "yes"), ("dog", "no")):
            q = {"question_id": len(questions) + 1, "image": f"img{n}.png",
                 "text": f"Is there a {obj} in the image?", "label": label}  # fmt: skip
            questions.append(q)
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in questions))
    out = tmp_path / "pope"
    strategies = _strategies(served)
    argv = ["pope", "--url", served.url, "--questions", f"random={qfile}",
            "--allow-unknown-questions", "--images", str(imgs), "--strategies", strategies,
            "--max-tokens", "4", "--concurrency", "2", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0, served.log_tail()
    for name in ("answers.jsonl", "results.json", "results.png", "run.json"):
        assert (out / name).stat().st_size > 0
    res = json.loads((out / "results.json").read_text())
    n_strat = len(strategies.split(","))
    assert res["run"]["requests_made"] == 6 * n_strat
    assert res["backend"]["mode"] == "url" and res["backend"]["model"]
    for name in strategies.split(","):
        r = res["strategies"][name]
        assert r["splits"]["random"]["n"] == 6
        assert r["decoding"]["strategy"] == name  # the server's echo is recorded
    # Interrupted run: two answers lost plus a torn line; the rerun redoes only those.
    log = out / "answers.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-2]) + lines[-2][:15])
    assert main(argv) == 0
    res2 = json.loads((out / "results.json").read_text())
    assert res2["run"]["requests_made"] == 2
    assert res2["run"]["already_done"] == 6 * n_strat - 2
    assert len(log.read_text().splitlines()) == 6 * n_strat


def test_chair_job_end_to_end(served, tmp_path: Path) -> None:  # noqa: ANN001
    if missing_packages() and (SHARED / "nltk").is_dir():
        add_nltk_dir(str(SHARED / "nltk"))
    imgs = tmp_path / "images"
    imgs.mkdir()
    ids = [101, 102, 103]
    for image_id, (colour, shape) in zip(ids, SHAPES, strict=True):
        _draw(colour, shape).save(imgs / f"COCO_val2014_{image_id:012d}.jpg", "JPEG")
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (tmp_path / "gt.json").write_text(json.dumps({str(i): ["person"] for i in ids}))
    out = tmp_path / "chair"
    argv = ["chair", "--url", served.url, "--image-set", str(tmp_path / "ids.txt"),
            "--images", str(imgs), "--gt-file", str(tmp_path / "gt.json"),
            "--strategies", "none", "--max-tokens", "12", "--truncate-incomplete",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0, served.log_tail()
    for name in ("captions.jsonl", "results.json", "results.png", "run.json"):
        assert (out / name).stat().st_size > 0
    res = json.loads((out / "results.json").read_text())
    m = res["strategies"]["none"]
    assert m["captions"] == 3 and res["truncate_incomplete"] is True
    assert res["run"]["requests_made"] == 3
    log = out / "captions.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:1]))
    assert main(argv) == 0
    res2 = json.loads((out / "results.json").read_text())
    assert res2["run"]["requests_made"] == 2 and res2["run"]["already_done"] == 1
    # Re-scoring the job's own captions file gives the same numbers.
    assert main(["chair", "--captions", str(log), "--gt-file", str(tmp_path / "gt.json"),
                 "--truncate-incomplete", "--out", str(tmp_path / "rescored")]) == 0  # fmt: skip
    again = json.loads((tmp_path / "rescored" / "results.json").read_text())
    job_metrics = {k: v for k, v in res2["strategies"]["none"].items() if k != "decoding"}
    assert again["strategies"]["none"] == job_metrics


def test_pope_job_in_process(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """``--inprocess MODEL``: the same served path with the engine inside this process."""
    imgs = tmp_path / "images"
    imgs.mkdir()
    _draw("red", "ellipse").save(imgs / "img0.png")
    qs = [
        {"question_id": i + 1, "image": "img0.png", "text": t, "label": lab}
        for i, (t, lab) in enumerate(
            [("Is there a red circle in the image?", "yes"), ("Is there a dog in the image?", "no")]
        )
    ]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in qs))
    out = tmp_path / "pope"
    argv = [
        "pope",
        "--inprocess",
        str(tiny_llava_dir),
        "--questions",
        f"random={qfile}",
        "--allow-unknown-questions",
        "--images",
        str(imgs),
        "--strategies",
        "none",
        "--max-tokens",
        "4",
        "--out",
        str(out),
        "--no-progress",
        "--no-plot",
    ]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["backend"]["mode"] == "inprocess"
    assert res["strategies"]["none"]["splits"]["random"]["n"] == 2
    assert res["strategies"]["none"]["decoding"] == {"strategy": "none"}


def test_eval_demo_on_the_served_model(served, tmp_path: Path) -> None:  # noqa: ANN001
    """``make eval-demo``'s code path on three lab scenes and two strategies."""
    from eval.demo import main as demo

    argv = ["--url", served.url, "--scenes", "3", "--strategies", "none,vcd",
            "--bootstrap", "50", "--out", str(tmp_path)]  # fmt: skip
    assert demo(argv) == 0, served.log_tail()
    res = json.loads((tmp_path / "demo.json").read_text())
    assert set(res["pope"]) == set(res["chair"]) == set(res["chair_short"]) == {"none", "vcd"}
    for name in ("none", "vcd"):
        for split in ("random", "popular", "adversarial"):
            fy = res["pope"][name][split]["false_yes"]
            assert fy["low"] <= fy["value"] <= fy["high"]
        for chair in ("chair", "chair_short"):
            assert 0 <= res[chair][name]["chair_s"]["value"] <= 1
    assert res["pope"]["none"]["adversarial"]["false_yes"]["delta"]["value"] == 0
    assert res["cost"]["none"]["latency_ratio"] == 1.0
    assert res["cost"]["vcd"]["extra_tokens_per_request"] > 0
    assert (tmp_path / "demo.png").stat().st_size > 0
