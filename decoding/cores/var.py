"""VAR: visual attention sinks and the redistribution of their attention.

Paper: Kang, Kim, Kim, Hwang, "See What You Are Told: Visual Attention Sink in Large
Multimodal Models", ICLR 2025, arXiv 2503.03321. Official code: ``seilk/VisAttnSink``
commit ``98e62d6``: ``src/logic/logic.py`` (sink dimensions ``:99-108``, head selection
``HeadFork`` ``:115-145``, redistribution ``VARProcessor.attn_redist`` ``:163-212``),
``src/logic/constants.py:8-11`` (sink dims), ``A_exps/lv1.5_7b.yml`` (config).

1. Sinks (prefill, per decoder layer ``l`` of the profile's layer range): for every prompt
   token ``j`` with residual-stream input ``x_j`` of layer ``l``,
   ``phi(x_j) = max_{d in D_sink} |x_j[d]| / RMS(x_j)`` (weightless RMS, eps 1e-6, fp32);
   sink if ``phi > tau``. Visual sinks are the sinks among the image tokens.
2. Rows (per head ``h`` and query ``i``, post-softmax probabilities ``a``):
   ``V = sum_{image} a``; sink share ``r = sum_{visual sinks} a / sum_{image} (a + 1e-6)``;
   the row is image-centric if ``V >= summ`` and the NON-sink share ``1 - r >= rho``
   (paper meaning of ``rho``). In a layer without visual sinks no row is selected, even
   if it has text sinks (official ``HeadFork``).
3. Redistribution on each selected row: the attention on every sink of the layer (visual
   and text sinks, e.g. BOS) is multiplied by ``1 - p``; the removed mass
   ``p * sum_{sinks} a`` is added to the non-sink image tokens in proportion to their
   attention. The row still sums to 1. Rows without attention on non-sink image tokens
   are left unchanged.

Parameter meanings: this module uses the PAPER's ``rho`` and ``p``. The official code
uses ``rho_code = 1 - rho`` (selects ``r <= rho_code``) and ``p_code = 1 - p`` (multiplies
sink attention by ``p_code``), author-confirmed in VisAttnSink issue #5. The released
LLaVA-1.5 config ``rho_code = 0.5, p_code = 0.6`` is ``rho = 0.5, p = 0.4`` here.

Deviations: sinks are recomputed for every request (the official per-sample reset does
not reset, ``logic.py:8-16, 83-90``); the last decoder layer is not edited, as the paper
states (the official ``except_last_layer`` flag is shadowed and edits it, ``:147-170``);
the layer range and ``D_sink`` come from the model profile.
"""

from __future__ import annotations

import torch

RMS_EPS = 1e-6
SHARE_EPS = 1e-6


def sink_scores(hidden: torch.Tensor, dims: tuple[int, ...] | list[int]) -> torch.Tensor:
    """``phi`` per token: ``hidden`` is ``(tokens, hidden_size)``; returns ``(tokens,)``."""
    x = hidden.float()
    rms = torch.sqrt(x.pow(2).mean(dim=-1) + RMS_EPS)
    return x[:, list(dims)].abs().max(dim=-1).values / rms


def sink_mask(hidden: torch.Tensor, dims: tuple[int, ...] | list[int], tau: float) -> torch.Tensor:
    """Boolean ``(tokens,)``: ``phi > tau``."""
    return sink_scores(hidden, dims) > tau


def select_rows(
    probs: torch.Tensor,
    image_mask: torch.Tensor,
    visual_sinks: torch.Tensor,
    rho: float,
    summ: float,
) -> torch.Tensor:
    """Image-centric rows. ``probs``: ``(..., keys)``; masks: ``(keys,)`` bool.

    Returns ``(...)`` bool: ``sum_image >= summ`` and ``r <= 1 - rho``. A layer without
    visual sinks selects no row (as the official ``HeadFork``, ``logic.py:115-145``).
    """
    if not bool(visual_sinks.any()):
        return torch.zeros(probs.shape[:-1], dtype=torch.bool, device=probs.device)
    p = probs.float()
    img = (p * image_mask).sum(dim=-1)
    denom = img + SHARE_EPS * image_mask.sum()
    share = (p * visual_sinks).sum(dim=-1) / denom
    return (img >= summ) & (share <= 1.0 - rho)


def redistribute(
    probs: torch.Tensor,
    rows: torch.Tensor,
    sinks: torch.Tensor,
    image_mask: torch.Tensor,
    p: float,
) -> torch.Tensor:
    """Move fraction ``p`` of the sink attention of the selected ``rows`` onto non-sink
    image tokens, proportionally to their attention. ``probs``: ``(..., keys)``;
    ``rows``: ``(...)`` bool; ``sinks``/``image_mask``: ``(keys,)`` bool. Returns a new
    tensor in ``probs``' dtype (computed in float32)."""
    if p == 0.0:
        return probs
    a = probs.float()
    targets = (image_mask & ~sinks).float()
    target_mass = (a * targets).sum(dim=-1, keepdim=True)
    moved = p * (a * sinks.float()).sum(dim=-1, keepdim=True)
    ok = rows.unsqueeze(-1) & (target_mass > 0)
    safe = torch.where(target_mass > 0, target_mass, torch.ones_like(target_mass))
    edited = a * (1.0 - p * sinks.float()) + moved * (a * targets) / safe
    return torch.where(ok, edited, a).to(probs.dtype)
