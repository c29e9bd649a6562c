"""Score POPE answers, including answer files written by the upstream repositories.

Recognised answer-file formats (detected from the keys of the first record):

- this project's raw answers JSONL (``eval pope`` jobs): ``strategy``, ``split``,
  ``question_id``, ``label``, ``answer``;
- LLaVA's answer JSONL (``question_id``, ``prompt``, ``text``, ``answer_id``,
  ``model_id``), scored like LLaVA ``c121f043`` ``llava/eval/eval_pope.py``: answers
  are grouped by the ``category`` of their question in ``llava_pope_test.jsonl`` and
  zipped, in order, with the labels of the ``e3e39262`` file of that split;
- the official POPE answer JSONL (``question``, ``answer``), zipped in order with the
  labels of one split, like RUCAIBox/POPE ``3df3ba1b`` ``evaluate.py``.

Upstream pairs answers and labels by position only; here every pair is also checked
against the question text, so a reordered or truncated file is an error, not a score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.io import read_records
from eval.pope.data import QuestionFile, load_llava_categories, load_question_set
from eval.pope.metrics import Confusion, compute_metrics, mean_over_splits
from eval.pope.parsers import get_parser

Pairs = list[tuple[str, str]]  # (answer text, gold label)


class AnswerFileError(ValueError):
    """An answer file cannot be matched to its questions."""


def score_pairs(pairs: Sequence[tuple[str, str]], parser: str = "official") -> dict[str, Any]:
    rule = get_parser(parser)
    return compute_metrics(Confusion.from_cells(rule(a, g) for a, g in pairs))


def score_splits(by_split: Mapping[str, Pairs], parser: str = "official") -> dict[str, Any]:
    """Per-split metrics and their unweighted mean."""
    splits = {s: score_pairs(p, parser) for s, p in by_split.items()}
    return {"splits": splits, "mean": mean_over_splits(splits)}


def detect_format(record: Mapping[str, Any]) -> str:
    keys = set(record)
    if {"strategy", "split", "question_id", "answer", "label"} <= keys:
        return "lucid"
    if {"question_id", "text"} <= keys and keys & {"prompt", "answer_id", "model_id"}:
        return "llava"
    if {"question", "answer"} <= keys:
        return "pope"
    raise AnswerFileError(
        f"unrecognised answer format (keys {sorted(keys)}); expected this project's raw "
        "answers, LLaVA's answer JSONL or POPE's {question, answer} JSONL"
    )


def _zip_checked(answers: Sequence[tuple[str, str]], qfile: QuestionFile, source: str) -> Pairs:
    """Pair (question text, answer) with the file's labels in order, checking the text."""
    if len(answers) != len(qfile.questions):
        raise AnswerFileError(
            f"{source}: {len(answers)} answers for split {qfile.split!r} but the question "
            f"file has {len(qfile.questions)} ({qfile.version})"
        )
    pairs: Pairs = []
    for n, ((qtext, answer), q) in enumerate(zip(answers, qfile.questions, strict=True), 1):
        if qtext and not qtext.strip().startswith(q.text.strip()):
            raise AnswerFileError(
                f"{source}: answer {n} of split {qfile.split!r} is for {qtext[:60]!r}, "
                f"but question {n} is {q.text!r}; wrong question-file version or order?"
            )
        pairs.append((answer, q.label))
    return pairs


def load_answer_file(
    path: str | Path,
    *,
    questions: Mapping[str, QuestionFile] | None = None,
    split: str | None = None,
) -> tuple[str, dict[str, dict[str, Pairs]]]:
    """Read an answer file: ``(format, {group: {split: [(answer, label), ...]}})``.

    ``group`` is the strategy (own format), the ``model_id`` (LLaVA) or the file name.
    ``questions`` is needed for the POPE format (with ``split``); LLaVA files always use
    the ``coco-llava15`` set, the only one LLaVA's combined question file covers.
    """
    records = read_records(path)
    if not records:
        raise AnswerFileError(f"{path}: no answers")
    fmt = detect_format(records[0])
    out: dict[str, dict[str, Pairs]] = {}
    if fmt == "lucid":
        for r in records:
            if r.get("error"):
                continue
            out.setdefault(str(r["strategy"]), {}).setdefault(str(r["split"]), []).append(
                (str(r["answer"]), str(r["label"]))
            )
        return fmt, out
    if fmt == "llava":
        categories = load_llava_categories()
        qset = load_question_set("coco-llava15")
        grouped: dict[str, dict[str, list[tuple[str, str]]]] = {}
        for r in records:
            cat = categories.get(int(r["question_id"]))
            if cat is None:
                raise AnswerFileError(f"{path}: question_id {r['question_id']} not in LLaVA's set")
            model = str(r.get("model_id") or Path(path).name)
            grouped.setdefault(model, {}).setdefault(cat, []).append(
                (str(r.get("prompt", "")), str(r["text"]))
            )
        for model, cats in grouped.items():
            out[model] = {s: _zip_checked(cats[s], qset[s], str(path)) for s in qset if s in cats}
        return fmt, out
    if questions is None or split is None or split not in questions:
        raise AnswerFileError(
            f"{path}: POPE-format answers carry no split; give the split and question set "
            "(e.g. --split random --question-set coco-llava15)"
        )
    answers = [(str(r["question"]), str(r["answer"])) for r in records]
    out[Path(path).name] = {split: _zip_checked(answers, questions[split], str(path))}
    return fmt, out
