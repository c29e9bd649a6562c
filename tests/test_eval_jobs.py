"""Benchmark jobs with a scripted backend: outputs, resume, settings guard, CLI re-scoring."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from eval.chair.nltk_data import add_nltk_dir, missing_packages
from eval.cli import main
from eval.io import DATA_DIR
from eval.jobs.backend import Backend, Generation
from eval.jobs.pope_job import run_pope
from eval.jobs.runner import JobError
from eval.jobs.settings import load_settings

SHARED = Path(
    os.environ.get("LUCID_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


class ScriptedBackend(Backend):
    """Answers "Yes" for questions about a red object, "No" otherwise."""

    def __init__(self, fail: set[str] | None = None, undefined: dict | None = None) -> None:
        super().__init__(client=None, model="scripted", mode="url", location="memory")
        self.calls: list[str] = []
        self.fail = fail or set()
        self.undefined = undefined or {}

    async def unavailable(self) -> dict[str, str]:
        return dict(self.undefined)

    async def generate(self, image: Path, prompt: str, decoding: dict[str, Any],
                       sampling: dict[str, Any]) -> Generation:  # fmt: skip
        self.calls.append(prompt)
        if any(word in prompt for word in self.fail):
            raise ConnectionError("server went away")
        text = "Yes" if "red" in prompt else "No, there is not."
        return Generation(text, {**decoding, "echo": True}, "stop")


def make_factory(backend: ScriptedBackend):  # noqa: ANN201
    @asynccontextmanager
    async def factory():  # noqa: ANN202
        yield backend

    return factory


def write_pope_fixture(root: Path) -> Path:
    """Two generated images and a 6-question POPE-style file (4 answered right)."""
    imgs = root / "images"
    imgs.mkdir()
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        im = Image.new("RGB", (32, 32), "white")
        ImageDraw.Draw(im).ellipse((4, 4, 28, 28), fill=colour)
        im.save(imgs / name)
    qs = [
        ("a.png", "Is there a red circle in the image?", "yes"),
        ("a.png", "Is there a dog in the image?", "no"),
        ("a.png", "Is there a circle in the image?", "yes"),  # answered No: FN
        ("b.png", "Is there a blue circle in the image?", "yes"),  # answered No: FN
        ("b.png", "Is there a red square in the image?", "no"),  # answered Yes: FP
        ("b.png", "Is there a cat in the image?", "no"),
    ]
    path = root / "q.jsonl"
    path.write_text("".join(
        json.dumps({"question_id": i, "image": im, "text": t, "label": lab}) + "\n"
        for i, (im, t, lab) in enumerate(qs, 1)
    ))  # fmt: skip
    return path


def pope_settings(root: Path) -> dict[str, Any]:
    s = load_settings("pope")
    s.update(questions={"random": str(write_pope_fixture(root))}, splits=["random"],
             images=str(root / "images"), concurrency=2,
             strategies={"none": {}, "vcd": {"alpha": 1.0}})  # fmt: skip
    return s


def test_job_skips_strategies_the_served_model_does_not_define(tmp_path: Path) -> None:
    s = pope_settings(tmp_path)
    backend = ScriptedBackend(undefined={"vcd": "no such thing on this model"})
    res = asyncio.run(run_pope(s, make_factory(backend), tmp_path / "out",
                               allow_unknown_questions=True, progress=False))  # fmt: skip
    assert len(backend.calls) == 6  # only none's questions were asked
    assert list(res["strategies"]) == ["none"]
    assert res["unavailable"] == {"vcd": "no such thing on this model"}


def test_pope_job_outputs_and_resume(tmp_path: Path) -> None:
    s = pope_settings(tmp_path)
    out = tmp_path / "out"
    backend = ScriptedBackend()
    res = asyncio.run(run_pope(s, make_factory(backend), out, allow_unknown_questions=True,
                               progress=False))  # fmt: skip
    assert {p.name for p in out.iterdir()} >= {"answers.jsonl", "results.json", "results.png",
                                               "run.json"}  # fmt: skip
    assert len(backend.calls) == 12  # 6 questions x 2 strategies
    m = res["strategies"]["vcd"]["splits"]["random"]
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 2, 2)
    assert m["accuracy"] == pytest.approx(0.5) and m["f1"] == pytest.approx(0.4)
    assert res["strategies"]["vcd"]["decoding"] == {"strategy": "vcd", "alpha": 1.0, "echo": True}
    assert res["prompt_template"].endswith("single word or phrase.")
    assert (
        backend.calls[0] == "Is there a red circle in the image?\n"
        "Answer the question using a single word or phrase."
    )
    assert res["question_files"]["random"]["version"] == "unrecognised"
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["strategies"] == s["strategies"]
    assert load_settings("pope", out / "results.json") == s  # a run replays from its results

    # Interrupt: keep 5 answers and a torn sixth line; the rerun asks only the other 7.
    log = out / "answers.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:5]) + lines[5][:20])
    again = ScriptedBackend()
    res2 = asyncio.run(run_pope(s, make_factory(again), out, allow_unknown_questions=True,
                                progress=False))  # fmt: skip
    assert len(again.calls) == 7 and res2["run"]["already_done"] == 5
    assert res2["strategies"] == res["strategies"]
    assert len(log.read_text().splitlines()) == 12
    # Nothing left to do on a third run.
    third = ScriptedBackend()
    asyncio.run(run_pope(s, make_factory(third), out, allow_unknown_questions=True,
                         progress=False))  # fmt: skip
    assert third.calls == []


def test_failed_requests_are_retried_and_settings_guarded(tmp_path: Path) -> None:
    s = pope_settings(tmp_path)
    out = tmp_path / "out"
    flaky = ScriptedBackend(fail={"cat"})
    with pytest.raises(JobError, match="2 request"):
        asyncio.run(run_pope(s, make_factory(flaky), out, allow_unknown_questions=True,
                             progress=False))  # fmt: skip
    fixed = ScriptedBackend()
    asyncio.run(run_pope(s, make_factory(fixed), out, allow_unknown_questions=True,
                         progress=False))  # fmt: skip
    assert len(fixed.calls) == 2
    s2 = {**s, "prompt": "{question}"}
    with pytest.raises(JobError, match="different prompt"):
        asyncio.run(run_pope(s2, make_factory(fixed), out, allow_unknown_questions=True,
                             progress=False))  # fmt: skip
    s3 = {**s, "strategies": {"vcd": {"alpha": 2.0}}}
    with pytest.raises(JobError, match="strategies.vcd"):
        asyncio.run(run_pope(s3, make_factory(fixed), out, allow_unknown_questions=True,
                             progress=False))  # fmt: skip


def test_cli_rescore_pope_and_chair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ans = DATA_DIR / "reference" / "pope-answers" / "llava-v1.5-13b_answers.jsonl.gz"
    assert main(["pope", "--answers", str(ans), "--out", str(tmp_path / "p")]) == 0
    res = json.loads((tmp_path / "p" / "results.json").read_text())
    assert round(res["strategies"]["llava-v1.5-13b"]["mean"]["f1"] * 100, 1) == 85.9
    assert (tmp_path / "p" / "results.png").stat().st_size > 1000
    assert "adversarial" in capsys.readouterr().out
    # A job's own answers file re-scores to the same numbers, under another parser too.
    s = pope_settings(tmp_path)
    asyncio.run(run_pope(s, make_factory(ScriptedBackend()), tmp_path / "o",
                         allow_unknown_questions=True, progress=False))  # fmt: skip
    assert main(["pope", "--answers", str(tmp_path / "o" / "answers.jsonl"),
                 "--parser", "lmms", "--out", str(tmp_path / "r")]) == 0  # fmt: skip
    r = json.loads((tmp_path / "r" / "results.json").read_text())["strategies"]["none"]
    assert r["splits"]["random"]["other"] == 4  # "No, there is not." is not an exact "no"
    assert r["splits"]["random"]["tp"] == 1 and r["splits"]["random"]["fp"] == 1

    # CHAIR: two of OPERA's released captions, in OPERA's own log format.
    if missing_packages() and (SHARED / "nltk").is_dir():
        add_nltk_dir(str(SHARED / "nltk"))
    log = DATA_DIR / "reference" / "chair" / "opera_logs" / "llava-1.5" / "greedy.jsonl.gz"
    caps = tmp_path / "caps.jsonl"
    caps.write_text("".join(gzip.decompress(log.read_bytes()).decode().splitlines(True)[:2]))
    assert main(["chair", "--captions", str(caps), "--out", str(tmp_path / "c")]) == 0
    c = json.loads((tmp_path / "c" / "results.json").read_text())
    m = c["strategies"]["caps.jsonl"]
    assert m["captions"] == 2 and c["ground_truth"]["variant"] == "singularize_maxlinn"
    assert 0 <= m["chair_i"] <= m["chair_s"] <= 1


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pope", "--images", str(tmp_path)]) == 2
    assert "give --url, --inprocess or --answers" in capsys.readouterr().err
    bad = tmp_path / "q.json"
    bad.write_text(
        '{"question_id": 1, "image": "x.jpg", "text": "Is there a cat?", "label": "no"}\n'
    )
    rc = main(["pope", "--url", "http://127.0.0.1:9", "--questions", f"random={bad}",
               "--images", str(tmp_path)])  # fmt: skip
    assert rc == 2 and "not a known POPE" in capsys.readouterr().err
