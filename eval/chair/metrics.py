"""CHAIR_s, CHAIR_i, recall and length (docs: evaluators.md §2.5).

Definitions as in ``LisaAnne/Hallucination`` ``6e4d33c4`` ``utils/chair.py`` with the
recall of Maxlinn/CHAIR-metric-standalone and the ``Len`` of OPERA ``61426efe``
``chair.py``:

- CHAIR_i = hallucinated mentions / all mentions, pooled over captions;
- CHAIR_s = captions with at least one hallucinated mention / captions;
- Recall = sum of |distinct node words mentioned that are in GT| / sum of |GT|;
- Len = mean number of raw words (tokens after merging, punctuation included).

Values are fractions; upstream prints them x100 with one decimal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from eval.chair.parser import ParsedCaption


class Parser(Protocol):
    def parse(self, caption: str) -> ParsedCaption: ...


class MissingGroundTruth(KeyError):
    pass


def score_captions(
    captions: Sequence[tuple[int, str]],
    gt: Mapping[int, frozenset[str]],
    parser: Parser,
    *,
    keep_details: bool = False,
) -> dict[str, Any]:
    """Score ``(image_id, caption)`` pairs against ground-truth sets."""
    missing = sorted({i for i, _ in captions if i not in gt})
    if missing:
        # Upstream silently treats unknown images as having no objects; that inflates CHAIR.
        raise MissingGroundTruth(f"no ground truth for {len(missing)} image(s), e.g. {missing[:5]}")
    n_mentions = n_halluc = n_halluc_caps = recall_hits = gt_total = raw_total = 0
    details = []
    for image_id, caption in captions:
        parsed = parser.parse(caption)
        truth = gt[image_id]
        halluc = [(w, n) for w, n in zip(parsed.words, parsed.node_words, strict=True)
                  if n not in truth]  # fmt: skip
        n_mentions += len(parsed.words)
        n_halluc += len(halluc)
        n_halluc_caps += bool(halluc)
        recall_hits += len(set(parsed.node_words) & truth)
        gt_total += len(truth)
        raw_total += len(parsed.raw_words)
        if keep_details:
            details.append(
                {
                    "image_id": image_id,
                    "mentions": [
                        list(p) for p in zip(parsed.words, parsed.node_words, strict=True)
                    ],
                    "hallucinated": [list(p) for p in halluc],
                    "ground_truth": sorted(truth),
                }
            )
    n = len(captions)
    out: dict[str, Any] = {
        "chair_s": n_halluc_caps / n if n else 0.0,
        "chair_i": n_halluc / n_mentions if n_mentions else 0.0,
        "recall": recall_hits / gt_total if gt_total else 0.0,
        "avg_len": raw_total / n if n else 0.0,
        "captions": n,
        "mentions": n_mentions,
        "hallucinated_mentions": n_halluc,
        "hallucinated_captions": n_halluc_caps,
    }
    if keep_details:
        out["details"] = details
    return out
