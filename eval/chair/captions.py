"""Read caption files: this project's raw captions, OPERA's logs, COCO result lists.

- this project's JSONL (``eval chair`` jobs): ``strategy``, ``image_id``, ``answer``;
- OPERA ``61426efe`` ``chair_eval.py`` output and its released logs: JSONL with
  ``image_id`` and ``caption`` (the keys are options, as ``chair.py --image_id_key
  --caption_key`` upstream);
- a COCO results JSON array ``[{"image_id", "caption"}, ...]``.
"""

from __future__ import annotations

from pathlib import Path

from eval.chair.gt import coco_id
from eval.io import read_records


def load_captions(
    path: str | Path, *, image_id_key: str = "image_id", caption_key: str = "caption"
) -> dict[str, list[tuple[int, str]]]:
    """``{group: [(image_id, caption), ...]}``; group is the strategy or the file name."""
    out: dict[str, list[tuple[int, str]]] = {}
    for n, r in enumerate(read_records(path), 1):
        if r.get("error"):
            continue  # a failed request in a job log; re-running the job redoes it
        key = caption_key if caption_key in r or "strategy" not in r else "answer"
        try:
            image_id, caption = coco_id(r[image_id_key]), str(r[key])
        except KeyError as exc:
            raise ValueError(f"{path}: record {n} has no {exc} key") from None
        group = str(r.get("strategy") or Path(path).name)
        out.setdefault(group, []).append((image_id, caption))
    return out
