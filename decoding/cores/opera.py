"""OPERA: the over-trust score of a candidate, its penalty, and retrospection (rollback).

Paper: Huang et al., "OPERA: Alleviating Hallucination in Multi-Modal Large Language
Models via Over-Trust Penalty and Retrospection-Allocation", CVPR 2024, arXiv 2311.17911.
Official code: ``shikiw/OPERA`` commit ``61426efe``,
``transformers-4.29.2/src/transformers/generation/utils.py`` (``opera_beam_search``,
lines 3116-3674): attention bookkeeping ``:3348-3415``, score ``:3423-3436``, penalty
``:3431-3449``, rollback ``:3452-3552``.

Attention: the LAST decoder layer, max over heads, each row normalised to sum 1. For a
candidate ``c`` appended after ``t`` generated tokens, the local window ``W`` is the
``(t+1) x (t+1)`` block of rows and columns of the generated tokens plus ``c`` (all
generated tokens: the official ``window_size`` only bounds the history buffers).

* Column score ``s_j = 1e-7 * prod_{i >= j} (sigma * W[i, j])``; over-trust score
  ``phi = max_j s_j`` and its location ``argmax_j`` (window index = generated-token index).
* Penalty with weight ``alpha``: while the window has at most 10 tokens the candidate
  gets a BONUS ``alpha * (its attention mass on the image tokens)``; afterwards
  ``-alpha * phi``.
* Rollback: each step records, per beam, the mode of the locations over its candidates;
  the current location ``r`` is the mode of those over beams. If every beam's history
  holds ``r`` more than ``threshold`` times and ``r >= 10``, decoding returns to
  generated position ``r + 1`` (or ``r`` if ``r + 1`` was already used ``num_candidates``
  times; none if ``r`` was too), at most ``window`` positions back, and re-chooses that
  token excluding the (beam, token) pairs chosen there before. A target at or past the
  current position is clamped to the last decided position (official: the restore reads
  the second-to-last saved state, ``:3478-3486``, which is that position then).

Deviations from the official code, and why:

* Scores are computed in float64 log space (official: a float16 product that overflows or
  underflows on long windows, ``:3424-3428``).
* Ties in modes and argmaxes resolve to the smallest value/index (``torch.mode`` on ties
  is unspecified).
* The location history follows each hypothesis through beam reordering (official: the
  history is indexed by beam slot and not reordered, so a slot's history mixes
  hypotheses).
* Rejected (beam, token) pairs are excluded (``-inf``); the official code sets them to
  the row minimum after a shift, which leaves them a tiny probability. Rejected sets of
  later positions are cleared on rollback (official clears the wrong list entries).
* No bare ``try/except`` around the rollback logic (official ``:3458, 3555``).
"""

from __future__ import annotations

import math
from collections import Counter

import torch

#: Window size (generated tokens incl. the candidate) up to which the image bonus applies.
BONUS_TOKENS = 10
#: Smallest location that may trigger a rollback.
MIN_ROLLBACK_LOCATION = 10
#: Constant factor of the column product.
PRODUCT_SCALE = 1e-7


def normalize_rows(attn: torch.Tensor) -> torch.Tensor:
    """Divide each row (last axis) by its sum (rows summing to 0 stay 0)."""
    total = attn.sum(dim=-1, keepdim=True)
    return attn / torch.where(total == 0, torch.ones_like(total), total)


def overtrust_scores(
    window: torch.Tensor, scale_factor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Over-trust score ``phi`` and location of each window.

    ``window``: ``(..., t, t)`` lower-triangular block of row-normalised attention
    (rows = queries). Returns ``(phi, location)`` of shape ``(...)``, float64 / int64.
    """
    w = window.double()
    t = w.shape[-1]
    logs = torch.log(scale_factor * w)  # log 0 = -inf: a zero factor zeroes the product
    rows = torch.arange(t).unsqueeze(-1)
    cols = torch.arange(t).unsqueeze(0)
    below = (rows >= cols).to(w.device)  # i >= j: the diagonal and later tokens
    col_log = torch.where(below, logs, torch.zeros_like(logs)).sum(dim=-2)
    col_log = col_log + math.log(PRODUCT_SCALE)
    best = col_log.max(dim=-1, keepdim=True).values
    first = (col_log == best).double().argmax(dim=-1)  # first maximal column
    return best.squeeze(-1).exp(), first


def candidate_penalty(
    phi: torch.Tensor, image_mass: torch.Tensor, window_len: int, alpha: float
) -> torch.Tensor:
    """Amount ADDED to each candidate's score: ``+alpha*image_mass`` while ``window_len``
    (generated tokens incl. the candidate) is at most 10, else ``-alpha*phi``."""
    if alpha == 0.0:
        return torch.zeros_like(phi, dtype=torch.float64)
    if window_len <= BONUS_TOKENS:
        return alpha * image_mass.double()
    return -alpha * phi.double()


def mode(values: list[int]) -> int:
    """Most frequent value; the smallest one on ties."""
    counts = Counter(values)
    top = max(counts.values())
    return min(v for v, n in counts.items() if n == top)


class Retrospection:
    """Bookkeeping of the rollback rule for one request.

    ``history[b]`` is the list of per-step locations of hypothesis ``b`` (follows beam
    reordering); ``used[pos]`` counts rollbacks to generated position ``pos``;
    ``rejected[pos]`` holds the (source beam, token) pairs already tried at ``pos``.
    """

    def __init__(self, num_beams: int, threshold: int, num_candidates: int, window: int) -> None:
        self.threshold = threshold
        self.num_candidates = num_candidates
        self.window = window
        self.history: list[list[int]] = [[] for _ in range(num_beams)]
        self.used: Counter[int] = Counter()
        self.rejected: dict[int, set[tuple[int, int]]] = {}

    def record(self, locations: torch.Tensor) -> int:
        """Add one step: ``locations`` is ``(beams, candidates)``; returns ``r``."""
        per_beam = [mode(row.tolist()) for row in locations]
        for b, loc in enumerate(per_beam):
            self.history[b].append(loc)
            if len(self.history[b]) > self.window:
                self.history[b].pop(0)
        return mode(per_beam)

    def reorder(self, beam_idx: list[int]) -> None:
        self.history = [list(self.history[i]) for i in beam_idx]

    def target(self, r: int, window_len: int) -> int | None:
        """Position to roll back to for location ``r`` (or None); counts the rollback."""
        if r < MIN_ROLLBACK_LOCATION:
            return None
        if not all(h.count(r) > self.threshold for h in self.history):
            return None
        # A target at or past the current position is clamped to the last decided one
        # (window_len - 2), which is where the official code effectively returns then.
        pos = min(r + 1, window_len - 2)
        if self.used[pos] >= self.num_candidates:
            pos = r
            if self.used[pos] >= self.num_candidates:
                return None
        if window_len - pos > self.window + 1:
            pos = max(1, window_len - self.window - 1)
        self.used[pos] += 1
        return pos

    def reject(self, pos: int, pairs: list[tuple[int, int]]) -> set[tuple[int, int]]:
        """Add ``pairs`` to the rejected set of ``pos``, forget later positions, and
        return the set to exclude at ``pos``."""
        for later in [p for p in self.rejected if p > pos]:
            del self.rejected[later]
        self.rejected.setdefault(pos, set()).update(pairs)
        return set(self.rejected[pos])

    def snapshot(self) -> list[list[int]]:
        return [list(h) for h in self.history]

    def restore(self, history: list[list[int]]) -> None:
        self.history = [list(h) for h in history]
