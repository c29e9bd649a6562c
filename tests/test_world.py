"""The synthetic world: determinism, built-in priors, and its POPE and CHAIR sets."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from decoding.testing import world
from eval import lab
from eval.bootstrap import interval, resamples
from eval.chair.lexicon import INVERSE_SYNONYMS


def test_scenes_and_images_are_deterministic() -> None:
    a, b = world.heldout_scene(12), world.heldout_scene(12)
    assert a == b
    assert a.draw().tobytes() == b.draw().tobytes()
    rng1, rng2 = random.Random(3), random.Random(3)
    assert [world.train_scene(rng1) for _ in range(20)] == [
        world.train_scene(rng2) for _ in range(20)
    ]
    assert world.heldout_scene(12) != world.heldout_scene(13)


def test_frequency_and_cooccurrence_priors() -> None:
    freq = world.frequencies()
    co = world.cooccurrence()
    assert max(freq, key=freq.get) == "person"
    assert freq["person"] > 3 * freq["clock"] and freq["person"] > 3 * freq["cat"]
    for anchor, partner in world.PAIRS:
        assert 0.85 < co[anchor, partner] < 0.97  # nearly always together in training
        assert co[partner, anchor] < co[anchor, partner]  # a partner also appears alone
    # No other pair is that tight.
    tight = {k for k, v in co.items() if v > 0.6}
    assert tight <= set(world.PAIRS) | {(p, a) for a, p in world.PAIRS}


def test_heldout_scenes_often_lack_the_partner() -> None:
    scenes = [s for _, s in world.heldout_scenes(400)]
    with_anchor = [s for s in scenes if any(s.has(a) for a, _ in world.PAIRS)]
    broken = [s for s in with_anchor if s.missing_partners]
    assert 0.35 < len(broken) / len(with_anchor) < 0.65
    first = world.conflict_scenes(5)
    assert all(s.missing_partners for _, s in first) and len(first) == 5


def test_captions_put_partners_after_anchors_and_use_chair_words() -> None:
    rng = random.Random(0)
    for _ in range(200):
        scene = world.train_scene(rng)
        names = list(scene.names)
        for anchor, partner in world.PAIRS:
            if anchor in names and partner in names:
                assert names.index(partner) == names.index(anchor) + 1
        cap = scene.caption(rng)
        assert cap.startswith("There is a ") and cap.endswith(f"{scene.background} background.")
    for cls in world.CLASSES:
        for word in cls.synonyms:
            assert INVERSE_SYNONYMS[word] == cls.name, word  # CHAIR's lexicon reads them
        assert cls.colour_name not in INVERSE_SYNONYMS  # colours never count as objects


def test_detailed_captions_give_colour_and_column() -> None:
    scene = world.Scene(
        (world.Placed("fork", 20, 60, 12, (0, 0, 0)), world.Placed("knife", 95, 20, 12, (0, 0, 0))),
        "gray",
        112,
    )
    assert scene.caption() == "There is a fork and a knife on a gray background."
    assert scene.caption(detail=True) == (
        "There is a yellow fork on the left and a green knife on the right on a gray background."
    )
    rng = random.Random(5)
    asked = [q for _ in range(200) for q in world.questions(world.train_scene(rng), rng)[:2]]
    for prompt, answer in asked:  # the prompts that ask for detail get the long form
        assert (" on the " in answer or " in the middle" in answer) == ("detail" in prompt)


def test_patch_labels_cover_every_object() -> None:
    for _, scene in world.heldout_scenes(50):
        labels = scene.patch_labels(8)
        assert len(labels) == 64
        for name in scene.names:
            assert labels.count(name) >= 1, (scene, name)
        assert labels.count(scene.background) >= 64 - 9 * len(scene.names)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lab_pope_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCID_CACHE", str(tmp_path / "a"))
    files = lab.question_files("lab:60")
    freq, co = lab.statistics()
    records = {s: [json.loads(x) for x in p.read_text().splitlines()] for s, p in files.items()}
    assert len({len(r) for r in records.values()}) == 1
    scenes = dict(world.heldout_scenes(60))
    baited = 0
    for split, recs in records.items():
        by_image: dict[str, list[dict]] = {}
        for r in recs:
            by_image.setdefault(r["image"], []).append(r)
        for image, qs in by_image.items():
            scene = scenes[int(image[4:9])]
            yes = [q["object"] for q in qs if q["label"] == "yes"]
            no = [q["object"] for q in qs if q["label"] == "no"]
            assert sorted(yes) == sorted(scene.names) and len(no) == len(yes)
            assert not any(scene.has(n) for n in no)
            absent = [c.name for c in world.CLASSES if not scene.has(c.name)]
            if split == "popular":  # the most frequent absent classes
                assert min(freq[n] for n in no) >= max(
                    (freq[c] for c in absent if c not in no), default=0
                )
            if split == "adversarial":
                assert set(scene.missing_partners) <= set(no)
                baited += bool(scene.missing_partners)
    assert baited > 10
    # Byte-identical when generated again elsewhere.
    monkeypatch.setenv("LUCID_CACHE", str(tmp_path / "b"))
    again = lab.question_files("lab:60")
    assert {s: _sha(p) for s, p in files.items()} == {s: _sha(p) for s, p in again.items()}
    assert _sha(lab.images_dir() / "lab_00007.png") == _sha(
        tmp_path / "a" / f"lab-world-v{world.WORLD_VERSION}" / "images" / "lab_00007.png"
    )


def test_lab_sets_are_data_of_the_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eval.chair.gt import load_gt_file, load_image_set
    from eval.jobs.runner import JobError
    from eval.jobs.settings import load_settings
    from eval.pope.data import load_questions

    monkeypatch.setenv("LUCID_CACHE", str(tmp_path))
    qs = load_questions("lab:8")
    assert set(qs) == set(lab.SPLITS)
    assert qs["random"].version.startswith("synthetic world v")
    assert load_image_set("lab:8") == list(range(8))
    gt = load_gt_file(lab.ground_truth_file("lab:8"))
    assert gt == {i: frozenset(s.names) for i, s in world.heldout_scenes(8)}
    assert lab.resolve_images("lab") == str(lab.images_dir())
    assert load_settings("pope", "pope-lab")["questions"] == "lab"
    assert load_settings("chair", "chair-lab")["ground_truth"]["file"] == "lab"
    with pytest.raises(JobError, match="lab:N"):
        lab.scenes_of("lab:zero")


def test_bootstrap_interval_and_paired_delta() -> None:
    units = [0, 1] * 50
    draws = resamples(len(units), 400, seed=0)
    mean = interval(units, lambda u: sum(u) / len(u), draws)
    assert mean.value == 0.5 and mean.low < 0.45 and mean.high > 0.55
    same = interval(list(zip(units, units, strict=True)), lambda ps: 0.0, draws)
    assert same.low == same.high == 0.0
    assert resamples(10, 3, seed=1) == resamples(10, 3, seed=1)
