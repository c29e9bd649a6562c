"""POPE question files: the shipped versions, their pinned hashes, and loading.

The upstream question files exist in several versions that give different scores
(docs: evaluators.md §0.1 and §1.2; RUCAIBox/POPE commits ``e3e39262``, ``edebdda3``,
``109985c7``; copies in OPERA ``61426efe`` ``pope_coco/`` and VCD ``d6568ff8``
``experiments/data/POPE/``). Every file is identified by the SHA-256 of its bytes, so a
results file always says which version was scored, and a modified file is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.io import DATA_DIR, parse_json_records, read_bytes, sha256_hex

POPE_DIR = DATA_DIR / "pope"
SPLITS = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class KnownFile:
    """One upstream question file version, identified by the SHA-256 of its bytes."""

    version: str
    dataset: str
    split: str
    description: str


def _load_shipped_sums() -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in (POPE_DIR / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            sums[rel.strip()] = digest
    return sums


#: sha256 of shipped file (relative path, without ``.gz``) as listed in SHA256SUMS.
SHIPPED_SHA256: dict[str, str] = _load_shipped_sums()

_E3 = "e3e39262 (2023-08-10; used by LLaVA-1.5 and OPERA)"
_ED = "edebdda3 (2023-10-09; adversarial file used by VCD, DAMRO, AvisC)"
_CUR = "109985c7 (2023-11-16; current)"
_VCD = "VCD d6568ff8 copy (LF JSONL)"

_SHIPPED_VERSIONS = {"e3e39262": _E3, "edebdda3": _ED, "109985c7": _CUR}

# VCD's LF re-encodings of the same questions (recognised, not shipped).
_VCD_COPIES = {
    "fa3a986eb3d586ceb527371112ad7170f398835cbe0a3f08a7e888771dbd8bd6": ("coco", "popular"),
    "185d7eb49958c882f15d46c51d5c0456fbd5efbf24c57ff8b7adc6648870c6ac": ("coco", "adversarial"),
    "900c244605e8d43626b9579a110e3631e534cddc2aff27fe91e3f080e15d4446": ("aokvqa", "random"),
    "792d586a875c197362256b25e9252cc97df6fa1dca5aca72a53eba560414d6b7": ("aokvqa", "popular"),
    "87f9acb460fcb690f9120c6d69eb05cfedadab5af5eb385b5201fd48bfc6670c": ("aokvqa", "adversarial"),
    "1c1117ce33df2eae0d7b04827896caff1f79dac7b99b9e1b0c87a415066cff98": ("gqa", "random"),
    "e48e138bd61dd3bc4ec35cc8d4357b4dbfc68f0e704283a92217325585a17653": ("gqa", "popular"),
    "64a3bdeb8d24c02d175eafa5e1b24bc7fd611efa95bb87a031c880e548aef094": ("gqa", "adversarial"),
}


def _known_files() -> dict[str, KnownFile]:
    known: dict[str, KnownFile] = {}
    for rel, digest in SHIPPED_SHA256.items():
        parts = rel.split("/")
        if parts[0] not in _SHIPPED_VERSIONS:
            continue  # LLaVA's combined file is not a per-split question file
        dataset = parts[-2] if parts[1] == "seem" else "coco"
        split = parts[-1].rsplit("_", 1)[1].removesuffix(".json")
        known[digest] = KnownFile(_SHIPPED_VERSIONS[parts[0]], dataset, split, rel)
    for digest, (dataset, split) in _VCD_COPIES.items():
        known[digest] = KnownFile(_VCD, dataset, split, "same questions as a shipped file")
    return known


#: Every question-file version this evaluator recognises, keyed by sha256 of its bytes.
KNOWN_FILES: dict[str, KnownFile] = _known_files()

#: Named question sets: split -> shipped file (relative to ``eval/data/pope``, no ``.gz``).
QUESTION_SETS: dict[str, dict[str, str]] = {
    # LLaVA-1.5 MODEL_ZOO (85.9) and OPERA Table 4 were scored on these.
    "coco-llava15": {s: f"e3e39262/coco/coco_pope_{s}.json" for s in SPLITS},
    # The current upstream files (3,000 questions per split, no typo).
    "coco-current": {s: f"109985c7/coco/coco_pope_{s}.json" for s in SPLITS},
    # The questions VCD, DAMRO and AvisC ran (current random/popular, 2023-10-09 adversarial).
    "coco-vcd": {
        "random": "109985c7/coco/coco_pope_random.json",
        "popular": "109985c7/coco/coco_pope_popular.json",
        "adversarial": "edebdda3/coco/coco_pope_adversarial.json",
    },
    "aokvqa": {s: f"109985c7/seem/aokvqa/aokvqa_pope_seem_{s}.json" for s in SPLITS},
    "gqa": {s: f"109985c7/seem/gqa/gqa_pope_seem_{s}.json" for s in SPLITS},
}


class QuestionFileError(ValueError):
    """A question file is malformed, modified, or of an unrecognised version."""


@dataclass(frozen=True)
class Question:
    question_id: int
    image: str
    text: str
    label: str  # "yes" or "no"


@dataclass(frozen=True)
class QuestionFile:
    split: str
    path: str
    sha256: str
    version: str  # human-readable version, or "unrecognised"
    questions: tuple[Question, ...]

    def describe(self) -> dict[str, Any]:
        yes = sum(q.label == "yes" for q in self.questions)
        return {
            "split": self.split,
            "path": self.path,
            "sha256": self.sha256,
            "version": self.version,
            "questions": len(self.questions),
            "yes": yes,
            "no": len(self.questions) - yes,
        }


def _parse_questions(data: bytes, source: str) -> tuple[Question, ...]:
    try:
        records = parse_json_records(data.decode("utf-8"), source=source)
    except (UnicodeDecodeError, ValueError) as exc:
        raise QuestionFileError(str(exc)) from None
    out = []
    for n, r in enumerate(records, 1):
        try:
            label = str(r["label"]).strip().lower()
            if label not in ("yes", "no"):
                raise QuestionFileError(
                    f"{source}: record {n}: label must be yes/no, got {label!r}"
                )
            out.append(Question(int(r["question_id"]), str(r["image"]), str(r["text"]), label))
        except KeyError as exc:
            raise QuestionFileError(f"{source}: record {n}: missing key {exc}") from None
    return tuple(out)


def load_question_file(
    path: str | Path,
    *,
    split: str,
    expected_sha256: str | None = None,
    allow_unknown: bool = False,
) -> QuestionFile:
    """Load and identify one question file.

    The hash of the (decompressed) bytes must equal ``expected_sha256`` when given, and
    otherwise must be a known upstream version unless ``allow_unknown`` (custom sets).
    """
    data = read_bytes(path)
    digest = sha256_hex(data)
    known = KNOWN_FILES.get(digest)
    if expected_sha256 is not None and digest != expected_sha256:
        raise QuestionFileError(
            f"{path}: sha256 {digest} does not match the pinned {expected_sha256}; "
            "the file was modified (restore it from the repository)"
        )
    if known is None and not allow_unknown:
        raise QuestionFileError(
            f"{path}: sha256 {digest} is not a known POPE question-file version; "
            "use a shipped question set, or pass --allow-unknown-questions for a custom file"
        )
    if known is not None and known.split != split:
        raise QuestionFileError(f"{path}: this is the {known.split!r} split, not {split!r}")
    version = f"{known.dataset} {known.split} @ {known.version}" if known else "unrecognised"
    if known is None and Path(path).name.startswith("lab_pope_"):
        from decoding.testing.world import WORLD_VERSION

        version = f"synthetic world v{WORLD_VERSION} (eval/lab.py)"
    return QuestionFile(split, str(path), digest, version, _parse_questions(data, str(path)))


def load_question_set(name: str) -> dict[str, QuestionFile]:
    """Load a shipped question set (see :data:`QUESTION_SETS`), hash-checked."""
    try:
        files = QUESTION_SETS[name]
    except KeyError:
        raise QuestionFileError(
            f"unknown question set {name!r}; available: {', '.join(QUESTION_SETS)}"
        ) from None
    return {
        split: load_question_file(
            POPE_DIR / f"{rel}.gz", split=split, expected_sha256=SHIPPED_SHA256[rel]
        )
        for split, rel in files.items()
    }


def load_questions(
    spec: str | dict[str, str], *, allow_unknown: bool = False
) -> dict[str, QuestionFile]:
    """A named set, the synthetic world's ``lab`` / ``lab:N`` (:mod:`eval.lab`), or a
    mapping ``split -> path`` of user files."""
    from eval import lab

    if lab.is_lab(spec):
        return {
            split: load_question_file(path, split=split, allow_unknown=True)
            for split, path in lab.question_files(str(spec)).items()
        }
    if isinstance(spec, str):
        return load_question_set(spec)
    return {
        split: load_question_file(path, split=split, allow_unknown=allow_unknown)
        for split, path in spec.items()
    }


def load_llava_categories() -> dict[int, str]:
    """``question_id -> category`` of LLaVA-1.5's combined file ``llava_pope_test.jsonl``.

    LLaVA's answer files carry only ``question_id``; LLaVA ``c121f043``
    ``llava/eval/eval_pope.py`` groups them by the question file's ``category``.
    """
    rel = "llava-1.5/llava_pope_test.jsonl"
    data = read_bytes(POPE_DIR / f"{rel}.gz")
    if sha256_hex(data) != SHIPPED_SHA256[rel]:
        raise QuestionFileError(f"{rel}: hash mismatch; restore it from the repository")
    recs = parse_json_records(data.decode("utf-8"), source=rel)
    return {int(r["question_id"]): str(r["category"]) for r in recs}
