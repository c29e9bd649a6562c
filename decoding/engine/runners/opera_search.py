"""OPERA's beam search over engine requests: the reference procedure, step for step.

This is :func:`decoding.reference.opera.opera_generate` with every model call replaced by
engine requests (:class:`Oracle`); the bookkeeping is the same code
(:func:`decoding.cores.beam.beam_step`, :class:`decoding.cores.opera.Retrospection`,
:func:`decoding.cores.opera.candidate_penalty`). Paper: Huang et al., CVPR 2024, arXiv
2311.17911; official code ``shikiw/OPERA`` @ ``61426efe`` (``opera_beam_search``).

Per step (``t`` tokens generated, ``k`` beams):

1. Each beam's top ``num_candidates`` tokens and log-probabilities are already known (the
   prompt's request at ``t = 0``, else the beam's own look-ahead).
2. With the penalty or rollback on, every (beam, candidate) becomes one look-ahead request
   ``prompt + beam + [candidate]`` (identical sequences once); the engine returns the
   candidate's last-layer attention row over the answer, its image mass, and the
   continuation's own candidates (:mod:`decoding.engine.worker.opera`). The over-trust
   score uses each beam's running column sums of ``log(scale_factor * W)`` plus the
   candidate's row: :func:`decoding.cores.opera.overtrust_scores` computed incrementally
   (same sums; only the addition order differs).
3. Rollback restores the state saved at the target position (beams, column sums, location
   histories); the restored beams are re-submitted as requests for their full-vocabulary
   top (``2k`` plus their excluded tokens, all a beam step can use), which the prefix
   cache answers without recomputing the prompt, and the position is re-decided without
   penalty, excluding the (beam, token) pairs chosen there before.
4. After the beam step the new beams' data come from the chosen look-aheads (no re-run);
   after a rollback, or without look-aheads, from one request per new beam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from decoding.cores import opera as core
from decoding.cores.beam import BeamState, beam_step
from decoding.engine.worker.opera import Probe

Seq = tuple[int, ...]


@dataclass
class Top:
    """A sequence's next-token candidates (ids, full-vocabulary log-probabilities)."""

    ids: list[int]
    logprobs: list[float]


class Oracle(Protocol):
    """The engine, as the search needs it."""

    async def probes(self, seqs: list[Seq], rollback: bool) -> dict[Seq, Probe]:
        """Look-aheads: the last token's attention row and the next candidates
        (``rollback``: requested to resume after a rollback, for the metrics)."""
        ...

    async def tops(self, seqs: list[Seq], counts: list[int], rollback: bool) -> list[Top]:
        """The top ``counts[i]`` next tokens of ``seqs[i]`` (plain requests)."""
        ...


@dataclass
class SearchResult:
    state: BeamState
    steps: int
    rollbacks: list[dict[str, int]] = field(default_factory=list)


def column_logs(past: torch.Tensor, row: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """Column sums of ``log(scale_factor * W)`` over the rows at or below the diagonal,
    after appending ``row`` (length ``t + 1``) to a window whose sums are ``past``."""
    return torch.nn.functional.pad(past, (0, 1)) + torch.log(scale_factor * row)


def overtrust(
    past: torch.Tensor, row: torch.Tensor, scale_factor: float
) -> tuple[float, int, torch.Tensor]:
    """``(phi, location, sums)`` of a candidate: as
    :func:`decoding.cores.opera.overtrust_scores` of the beam's window plus ``row``."""
    sums = column_logs(past, row, scale_factor)
    col = sums + math.log(core.PRODUCT_SCALE)
    best = col.max()
    first = int((col == best).double().argmax())
    return float(best.exp()), first, sums


def _tops_of(probe: Probe) -> Top:
    return Top(probe.ids, probe.logprobs)


async def opera_search(
    oracle: Oracle,
    params: Any,
    stop: set[int],
    max_new_tokens: int,
    vocab: int,
    on_rollback: Any = None,
) -> SearchResult:
    """Run OPERA; ``params`` are validated :class:`~decoding.strategies.opera.OPERAParams`."""
    k, n = params.num_beams, params.num_candidates
    use_attn = params.alpha != 0.0 or params.rollback
    keep = max(2, 1 + len(stop)) * k
    state = BeamState.start(k)
    heads = (await oracle.tops([()], [n], False)) * k
    # Per beam: column sums of log(scale * W) over its generated tokens' rows.
    sums = [torch.zeros(0, dtype=torch.float64) for _ in range(k)]
    retro = core.Retrospection(k, params.threshold, n, params.window) if params.rollback else None
    snaps: dict[int, dict[str, Any]] = {}
    result = SearchResult(state, 0)
    t = 0
    while True:
        cands = torch.tensor([h.ids for h in heads], dtype=torch.long)
        pick = torch.tensor([h.logprobs for h in heads], dtype=torch.float32)
        scores = torch.full((k, vocab), float("-inf"), dtype=torch.float32)
        loc = None
        looked: dict[Seq, Probe] = {}
        if use_attn:
            seqs = [tuple(state.running[b]) + (int(c),) for b in range(k) for c in cands[b]]
            looked = await oracle.probes(list(dict.fromkeys(seqs)), False)
            phi = torch.zeros(k, n, dtype=torch.float64)
            mass = torch.zeros(k, n, dtype=torch.float64)
            loc = torch.zeros(k, n, dtype=torch.long)
            for i, seq in enumerate(seqs):
                b, j = divmod(i, n)
                probe = looked[seq]
                phi[b, j], loc[b, j], _ = overtrust(sums[b], probe.row, params.scale_factor)
                mass[b, j] = probe.image_mass
            penalty = core.candidate_penalty(phi, mass, t + 1, params.alpha)
            pick = (pick.double() + penalty).float()
        scores.scatter_(1, cands, pick)
        rolled = False
        if retro is not None:
            r = retro.record(loc)
            snaps[t] = {"state": state.clone(), "sums": list(sums), "hist": retro.snapshot()}
            for old in [s for s in snaps if s < t - params.window - 1]:
                del snaps[old]
            pos = retro.target(r, t + 1)
            if pos is not None and pos in snaps:
                result.rollbacks.append({"from": t, "to": pos, "location": r})
                if on_rollback is not None:
                    on_rollback()
                snap = snaps[pos]
                for later in [s for s in snaps if s > pos]:
                    del snaps[later]
                state = snap["state"].clone()
                sums = list(snap["sums"])
                retro.restore(snap["hist"])
                excluded = retro.reject(pos, snap.get("decision", []))
                counts = [keep + sum(1 for b, _ in excluded if b == beam) for beam in range(k)]
                tops = await oracle.tops([tuple(s) for s in state.running], counts, True)
                scores = torch.full((k, vocab), float("-inf"), dtype=torch.float32)
                for b, top in enumerate(tops):
                    scores[b, top.ids] = torch.tensor(top.logprobs, dtype=torch.float32)
                for b, tok in excluded:
                    scores[b, tok] = float("-inf")
                t = pos
                rolled = True
        state, src, toks = beam_step(state, scores, stop, max_new_tokens)
        if retro is not None:
            snaps[t]["decision"] = list(zip(src, toks, strict=True))
            retro.reorder(src)
        t += 1
        if state.done:
            break
        new = [tuple(s) for s in state.running]
        if use_attn:
            missing = [s for s in dict.fromkeys(new) if s not in looked]
            if missing:
                looked.update(await oracle.probes(missing, rolled))
            rows = [looked[s].row for s in new]
            sums = [
                column_logs(sums[b], row, params.scale_factor)
                for b, row in zip(src, rows, strict=True)
            ]
            heads = [_tops_of(looked[s]) for s in new]
        else:
            unique = list(dict.fromkeys(new))
            tops = await oracle.tops(unique, [n] * len(unique), False)
            got = dict(zip(unique, tops, strict=True))
            heads = [got[s] for s in new]
    result.state, result.steps = state, t
    return result
