"""The reference CLI and benchmark entry points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from decoding.reference import bench, cli


def test_cli_json(tiny_llava_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--model",
        str(tiny_llava_dir),
        "--image",
        "synthetic:0",
        "--prompt",
        "Describe the image.",
        "--decoding",
        '{"strategy": "damro", "top_k": 4}',
        "--max-new-tokens",
        "5",
        "--json",
    ]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["strategy"] == "damro" and out["params"]["top_k"] == 4
    assert len(out["token_ids"]) == len(out["logprobs"]) == len(out["margins"]) <= 5
    assert len(out["info"]["damro_outliers"]) == 4


def test_cli_ignore_eos_runs_to_the_limit(
    tiny_llava_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--model", str(tiny_llava_dir), "--image", "synthetic:0", "--prompt",
            "Describe the image.", "--max-new-tokens", "40", "--json"]  # fmt: skip
    lengths = []
    for extra in ([], ["--ignore-eos"]):
        assert cli.main(base + extra) == 0
        out = json.loads(capsys.readouterr().out)
        lengths.append((len(out["token_ids"]), out["finish_reason"]))
    assert lengths[0][0] < 40 and lengths[0][1] == "stop"  # the caption ends first
    assert lengths[1] == (40, "length")


def test_cli_rejects_bad_decoding(tiny_llava_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--model",
        str(tiny_llava_dir),
        "--image",
        "synthetic:0",
        "--prompt",
        "Hi",
        "--decoding",
        '{"strategy": "vcd", "alpha": -1}',
    ]
    assert cli.main(argv) == 2
    assert "decoding.alpha" in capsys.readouterr().err


def test_bench_records(tiny_llava_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [
        "--model",
        str(tiny_llava_dir),
        "--out",
        str(out),
        "--requests",
        "1",
        "--max-new-tokens",
        "3",
        "--strategies",
        "none,vcd,opera,var",
    ]
    assert bench.main(argv) == 0
    records = json.loads(out.read_text())
    assert [r["strategy"] for r in records] == ["none", "vcd", "opera", "var"]
    for r in records:
        assert 0 < r["tokens"] <= 3 and r["seconds"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"], rel=0.05)
