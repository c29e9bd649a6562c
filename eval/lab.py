"""Synthetic POPE and CHAIR on the held-out scenes of the synthetic world.

The sets are data of the ordinary jobs: ``questions: lab`` (POPE), ``image_set: lab`` and
``ground_truth: {file: lab}`` (CHAIR), ``images: lab`` (both); ``lab:N`` takes the first
``N`` held-out scenes (default :data:`DEFAULT_SCENES`). Files are generated on first use
into ``build/lab-world-v<version>/`` and are byte-identical on every machine.

POPE (Li et al., EMNLP 2023, §3): per scene, one question per present object (label
yes) and as many negatives (label no) per split, from the classes absent from the scene:

- random: drawn uniformly (seeded per scene);
- popular: the most frequent classes of the training scenes;
- adversarial: the classes that co-occur most with the scene's objects
  (``max_a P(c | a)`` over present ``a``, estimated on training scenes).

CHAIR (Rohrbach et al., EMNLP 2018): each scene's ground truth is its object classes;
captions are parsed with the standard CHAIR lexicon, which contains every synonym the
world uses (:data:`decoding.testing.world.CLASSES`).
"""

from __future__ import annotations

import functools
import json
import os
import random
from pathlib import Path

from decoding.testing import world
from eval.jobs.runner import JobError

DEFAULT_SCENES = 100
SPLITS = ("random", "popular", "adversarial")
IMAGE_TEMPLATE = "lab_{image_id:05d}.png"


def is_lab(spec: object) -> bool:
    return isinstance(spec, str) and (spec == "lab" or spec.startswith("lab:"))


def scenes_of(spec: str) -> int:
    """``lab`` -> the default count, ``lab:N`` -> N."""
    if spec == "lab":
        return DEFAULT_SCENES
    try:
        n = int(spec.split(":", 1)[1])
    except ValueError:
        n = 0
    if n < 1:
        raise JobError(f"lab set {spec!r}: expected lab or lab:N with N >= 1")
    return n


def root() -> Path:
    base = os.environ.get("LUCID_CACHE") or Path(__file__).resolve().parents[1] / "build"
    return Path(base) / f"lab-world-v{world.WORLD_VERSION}"


def images_dir() -> Path:
    return root() / "images"


@functools.lru_cache(maxsize=1)
def statistics() -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Class frequencies and co-occurrence of the training scenes."""
    return world.frequencies(), world.cooccurrence()


def negatives(scene: world.Scene, index: int, k: int) -> dict[str, list[str]]:
    """The ``k`` negative classes of each split for ``scene``."""
    freq, co = statistics()
    absent = [c.name for c in world.CLASSES if not scene.has(c.name)]
    rng = random.Random(index)
    popular = sorted(absent, key=lambda c: (-freq[c], c))
    adversarial = sorted(absent, key=lambda c: (-max(co[a, c] for a in scene.names), -freq[c], c))
    return {
        "random": rng.sample(absent, min(k, len(absent))),
        "popular": popular[:k],
        "adversarial": adversarial[:k],
    }


def pope_records(n: int) -> dict[str, list[dict]]:
    """POPE-format question records of each split over the first ``n`` held-out scenes."""
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for index, scene in world.heldout_scenes(n):
        image = IMAGE_TEMPLATE.format(image_id=index)
        negs = negatives(scene, index, len(scene.names))
        for split in SPLITS:
            pairs = [(c, "yes") for c in scene.names] + [(c, "no") for c in negs[split]]
            for name, label in pairs:
                out[split].append(
                    {
                        "question_id": len(out[split]) + 1,
                        "image": image,
                        "text": world.presence_question(name),
                        "label": label,
                        "object": name,
                    }
                )
    return out


def _write(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)


def ensure(n: int) -> Path:
    """Write the images and the POPE and CHAIR files of ``n`` scenes (if missing)."""
    base = root()
    images = images_dir()
    images.mkdir(parents=True, exist_ok=True)
    truth = {}
    for index, scene in world.heldout_scenes(n):
        path = images / IMAGE_TEMPLATE.format(image_id=index)
        if not path.exists():
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.png")
            scene.draw().save(tmp, "PNG")
            tmp.replace(path)
        truth[str(index)] = sorted(scene.names)
    for split, records in pope_records(n).items():
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        _write(base / f"pope-{n}" / f"lab_pope_{split}.jsonl", lines)
    _write(base / f"chair-{n}" / "image_set.txt", "".join(f"{i}\n" for i in range(n)))
    _write(base / f"chair-{n}" / "ground_truth.json", json.dumps(truth, sort_keys=True) + "\n")
    return base


def question_files(spec: str) -> dict[str, Path]:
    n = scenes_of(spec)
    base = ensure(n)
    return {s: base / f"pope-{n}" / f"lab_pope_{s}.jsonl" for s in SPLITS}


def image_set_file(spec: str) -> Path:
    n = scenes_of(spec)
    return ensure(n) / f"chair-{n}" / "image_set.txt"


def ground_truth_file(spec: str) -> Path:
    n = scenes_of(spec)
    return ensure(n) / f"chair-{n}" / "ground_truth.json"


def resolve_images(value: str | None) -> str | None:
    """``images: lab`` -> the generated folder."""
    return str(images_dir()) if value == "lab" else value
