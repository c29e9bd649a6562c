"""The contrastive rule shared by VCD, AVC and DAMRO, and the token choice after it.

Rule (Leng et al., "Mitigating Object Hallucinations in LVLMs through Visual Contrastive
Decoding", CVPR 2024, arXiv 2311.16922; official code ``DAMO-NLP-SG/VCD`` at commit
``d6568ff8``, ``vcd_utils/vcd_sample.py:150-161``)::

    cutoff  = log(beta) + max_v l[v]                     # adaptive plausibility constraint
    scores  = (1 + alpha) * l - alpha * l_contrast
    scores[v] = -inf  where  l[v] < cutoff               # computed on the ORIGINAL logits

then the usual warpers (temperature, top-p) and a greedy or multinomial choice.
AVC (``sangminwoo/AvisC`` ``772eba49``, ``avisc_utils/avisc_sample.py:203-214``) and DAMRO
(``coder-gx/DAMRO`` ``03008aca``, ``sample_method/sample.py:180-197``) use the same rule.

Deviations from the official code (all three repositories):

* Greedy decoding is supported (argmax of the contrasted, masked scores); the official
  loops only contrast inside ``sample()`` (VCD issues #8, #18, #37).
* DAMRO's official loop applies no warpers; here temperature/top-p apply uniformly to all
  three methods (identical at the papers' setting T=1, top-p=1).
* ``beta = 0`` disables the cutoff (``log 0 = -inf``) instead of producing NaNs.
* AVC replaces NaN contrast logits by the clean ones (``avisc_sample.py:200-201``); here a
  NaN in ``l_contrast`` is kept out the same way for every method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def plausibility_mask(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """True where a token passes the adaptive plausibility constraint.

    Keeps ``v`` with ``l[v] >= log(beta) + max(l)``, i.e. ``p(v) >= beta * max p``.
    ``logits`` has shape ``(..., vocab)``; the maximum is taken over the last axis.
    """
    if beta <= 0.0:
        return torch.ones_like(logits, dtype=torch.bool)
    top = logits.max(dim=-1, keepdim=True).values
    return logits >= top + math.log(beta)


def contrast_logits(
    logits: torch.Tensor, contrast: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """``(1+alpha)*l - alpha*l_contrast``, ``-inf`` outside the plausibility set of ``l``.

    Computed in float32. With ``alpha == 0`` the contrast branch is ignored exactly (the
    result is ``l`` masked by the cutoff), so greedy decoding reduces to plain greedy.
    """
    clean = logits.float()
    other = contrast.float()
    other = torch.where(torch.isnan(other), clean, other)
    scores = clean if alpha == 0.0 else (1.0 + alpha) * clean - alpha * other
    return scores.masked_fill(~plausibility_mask(clean, beta), float("-inf"))


def warp(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Temperature then top-p (nucleus) on one row of scores; returns warped scores.

    Top-p keeps the smallest set of highest-probability tokens whose cumulative
    probability reaches ``top_p`` (at least one token); the others become ``-inf``.
    ``temperature`` must be > 0 here (greedy is handled by :func:`choose`).
    """
    out = scores.float() / temperature
    if top_p < 1.0:
        probs = torch.softmax(out, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly above each token
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


@dataclass(frozen=True)
class Choice:
    """One decoding step: the token, its log-probability under the distribution it was
    drawn from, and that distribution's top-two log-probability margin (``inf`` when
    only one token is possible). A margin near 0 marks a numerical tie."""

    token: int
    logprob: float
    margin: float


def _summary(logprobs: torch.Tensor, token: int) -> Choice:
    top2 = logprobs.topk(min(2, logprobs.shape[-1])).values
    margin = float("inf") if top2.numel() < 2 else float(top2[0] - top2[1])
    if math.isnan(margin):  # -inf - -inf
        margin = float("inf")
    return Choice(token=token, logprob=float(logprobs[token]), margin=margin)


def forced_choice(
    scores: torch.Tensor, token: int, temperature: float = 0.0, top_p: float = 1.0
) -> Choice:
    """The :class:`Choice` record of ``token`` when it is imposed (teacher forcing): its
    log-probability under the distribution :func:`choose` would draw from."""
    row = scores.float().reshape(-1)
    warped = row if temperature == 0.0 else warp(row, temperature, top_p)
    return _summary(torch.log_softmax(warped, dim=-1), token)


def choose(
    scores: torch.Tensor,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Choice:
    """Pick the next token from one row of (already contrasted) scores.

    ``temperature == 0``: argmax (lowest id on exact ties); the reported distribution is
    ``softmax(scores)``. Otherwise :func:`warp`, softmax and one multinomial draw from
    ``generator``; the reported distribution is the warped one.
    """
    row = scores.float().reshape(-1)
    if temperature == 0.0:
        logprobs = torch.log_softmax(row, dim=-1)
        token = int(torch.argmax(row))
    else:
        logprobs = torch.log_softmax(warp(row, temperature, top_p), dim=-1)
        token = int(torch.multinomial(logprobs.exp(), 1, generator=generator))
    return _summary(logprobs, token)
