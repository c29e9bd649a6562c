"""A new strategy written as one declaration module (plus its core) is served end to end,
listed with its parameter descriptions, accepted by the chart, benched and evaluated,
with no list edited anywhere; and a hook lost at run time fails requests loudly.

The extension (``tests/extensions/gray_strategy.py``) is a contrastive variant with its
own contrast input (a grayscale copy of the image); the server loads it through
``LUCID_STRATEGY_MODULES``. A worker extension (``lose_var_hook.py``) removes VAR's
attention hook inside the engine after start-up.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import httpx
import openai
import pytest
import torch

from decoding.strategies.registry import unregister_strategy
from decoding.testing import parity
from server.process import start_server, stop_server
from tests.helm_scripts import load as load_script

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
EXTENSIONS = Path(__file__).resolve().parent / "extensions"
ENV = {
    "PYTHONPATH": os.pathsep.join([str(EXTENSIONS), os.environ.get("PYTHONPATH", "")]),
    "LUCID_STRATEGY_MODULES": "gray_strategy",
    "LUCID_WORKER_MODULES": "lose_var_hook",
}
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def gray():  # noqa: ANN201
    """The extension declared in this process too (for the reference engine)."""
    sys.path.insert(0, str(EXTENSIONS))
    module = importlib.import_module("gray_strategy")
    yield module
    unregister_strategy("gcd")
    sys.path.remove(str(EXTENSIONS))


@pytest.fixture(scope="module")
def extended(tiny_llava_dir, tmp_path_factory):  # noqa: ANN001, ANN201
    log = tmp_path_factory.mktemp("extended") / "server.log"
    srv = start_server(tiny_llava_dir, log, ["--strategies", "none,vcd,var,gcd"], env=ENV)
    yield srv
    stop_server(srv)


def test_grayscale_core(gray) -> None:  # noqa: ANN001
    px = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 9.0]]])  # (C=3, H=1, W=2)
    out = gray.grayscale(px)
    assert out.shape == px.shape
    assert torch.equal(out, torch.tensor([[[3.0, 5.0]]] * 3))
    assert px[2, 0, 1] == 9.0  # input untouched


def test_listed_with_parameter_descriptions(extended) -> None:  # noqa: ANN001
    data = httpx.get(extended.url + "/v1/decoding/strategies", timeout=10).json()["data"]
    gcd = next(d for d in data if d["strategy"] == "gcd")
    props = gcd["parameters"]["properties"]
    assert props["alpha"]["description"].startswith("Contrast strength")
    assert props["alpha"]["paper_default"] == 1.0 and props["alpha"]["source"]
    assert gcd["family"] == "contrastive" and gcd["engine"]["hooks"] == ["cd.logits"]
    version = httpx.get(extended.url + "/version", timeout=10).json()
    assert version["strategies"] == ["none", "vcd", "var", "gcd"]


def test_served_tokens_equal_the_reference(extended, gray, tiny_llava_dir) -> None:  # noqa: ANN001
    client = extended.client()
    verdicts = []
    changed = 0
    for case in parity.cases(8):
        body = parity.chat_request(extended.model, case, {"strategy": "gcd"}, MAX_TOKENS)
        r = client.chat.completions.create(**body)
        assert r.model_extra["decoding"] == {"strategy": "gcd", "alpha": 1.0, "beta": 0.1}
        served = parity.token_ids(r.choices[0])
        ref = parity.reference(tiny_llava_dir, case, {"strategy": "gcd"}, MAX_TOKENS)
        plain = parity.reference(tiny_llava_dir, case, None, MAX_TOKENS)
        changed += ref.token_ids != plain.token_ids
        verdicts.append(parity.compare(case, served, ref))
    bad, _ = parity.judge(verdicts)
    assert not bad, parity.describe(bad)
    assert changed > 0, "the contrast never changed an answer: the test would not see it"


def test_chart_accepts_it_once_regenerated(gray, tmp_path: Path) -> None:  # noqa: ANN001
    gen = load_script("gen_strategies")
    values = {"strategies": {"enabled": ["none", "gcd"]}}
    with helm.Chart.load(gen.CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)  # the committed chart knows only built-ins
    copy = tmp_path / "lucid"
    shutil.copytree(gen.CHART, copy)
    for path, text in gen.render(copy).items():
        path.write_text(text)
    with helm.Chart.load(copy) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name="demo", namespace="ml", is_install=True)
    deployment = rendered["lucid/templates/deployment.yaml"]
    assert "none,gcd" in deployment and "--enforce-eager" not in deployment
    assert "--shutdown-timeout" in deployment


def test_bench_measures_it(extended, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "server.bench", "--url", extended.url, "--strategies",
           "none,gcd", "--concurrency", "1", "--requests", "2", "--max-tokens", "4",
           "--no-beam", "--no-reference", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert {r["strategy"] for r in data["records"]} == {"none", "gcd"}
    assert "gcd" in data["ratios"]["vs_none"]
    assert any(t["strategy"] == "gcd" and t["ratio"] == "vs_none" for t in data["targets"])


def test_eval_job_runs_it(extended, tmp_path: Path) -> None:  # noqa: ANN001
    from decoding.testing.synthetic import sample
    from eval.cli import main

    imgs = tmp_path / "images"
    imgs.mkdir()
    questions = []
    for n in range(2):
        sample(500 + n)[0].save(imgs / f"s{n}.png")
        questions.append({"question_id": n + 1, "image": f"s{n}.png",
                          "text": "Is there a circle in the image?", "label": "no"})  # fmt: skip
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in questions))
    out = tmp_path / "pope"
    argv = ["pope", "--url", extended.url, "--questions", f"random={qfile}",
            "--allow-unknown-questions", "--images", str(imgs), "--strategies", "none,gcd",
            "--max-tokens", "4", "--concurrency", "2", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0, extended.log_tail()
    res = json.loads((out / "results.json").read_text())
    assert res["strategies"]["gcd"]["decoding"]["strategy"] == "gcd"


def test_a_hook_lost_at_run_time_fails_the_request(extended) -> None:  # noqa: ANN001
    client = extended.client()
    case = parity.cases(1)[0]
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(
            **parity.chat_request(extended.model, case, {"strategy": "var"}, MAX_TOKENS)
        )
    assert "'var' was not applied" in str(exc.value)
    text = httpx.get(extended.url + "/metrics", timeout=10).text
    assert parity.metric(text, "lucid:request_errors_total", strategy="var", status_code="500")
    assert "no engine hook for var.attention" in extended.log_tail(400)
    # The server keeps serving, plain and other strategies alike.
    for decoding in ({"strategy": "none"}, {"strategy": "vcd"}):
        r = client.chat.completions.create(**parity.chat_request(extended.model, case, decoding, 4))
        assert r.choices[0].message.content is not None
