"""Beam-search bookkeeping with the semantics of ``transformers`` 5 ``generate``.

OPERA is a beam search (its official code drives ``transformers`` 4.29's
``BeamSearchScorer``); the reference engine runs it with this module so that, with the
penalty off, it reproduces ``generate(num_beams=k)`` token for token. Semantics
(``transformers`` 5.x ``GenerationMixin._beam_search``, default ``length_penalty=1.0``,
``early_stopping=False``):

* running scores start at ``[0, -1e9, ...]`` (all beams hold the same prompt);
* each step: ``acc = logprobs + running_score``, the top ``max(2, 1 + n_eos) * k``
  continuations over all beams; a continuation "finishes" if it emits EOS or reaches
  ``max_new_tokens``; the next running beams are the best ``k`` unfinished ones;
* finished continuations ranked within the first ``k`` are scored
  ``acc / generated_len ** length_penalty`` and merged into the ``k`` best finished;
* stop when every continuation finished, or when all ``k`` finished slots are filled and
  the best running score (length-normalised at the current length) cannot beat the worst
  finished one; the answer is the best finished hypothesis.

Deviation from the OPERA code (4.29 scorer): the length penalty divides by the GENERATED
length, not the full sequence length (prompt included), as ``transformers`` does since 4.3x.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

NEG = -1.0e9


@dataclass
class BeamState:
    num_beams: int
    running: list[list[int]]
    running_scores: torch.Tensor  # (k,) float32
    finished: list[list[int]] = field(default_factory=list)
    finished_scores: torch.Tensor | None = None  # (k,) float32, NEG where empty
    finished_flags: torch.Tensor | None = None  # (k,) bool
    improvable: bool = True
    done: bool = False
    # Per-token step scores of each running / finished hypothesis (reported to callers).
    running_steps: list[list[float]] = field(default_factory=list)
    finished_steps: list[list[float]] = field(default_factory=list)

    @classmethod
    def start(cls, num_beams: int) -> BeamState:
        scores = torch.full((num_beams,), NEG, dtype=torch.float32)
        scores[0] = 0.0
        return cls(
            num_beams=num_beams,
            running=[[] for _ in range(num_beams)],
            running_scores=scores,
            finished=[[] for _ in range(num_beams)],
            finished_scores=torch.full((num_beams,), NEG, dtype=torch.float32),
            finished_flags=torch.zeros(num_beams, dtype=torch.bool),
            running_steps=[[] for _ in range(num_beams)],
            finished_steps=[[] for _ in range(num_beams)],
        )

    def clone(self) -> BeamState:
        return BeamState(
            num_beams=self.num_beams,
            running=[list(x) for x in self.running],
            running_scores=self.running_scores.clone(),
            finished=[list(x) for x in self.finished],
            finished_scores=self.finished_scores.clone(),
            finished_flags=self.finished_flags.clone(),
            improvable=self.improvable,
            done=self.done,
            running_steps=[list(x) for x in self.running_steps],
            finished_steps=[list(x) for x in self.finished_steps],
        )

    def best(self) -> tuple[list[int], list[float]]:
        """Tokens and per-step scores of the answer (best finished hypothesis)."""
        i = int(torch.argmax(self.finished_scores))
        if not bool(self.finished_flags[i]):
            return list(self.running[0]), list(self.running_steps[0])
        return list(self.finished[i]), list(self.finished_steps[i])


def beam_step(
    state: BeamState,
    logprobs: torch.Tensor,
    eos_ids: set[int],
    max_new_tokens: int,
    length_penalty: float = 1.0,
) -> tuple[BeamState, list[int], list[int]]:
    """Advance by one token. ``logprobs``: ``(k, vocab)`` per-beam step scores (``-inf``
    for excluded tokens). Returns the new state and, per new running beam, its source
    beam and token (to reorder caches)."""
    k = state.num_beams
    vocab = logprobs.shape[-1]
    step = logprobs.float()
    acc = (step + state.running_scores[:, None]).reshape(-1)
    keep = max(2, 1 + len(eos_ids)) * k
    vals, idx = torch.topk(acc, keep)
    src = (idx // vocab).tolist()
    tok = (idx % vocab).tolist()
    gen_len = len(state.running[0]) + 1
    hits = torch.tensor([t in eos_ids or gen_len >= max_new_tokens for t in tok])

    running_vals = vals + hits.float() * NEG
    nxt = torch.topk(running_vals, k).indices.tolist()
    new = state.clone()
    new.running = [state.running[src[i]] + [tok[i]] for i in nxt]
    new.running_steps = [state.running_steps[src[i]] + [float(step[src[i], tok[i]])] for i in nxt]
    new.running_scores = running_vals[nxt].clone()

    cand = vals / (gen_len**length_penalty)
    if not state.improvable:
        cand = cand + NEG
    top_mask = torch.arange(keep) < k
    just = hits & top_mask
    cand = cand + (~just).float() * NEG
    merged_scores = torch.cat([state.finished_scores, cand])
    merged_flags = torch.cat([state.finished_flags, just])
    merged = state.finished + [state.running[src[i]] + [tok[i]] for i in range(keep)]
    merged_steps = state.finished_steps + [
        state.running_steps[src[i]] + [float(step[src[i], tok[i]])] for i in range(keep)
    ]
    best = torch.topk(merged_scores, k).indices.tolist()
    new.finished = [merged[i] for i in best]
    new.finished_steps = [merged_steps[i] for i in best]
    new.finished_scores = merged_scores[best].clone()
    new.finished_flags = merged_flags[best].clone()

    best_running = new.running_scores[0] / (gen_len**length_penalty)
    worst = torch.where(
        new.finished_flags, new.finished_scores.min(), torch.full_like(new.finished_scores, NEG)
    )
    new.improvable = state.improvable and bool(torch.any(best_running > worst))
    new.done = (not new.improvable) or bool(hits.all())
    return new, [src[i] for i in nxt], [tok[i] for i in nxt]
