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

from typing import Any

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


# --- partitioned-attention form ----------------------------------------------------------
#
# The same edit without materialising attention probabilities. Split the keys of a query into the
# sinks S (visual and text), the targets T (non-sink image tokens) and the rest. With the
# attention output ``out`` over all keys, the total log-sum-exp ``lse``, the target
# segment's normalised output ``o_T`` and log-sum-exp ``lse_T``, and the sinks' weights
# ``a_s = exp(score_s - lse)``:
#
#     m_S = sum_s a_s,   m_T = exp(lse_T - lse),   m_VS = sum over visual sinks of a_s
#     out' = out + p * (m_S * o_T - sum_s a_s v_s)            (selected rows only)
#
# which is exactly ``redistribute`` followed by ``probs @ v``: sinks keep (1 - p) of
# their weight, targets gain p * m_S in proportion to their weights. Selection uses the
# masses: image mass m_T + m_VS and the visual-sink share, as ``select_rows``.


def math_lse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference LSE attention: ``q (..., Q, D)``, ``k``/``v`` ``(..., L, D)``, additive
    ``bias`` broadcastable to ``(..., Q, L)``. Rows without a visible key give 0 and
    ``-inf``."""
    scores = (q @ k.transpose(-1, -2)) * scale + bias
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.clamp_min(torch.finfo(scores.dtype).min)[..., None])
    return torch.nan_to_num(probs, nan=0.0) @ v, lse


def partitioned_update(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    scale: float,
    image: torch.Tensor,
    sinks: torch.Tensor,
    p: torch.Tensor,
    threshold: torch.Tensor,
    summ: torch.Tensor,
    attention: Any = math_lse_attention,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VAR's change of the attention output for a batch of requests, from LSE attention.

    ``q``: ``(R, H, Q, D)`` (heads may be KV heads with their query groups stacked along
    ``Q``); ``k``/``v``: ``(R, H, L, D)``; ``bias``: ``(R, 1, Q, L)`` additive mask of the
    keys each query sees; ``image``/``sinks``: ``(R, L)`` bool; ``p``, ``threshold``
    (``1 - rho``), ``summ``: ``(R,)``. Returns ``(delta, changed)``: ``delta`` ``(R, H,
    Q, D)`` to add to the attention output over all keys, ``changed`` ``(R, H, Q)``
    bool, and that output ``out`` (recomputed here, so callers need not trust a kernel's
    layout). ``out + delta`` equals :func:`select_rows` + :func:`redistribute` followed by
    ``probs @ v`` (float32 rounding aside).
    """
    n = q.shape[0]
    inf = torch.tensor(float("-inf"), device=q.device)
    out, lse = attention(q, k, v, bias, scale)
    targets = image & ~sinks
    t_bias = bias + torch.where(targets, 0.0, inf)[:, None, None, :]
    o_t, lse_t = attention(q, k, v, t_bias, scale)
    has_target = targets.any(dim=-1)[:, None, None]
    m_t = torch.where(has_target, torch.exp(lse_t - lse), 0.0)
    # The few sink keys, gathered per request (padded with an invisible key).
    count = int(sinks.sum(dim=-1).max()) if sinks.numel() else 0
    if count == 0:
        none = torch.zeros(q.shape[:-1], dtype=torch.bool, device=q.device)
        return torch.zeros_like(out), none, out
    order = torch.argsort((~sinks).to(torch.int8), dim=-1, stable=True)[:, :count]
    valid = torch.gather(sinks, 1, order)  # (R, S)
    idx = order[:, None, :, None]
    k_s = torch.gather(k, 2, idx.expand(-1, k.shape[1], -1, k.shape[-1]))
    v_s = torch.gather(v, 2, idx.expand(-1, v.shape[1], -1, v.shape[-1]))
    s_bias = torch.gather(bias.expand(n, 1, q.shape[2], -1), 3, order[:, None, None, :].expand(
        n, 1, q.shape[2], count
    )) + torch.where(valid, 0.0, inf)[:, None, None, :]  # fmt: skip
    a_s = torch.exp((q @ k_s.transpose(-1, -2)) * scale + s_bias - lse[..., None])
    visual = (valid & torch.gather(image, 1, order)).float()
    m_s = a_s.sum(dim=-1)
    m_vs = (a_s * visual[:, None, None, :]).sum(dim=-1)
    img = m_t + m_vs
    share = m_vs / (img + SHARE_EPS * image.sum(dim=-1).float()[:, None, None])
    has_visual = (sinks & image).any(dim=-1)[:, None, None]
    changed = (
        (img >= summ[:, None, None])
        & (share <= threshold[:, None, None])
        & has_visual
        & (m_t > 0)
        & (p[:, None, None] > 0)
    )
    delta = p[:, None, None, None] * (m_s[..., None] * o_t - a_s @ v_s)
    return torch.where(changed[..., None], delta, 0.0), changed, out
