"""CHAIR evaluator: lexicon rules, caption parser, metrics, ground truth, re-scoring."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from eval.chair.captions import load_captions
from eval.chair.gt import gt_from_coco, load_gt_file, load_image_set
from eval.chair.lexicon import DOUBLE_WORDS, INVERSE_SYNONYMS, NODE_WORDS
from eval.chair.metrics import MissingGroundTruth, score_captions
from eval.chair.nltk_data import (
    NltkDataMissing,
    add_nltk_dir,
    ensure_nltk_data,
    missing_packages,
)
from eval.chair.parser import CaptionParser, drop_incomplete_sentence, parse_tokens
from eval.io import DATA_DIR

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LUCID_SHARED_DATA", REPO.parent / "shared" / "data"))
REF = DATA_DIR / "reference" / "chair"


@pytest.fixture(scope="module")
def parser() -> CaptionParser:
    """The real parser; offline machines use the NLTK copies in shared/data/nltk."""
    if missing_packages() and (SHARED / "nltk").is_dir():
        add_nltk_dir(str(SHARED / "nltk"))
    ensure_nltk_data()  # fails with install instructions if still missing
    return CaptionParser()


# --- lexicon ------------------------------------------------------------------------------


def test_lexicon_shape_and_quirks() -> None:
    assert len(NODE_WORDS) == 80 and NODE_WORDS[0] == "person"
    assert len(INVERSE_SYNONYMS) == 403
    assert len(DOUBLE_WORDS) == 55
    assert INVERSE_SYNONYMS[" motor bike"] == "motorcycle"  # leading space: never matches
    assert "motor bike" not in INVERSE_SYNONYMS and "cheesecake" not in INVERSE_SYNONYMS
    assert "iphone" not in INVERSE_SYNONYMS and INVERSE_SYNONYMS["iPhone"] == "cell phone"
    assert INVERSE_SYNONYMS["televison"] == "tv" and INVERSE_SYNONYMS["knive"] == "knife"
    assert DOUBLE_WORDS["bow tie"] == "tie" and DOUBLE_WORDS["toilet seat"] == "toilet"
    assert DOUBLE_WORDS["baby cub"] == "cub" and DOUBLE_WORDS["passenger jet"] == "jet"


@pytest.mark.skipif(not (SHARED / "chair" / "synonyms.txt").exists(), reason="no shared data")
def test_lexicon_equals_upstream_synonyms_file() -> None:
    inverse = {}
    for line in (SHARED / "chair" / "synonyms.txt").read_text().splitlines():
        entries = line.strip().split(", ")
        for e in entries:
            inverse[e] = entries[0]
    assert inverse == INVERSE_SYNONYMS


# --- parser rules on tokens (no NLTK) and on text ----------------------------------------


def test_merge_and_special_cases_on_tokens() -> None:
    p = parse_tokens("a hot dog and a teddy bear near a train track".split())
    assert p.node_words == ("hot dog", "teddy bear")  # no dog, bear or train
    assert parse_tokens("a baby elephant and an adult dog".split()).node_words == (
        "elephant",
        "dog",
    )
    assert parse_tokens("a passenger train".split()).node_words == ("train",)
    assert parse_tokens("a passenger".split()).node_words == ("person",)
    assert parse_tokens("a bow tie".split()).node_words == ("tie",)
    assert parse_tokens("a motor bike".split()).node_words == ()  # merged, not a lexicon entry
    # toilet rule: "seat" is dropped anywhere once "toilet" occurs
    assert parse_tokens("the seat of the toilet".split()).node_words == ("toilet",)
    assert parse_tokens("a seat".split()).node_words == ("chair",)
    assert parse_tokens("the toilet seat".split()).node_words == ("toilet",)
    p = parse_tokens("two dog and the dog .".split())
    assert p.node_words == ("dog", "dog") and len(p.raw_words) == 6


@pytest.mark.parametrize(
    ("caption", "nodes"),
    [
        ("Two dogs chase the dog.", ("dog", "dog")),
        ("Three giraffes and some people.", ("giraffe", "person")),
        ("Wine glasses on a dining table.", ("wine glass", "dining table")),
        ("A hot dog next to two teddy bears.", ("hot dog", "teddy bear")),
        ("A man rides a motorbike, not a motor bike.", ("person", "motorcycle")),
        ("A baby elephant beside a passenger train on train tracks.", ("elephant", "train")),
        ("The seat of the toilet is up.", ("toilet",)),
        ("A cheesecake and an iPhone.", ()),
        ("Knives and forks.", ("knife", "fork")),
    ],
)
def test_parser_on_captions(parser: CaptionParser, caption: str, nodes: tuple[str, ...]) -> None:
    assert parser.parse(caption).node_words == nodes


def test_drop_incomplete_sentence() -> None:
    assert drop_incomplete_sentence("A cat sits. A dog is on the") == "A cat sits."
    assert drop_incomplete_sentence("A cat sits. A dog runs!") == "A cat sits. A dog runs!"
    assert drop_incomplete_sentence('He said "hi." Then a') == 'He said "hi."'
    assert drop_incomplete_sentence("a dog on the") == "a dog on the"


# --- metrics on a synthetic annotation set ------------------------------------------------

GT = {
    1: frozenset({"dog", "person", "dining table"}),
    2: frozenset({"hot dog", "cup", "car"}),
    3: frozenset({"teddy bear", "bed"}),
}
CAPTIONS = [
    (1, "A man and two dogs sit at a table. A cat is under the chair."),
    (2, "A hot dog on a plate next to a cup."),
    (3, "A teddy bear on a bed near a toilet seat."),
]


def test_chair_hand_computed(parser: CaptionParser) -> None:
    r = score_captions(CAPTIONS, GT, parser, keep_details=True)
    # mentions: man dog table cat chair | hot dog cup | teddy bear bed toilet  -> 10
    # hallucinated: cat, chair (caption 1); toilet (caption 3)              -> 3
    assert (r["mentions"], r["hallucinated_mentions"], r["hallucinated_captions"]) == (10, 3, 2)
    assert r["chair_i"] == pytest.approx(3 / 10)
    assert r["chair_s"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(7 / 8)  # car of image 2 never mentioned
    assert r["details"][0]["hallucinated"] == [["cat", "cat"], ["chair", "chair"]]
    # raw words incl. "." tokens: 17 + 10 ("hot dog" merged) + 9 ("teddy bear", "toilet seat")
    assert r["avg_len"] == pytest.approx(36 / 3)


def test_chair_missing_ground_truth_is_an_error(parser: CaptionParser) -> None:
    with pytest.raises(MissingGroundTruth):
        score_captions([(99, "A dog.")], GT, parser)


def _write_coco(root: Path) -> None:
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (1, 2, 3)]
    cats = [{"id": 18, "name": "dog"}, {"id": 47, "name": "cup"}, {"id": 88, "name": "teddy bear"}]
    inst = [
        {"id": 10, "image_id": 1, "category_id": 18, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0},
        {"id": 11, "image_id": 2, "category_id": 47, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0},
        {"id": 12, "image_id": 3, "category_id": 88, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0},
    ]
    caps = [
        {"id": 20, "image_id": 1, "caption": "A man at a table with his dog."},
        {"id": 21, "image_id": 2, "caption": "A hot dog and a cup beside a car."},
        {"id": 22, "image_id": 3, "caption": "A teddy bear lying on a bed."},
        {"id": 23, "image_id": 3, "caption": "A stuffed animal on the bed."},
    ]
    (root / "instances_val2014.json").write_text(
        json.dumps({"images": images, "annotations": inst, "categories": cats})
    )
    (root / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": caps}))


def test_gt_from_coco_annotations(parser: CaptionParser, tmp_path: Path) -> None:
    _write_coco(tmp_path)
    gt = gt_from_coco(tmp_path, [1, 2, 3], parser.parse)
    assert gt == GT  # instances plus objects named in the reference captions
    r = score_captions(CAPTIONS, gt, parser)
    assert r["chair_i"] == pytest.approx(0.3)


def test_gt_file_and_image_sets(tmp_path: Path) -> None:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"1": ["dog"], "2": []}))
    assert load_gt_file(path) == {1: frozenset({"dog"}), 2: frozenset()}
    ids = load_image_set("opera-llava15")
    assert len(ids) == len(set(ids)) == 500 and ids[0] == 226988
    assert len(set(ids) & set(load_image_set("opera-instructblip"))) == 6
    pope = load_image_set("pope-coco")
    assert len(pope) == 500 and pope[0] == 310196


def test_missing_nltk_data_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import nltk

    monkeypatch.setattr(nltk.data, "path", ["/nonexistent-nltk-dir"])
    with pytest.raises(NltkDataMissing, match="python -m nltk.downloader punkt_tab"):
        ensure_nltk_data()


# --- re-scoring OPERA's released captions (OPERA paper Table 1, LLaVA-1.5) ---------------


@pytest.mark.parametrize(
    ("log", "variant", "expected"),
    [
        # OPERA Table 1: Beam-5 48.8 / 13.9, OPERA 44.6 / 12.8, Greedy CHAIR_s 45.0.
        ("beam5", "singularize_maxlinn", (244, 500, 527, 3798, 48.8, 13.9)),
        ("ours", "singularize_maxlinn", (223, 500, 466, 3653, 44.6, 12.8)),
        ("greedy", "singularize_maxlinn", (225, 500, 482, 3787, 45.0, 12.7)),
        ("ours", "lemmatize_opera", (223, 500, 464, 3653, 44.6, 12.7)),
        # OPERA Table 1, OPERA rows of the other models: 46.4 / 14.2, 26.2 / 9.5, 36.2 / 12.1.
        ("instructblip/ours", "singularize_maxlinn", (232, 500, None, None, 46.4, 14.2)),
        ("minigpt4/ours", "singularize_maxlinn", (131, 500, None, None, 26.2, 9.5)),
        ("shikra/ours", "singularize_maxlinn", (181, 500, None, None, 36.2, 12.1)),
    ],
)
def test_rescore_opera_logs(
    parser: CaptionParser, log: str, variant: str, expected: tuple[float, ...]
) -> None:
    gt = load_gt_file(REF / "opera_log_images_gt.json.gz", variant=variant)
    rel = log if "/" in log else f"llava-1.5/{log}"
    (caps,) = load_captions(REF / "opera_logs" / f"{rel}.jsonl.gz").values()
    r = score_captions(caps, gt, parser)
    got = (
        r["hallucinated_captions"],
        r["captions"],
        r["hallucinated_mentions"],
        r["mentions"],
        round(r["chair_s"] * 100, 1),
        round(r["chair_i"] * 100, 1),
    )
    assert got == tuple(g if e is None else e for g, e in zip(got, expected, strict=True))
    assert got[4:] == expected[4:]
