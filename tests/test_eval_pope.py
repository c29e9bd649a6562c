"""POPE evaluator: parsers, metrics, question-file versions and re-scoring."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from eval.io import DATA_DIR
from eval.pope.data import (
    QuestionFileError,
    load_question_file,
    load_question_set,
    load_questions,
)
from eval.pope.metrics import Confusion, compute_metrics, mean_over_splits
from eval.pope.parsers import PARSERS, official_prediction, opera_prediction
from eval.pope.score import AnswerFileError, load_answer_file, score_pairs, score_splits

# --- metrics on hand-built confusion matrices -------------------------------------------


def test_metrics_hand_computed() -> None:
    m = compute_metrics(Confusion(tp=40, fp=10, tn=30, fn=20))
    assert m["n"] == 100
    assert m["accuracy"] == pytest.approx(0.70)
    assert m["precision"] == pytest.approx(0.80)
    assert m["recall"] == pytest.approx(40 / 60)
    assert m["f1"] == pytest.approx(2 * 0.8 * (2 / 3) / (0.8 + 2 / 3))  # 0.727272...
    assert m["f1"] == pytest.approx(8 / 11)
    assert m["yes_ratio"] == pytest.approx(0.50)


def test_metrics_published_llava_random_counts() -> None:
    # LLaVA issue #626: TP 1183, FP 31, TN 1379, FN 317 -> Acc 88.04, F1 87.18, yes 41.7.
    m = compute_metrics(Confusion(tp=1183, fp=31, tn=1379, fn=317))
    assert round(m["accuracy"] * 100, 2) == 88.04
    assert round(m["f1"] * 100, 2) == 87.18
    assert round(m["yes_ratio"] * 100, 1) == 41.7


def test_metrics_degenerate_and_other_cells() -> None:
    m = compute_metrics(Confusion(tn=5, fn=5))  # never says yes
    assert (m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["accuracy"] == 0.5
    # "other" answers count in N (accuracy, yes-ratio) but in no P/R cell.
    m = compute_metrics(Confusion(tp=2, fp=1, tn=1, other=4))
    assert m["accuracy"] == pytest.approx(3 / 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == 1.0
    assert m["yes_ratio"] == pytest.approx(3 / 8)


def test_mean_over_splits() -> None:
    a = compute_metrics(Confusion(tp=1, tn=1))  # perfect
    b = compute_metrics(Confusion(fp=1, fn=1))  # all wrong
    mean = mean_over_splits({"random": a, "popular": b})
    assert mean["accuracy"] == 0.5 and mean["f1"] == 0.5 and mean["yes_ratio"] == 0.5


# --- parsers on a truth table of tricky answers ------------------------------------------

TRICKY = [
    "No, there is not.",
    "There is no dog",
    "Yes.",
    "I don't know",
    "",
    "not sure but yes",
    "NO",
    "Yes, there is a dog. No cat.",
    "There isn't.",
    "yes",
]

# Cell per answer for gold "yes" and gold "no", hand-derived from each upstream rule.
EXPECTED = {
    "official": {
        "yes": ["fn", "fn", "tp", "tp", "tp", "fn", "tp", "tp", "tp", "tp"],
        "no": ["tn", "tn", "fp", "fp", "fp", "tn", "fp", "fp", "fp", "fp"],
    },
    "vcd": {
        "yes": ["fn", "fn", "tp", "fn", "fn", "tp", "fn", "tp", "fn", "tp"],
        "no": ["tn", "tn", "fp", "tn", "fp", "tn", "tn", "tn", "fp", "fp"],
    },
    "lmms": {
        "yes": ["other"] * 6 + ["fn", "other", "other", "tp"],
        "no": ["other"] * 6 + ["tn", "other", "other", "fp"],
    },
    "opera": {
        "yes": ["fn", "fn", "tp", "fn", "tp", "fn", "fn", "fn", "fn", "tp"],
        "no": ["tn", "tn", "fp", "tn", "fp", "tn", "tn", "tn", "tn", "fp"],
    },
}


@pytest.mark.parametrize("parser", sorted(PARSERS))
@pytest.mark.parametrize("gold", ["yes", "no"])
def test_parser_truth_table(parser: str, gold: str) -> None:
    rule = PARSERS[parser]
    got = [rule(a, gold) for a in TRICKY]
    assert got == EXPECTED[parser][gold], list(zip(TRICKY, got, strict=True))


def test_official_prediction_quirks() -> None:
    assert official_prediction("No, there is not.") == "no"
    assert official_prediction("I don't know") == "yes"  # no negative token
    assert official_prediction("") == "yes"  # no third class
    assert official_prediction("Yes. There is no dog.") == "yes"  # first sentence only
    assert official_prediction("Yes, no.") == "no"
    assert opera_prediction("Yes. There is no dog.") == "no"  # whole text


def test_parsers_change_scores() -> None:
    pairs = [("Yes, there is.", "yes"), ("There is no cat.", "no"), ("I don't know", "no")]
    assert score_pairs(pairs, "official")["accuracy"] == pytest.approx(2 / 3)
    assert score_pairs(pairs, "vcd")["accuracy"] == 1.0  # "know" contains "no"
    assert score_pairs(pairs, "lmms")["accuracy"] == 0.0


# --- question files ----------------------------------------------------------------------


def test_question_sets_versions_and_counts() -> None:
    old = load_question_set("coco-llava15")
    assert [len(old[s].questions) for s in ("random", "popular", "adversarial")] == [
        2910,
        3000,
        3000,
    ]
    assert "e3e39262" in old["random"].version
    assert sum(q.label == "yes" for q in old["random"].questions) == 1500
    assert sum("imange" in q.text for q in old["random"].questions) == 144
    cur = load_question_set("coco-current")
    assert all(len(f.questions) == 3000 for f in cur.values())
    assert not any("imange" in q.text for f in cur.values() for q in f.questions)
    vcd = load_question_set("coco-vcd")
    assert sum("imange" in q.text for q in vcd["adversarial"].questions) == 57
    # The 1,500 positive questions are identical across the three splits.
    pos = [[(q.image, q.text) for q in f.questions if q.label == "yes"] for f in cur.values()]
    assert pos[0] == pos[1] == pos[2]


def test_seem_json_array_files_load() -> None:
    for name in ("aokvqa", "gqa"):
        qs = load_question_set(name)
        assert all(len(f.questions) == 3000 for f in qs.values())
    assert load_question_set("gqa")["random"].questions[0].image.endswith(".jpg")


def _plain_copy(tmp_path: Path, rel: str) -> Path:
    data = gzip.decompress((DATA_DIR / "pope" / f"{rel}.gz").read_bytes())
    out = tmp_path / Path(rel).name
    out.write_bytes(data)
    return out


def test_hash_check_identifies_and_rejects_modified(tmp_path: Path) -> None:
    path = _plain_copy(tmp_path, "e3e39262/coco/coco_pope_popular.json")
    assert b"\r\n" in path.read_bytes()  # CRLF upstream file
    qf = load_question_file(path, split="popular")
    assert "e3e39262" in qf.version and len(qf.questions) == 3000
    with pytest.raises(QuestionFileError, match="not the 'popular' split|split"):
        load_question_file(path, split="random")
    # Flip one label: same shape, different bytes.
    path.write_bytes(path.read_bytes().replace(b'"label": "no"', b'"label": "yes"', 1))
    with pytest.raises(QuestionFileError, match="not a known POPE"):
        load_question_file(path, split="popular")
    with pytest.raises(QuestionFileError, match="does not match the pinned"):
        load_question_file(path, split="popular", expected_sha256="0" * 64)
    qf = load_question_file(path, split="popular", allow_unknown=True)
    assert qf.version == "unrecognised"


def test_custom_question_file_forms(tmp_path: Path) -> None:
    recs = [
        {
            "question_id": 1,
            "image": "a.png",
            "text": "Is there a cat in the image?",
            "label": "yes",
        },
        {"question_id": 2, "image": "a.png", "text": "Is there a dog in the image?", "label": "no"},
    ]
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_bytes(b"\r\n".join(json.dumps(r).encode() for r in recs) + b"\r\n")
    arr = tmp_path / "q.json"
    arr.write_text(json.dumps(recs, indent=2))
    a = load_questions({"random": str(jsonl)}, allow_unknown=True)["random"]
    b = load_questions({"random": str(arr)}, allow_unknown=True)["random"]
    assert a.questions == b.questions and len(a.questions) == 2
    with pytest.raises(QuestionFileError):
        load_questions({"random": str(jsonl)})


# --- re-scoring released answer files ----------------------------------------------------

REF = DATA_DIR / "reference"


def test_rescore_llava_13b_reproduces_model_zoo() -> None:
    fmt, groups = load_answer_file(REF / "pope-answers" / "llava-v1.5-13b_answers.jsonl.gz")
    assert fmt == "llava"
    res = score_splits(groups["llava-v1.5-13b"], "official")
    s = res["splits"]
    assert (s["random"]["tp"], s["random"]["fp"], s["random"]["tn"], s["random"]["fn"]) == (
        1182,
        31,
        1379,
        318,
    )
    assert (s["popular"]["fp"], s["adversarial"]["fp"]) == (59, 117)
    assert round(s["random"]["f1"] * 100, 2) == 87.14
    assert round(s["adversarial"]["accuracy"] * 100, 2) == 85.50
    # LLaVA MODEL_ZOO: POPE 85.9 = mean F1 over the three splits.
    assert int(res["mean"]["f1"] * 1000) / 10 == 85.9
    assert round(res["mean"]["f1"] * 100, 2) == 85.95


def test_rescore_pope_format_and_order_check(tmp_path: Path) -> None:
    qs = load_question_set("coco-llava15")
    rnd = qs["random"].questions
    path = tmp_path / "answers.jsonl"
    lines = [json.dumps({"question": q.text, "answer": "Yes" if q.label == "yes" else "No"})
             for q in rnd]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    fmt, groups = load_answer_file(path, questions=qs, split="random")
    assert fmt == "pope"
    m = score_splits(groups["answers.jsonl"])["splits"]["random"]
    assert m["accuracy"] == 1.0 and m["n"] == 2910
    with pytest.raises(AnswerFileError, match="carry no split"):
        load_answer_file(path)
    path.write_text("\n".join(lines[1:] + lines[:1]) + "\n")  # reordered
    with pytest.raises(AnswerFileError, match="wrong question-file version or order"):
        load_answer_file(path, questions=qs, split="random")
    with pytest.raises(AnswerFileError, match="2910 answers|answers for split"):
        load_answer_file(path, questions=load_question_set("coco-current"), split="random")


@pytest.mark.parametrize("folder", ["pope", "reference"])
def test_shipped_files_match_their_hashes(folder: str) -> None:
    from eval.io import read_bytes, sha256_hex

    root = DATA_DIR / folder
    sums = [line.split(maxsplit=1) for line in (root / "SHA256SUMS").read_text().splitlines()]
    assert len(sums) >= 8
    for digest, rel in sums:
        assert sha256_hex(read_bytes(root / f"{rel.strip()}.gz")) == digest, rel
