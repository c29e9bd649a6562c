"""POPE metrics from confusion counts ("yes" is the positive class).

Formulas as in RUCAIBox/POPE ``3df3ba1b`` ``evaluate.py`` (docs: evaluators.md §1.6).
The ``other`` cells (answers the exact-match rule rejects) count in N for accuracy
and yes-ratio but in no precision/recall cell, as in lmms-eval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from eval.pope.parsers import Cell

METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


@dataclass(frozen=True)
class Confusion:
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    other: int = 0

    @classmethod
    def from_cells(cls, cells: Iterable[Cell]) -> Confusion:
        counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0, "other": 0}
        for c in cells:
            counts[c] += 1
        return cls(**counts)

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn + self.other


def _div(a: float, b: float) -> float:
    # An undefined ratio (e.g. precision with no "yes" answers) is reported as 0, as upstream.
    return a / b if b else 0.0


def compute_metrics(c: Confusion) -> dict[str, float | int]:
    """Accuracy, precision, recall, F1, yes-ratio (fractions) and the counts."""
    precision = _div(c.tp, c.tp + c.fp)
    recall = _div(c.tp, c.tp + c.fn)
    return {
        "accuracy": _div(c.tp + c.tn, c.n),
        "precision": precision,
        "recall": recall,
        "f1": _div(2 * precision * recall, precision + recall),
        "yes_ratio": _div(c.tp + c.fp, c.n),
        **asdict(c),
        "n": c.n,
    }


def mean_over_splits(per_split: Mapping[str, Mapping[str, float | int]]) -> dict[str, float]:
    """Unweighted mean of each metric over splits (LLaVA's single POPE number is mean F1)."""
    if not per_split:
        return {}
    return {k: sum(float(m[k]) for m in per_split.values()) / len(per_split) for k in METRIC_KEYS}
