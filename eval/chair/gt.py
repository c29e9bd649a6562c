"""Ground-truth object sets per image, and the image sets CHAIR is computed on.

Ground truth (docs: evaluators.md §2.1; ``LisaAnne/Hallucination`` ``6e4d33c4``
``utils/chair.py``, OPERA ``61426efe`` ``chair.py``): for each image, the category names
of its COCO 2014 instance annotations plus every object the caption parser finds in its
reference captions. The caption-derived part depends on the parser variant, so a
precomputed file only reproduces the variant that built it. Upstream builds the sets for
all 123,287 train+val images; an image's set depends only on its own annotations, so
building them for the scored images alone gives the same sets, much faster.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from eval.io import DATA_DIR, read_bytes

IMAGESET_DIR = DATA_DIR / "chair" / "imagesets"

#: Named image sets shipped with the evaluator (one COCO val2014 image id per line).
IMAGE_SETS: dict[str, str] = {
    # OPERA's released LLaVA-1.5 / MiniGPT-4 / Shikra logs (OPERA paper Table 1).
    "opera-llava15": "opera_llava15_minigpt4_shikra.txt",
    # OPERA's released InstructBLIP logs (a different set).
    "opera-instructblip": "opera_instructblip.txt",
}

#: Upstream file names of the COCO 2014 annotations, train and val.
COCO_FILES = {
    "instances": ("instances_train2014.json", "instances_val2014.json"),
    "captions": ("captions_train2014.json", "captions_val2014.json"),
}

GroundTruth = dict[int, frozenset[str]]


class GroundTruthError(ValueError):
    pass


def load_image_set(spec: str) -> list[int]:
    """Image ids of a named set, ``pope-coco`` (the 500 POPE COCO images, as DAMRO), or a
    file with one id (or COCO file name) per line."""
    from eval import lab

    if lab.is_lab(spec):  # the synthetic world's held-out scenes
        spec = str(lab.image_set_file(spec))
    elif spec == "pope-coco":
        from eval.pope.data import load_question_set

        ids = [coco_id(q.image) for q in load_question_set("coco-current")["random"].questions]
        return list(dict.fromkeys(ids))
    path = IMAGESET_DIR / IMAGE_SETS[spec] if spec in IMAGE_SETS else Path(spec)
    if not path.exists():
        raise GroundTruthError(
            f"image set {spec!r} is neither a file nor one of: "
            f"{', '.join([*IMAGE_SETS, 'pope-coco'])}"
        )
    lines = read_bytes(path).decode().splitlines()
    return [coco_id(line.strip()) for line in lines if line.strip() and not line.startswith("#")]


_ID_RE = re.compile(r"(\d+)(?:\.\w+)?$")


def coco_id(name: str | int) -> int:
    """``COCO_val2014_000000310196.jpg`` (or ``310196``) -> 310196."""
    if isinstance(name, int):
        return name
    m = _ID_RE.search(name.strip())
    if not m:
        raise GroundTruthError(f"cannot read an image id from {name!r}")
    return int(m.group(1))


def gt_file_variants(path: str | Path) -> list[str]:
    """Variant names of a two-variant ground-truth file ([] for a plain file)."""
    data: dict[str, Any] = json.loads(read_bytes(path))
    first = next(iter(data.values()), [])
    return sorted(first) if isinstance(first, dict) else []


def load_gt_file(path: str | Path, *, variant: str = "lemmatize_opera") -> GroundTruth:
    """A precomputed ``{"<image_id>": [objects]}`` file (optionally gzip-compressed).

    Files holding both variants per image (``{"<id>": {"lemmatize_opera": [...],
    "singularize_maxlinn": [...]}}``) are read with ``variant``.
    """
    data: dict[str, Any] = json.loads(read_bytes(path))
    gt: GroundTruth = {}
    for key, objs in data.items():
        if isinstance(objs, dict):
            if variant not in objs:
                raise GroundTruthError(f"{path}: no {variant!r} variant (has {sorted(objs)})")
            objs = objs[variant]
        gt[int(key)] = frozenset(objs)
    return gt


def gt_from_coco(
    annotations_dir: str | Path, image_ids: Iterable[int], parse_caption: Any
) -> GroundTruth:
    """Build ground truth from COCO 2014 annotation files with ``pycocotools``.

    Uses every one of the four upstream files that exists in ``annotations_dir``;
    at least one instances and one captions file must be there (val2014 images only
    need the val files). ``parse_caption(text)`` returns a :class:`ParsedCaption`.
    """
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise GroundTruthError(
            "COCO annotations need pycocotools: pip install pycocotools"
        ) from None
    root = Path(annotations_dir)
    wanted = set(image_ids)
    gt: dict[int, set[str]] = {i: set() for i in wanted}
    for kind, names in COCO_FILES.items():
        paths = [root / n for n in names if (root / n).exists()]
        if not paths:
            raise GroundTruthError(
                f"{root}: none of {', '.join(names)} found; download "
                "annotations_trainval2014.zip from cocodataset.org and unzip it"
            )
        for path in paths:
            coco = COCO(str(path))
            ids = [i for i in coco.getImgIds() if i in wanted]
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=ids)):
                if kind == "instances":
                    gt[ann["image_id"]].add(coco.loadCats(ann["category_id"])[0]["name"])
                else:
                    gt[ann["image_id"]].update(parse_caption(ann["caption"]).node_words)
    return {i: frozenset(objs) for i, objs in gt.items()}


def save_gt_file(gt: Mapping[int, Iterable[str]], path: str | Path) -> None:
    data = {str(i): sorted(objs) for i, objs in sorted(gt.items())}
    Path(path).write_text(json.dumps(data, separators=(",", ":")) + "\n")
