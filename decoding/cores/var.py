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

from dataclasses import dataclass, fields
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


@dataclass(frozen=True)
class Partition:
    """The key partition of a batch of VAR queries: everything :func:`apply_partition`
    needs that does not depend on ``q``, ``k`` or ``v``. Built by :func:`partition` once
    per step (sinks and image spans do not change while a request decodes) and shared by
    every edited layer; rows may be ``layers x requests`` (see :meth:`layer`). The
    fields marked "kernel" exist only for the attention-kernel path."""

    requests: int
    bias: torch.Tensor  # (B, 1, Q, L); kernel: (B, 1, 2Q, L), then the non-sink image keys
    has_visual: torch.Tensor  # (B, 1, 1) bool
    eps: torch.Tensor  # (B, 1, 1) float: SHARE_EPS * image tokens (select_rows' epsilon)
    masks: torch.Tensor | None = None  # (B, L, 3) float: targets, sinks, visual sinks
    order: torch.Tensor | None = None  # kernel (B, S) long: sink keys, padded
    sink_bias: torch.Tensor | None = None  # kernel (B, 1, Q, S): their bias, -inf on padding
    visual: torch.Tensor | None = None  # kernel (B, S) float: 1 for visual sinks
    has_target: torch.Tensor | None = None  # kernel (B, 1, 1) bool

    def layer(self, i: int) -> Partition:
        """Layer ``i``'s rows of a partition built for ``(layers, R, L)`` sinks."""
        rows = slice(i * self.requests, (i + 1) * self.requests)
        cut = {
            f.name: getattr(self, f.name)[rows]
            for f in fields(self)
            if f.name != "requests" and getattr(self, f.name) is not None
        }
        return Partition(requests=self.requests, **cut)


def partition(
    bias: torch.Tensor, image: torch.Tensor, sinks: torch.Tensor, kernel: bool = True
) -> Partition | None:
    """The partition for ``bias`` ``(R, 1, Q, L)``, ``image`` ``(R, L)`` and ``sinks``
    ``(R, L)`` or ``(layers, R, L)`` (bool), for the attention-kernel path or (``kernel``
    False) the shared-scores one. None when no row has a sink: nothing changes."""
    n, width, length = bias.shape[0], bias.shape[2], bias.shape[3]
    flat = sinks.reshape(-1, length)
    layers = flat.shape[0] // n
    count = int(flat.sum(dim=-1).max()) if flat.numel() else 0
    if count == 0:
        return None
    rows = bias.expand(n, 1, width, length)
    rows = rows.repeat(layers, 1, 1, 1) if layers > 1 else rows
    img = image.repeat(layers, 1) if layers > 1 else image
    targets = img & ~flat
    common = {
        "requests": n,
        "has_visual": (flat & img).any(dim=-1)[:, None, None],
        "eps": SHARE_EPS * img.sum(dim=-1).float()[:, None, None],
    }
    if not kernel:
        masks = torch.stack([targets, flat, flat & img], dim=-1).float()
        return Partition(bias=rows, masks=masks, **common)
    inf = torch.tensor(float("-inf"), device=bias.device)
    t_bias = rows + torch.where(targets, 0.0, inf)[:, None, None, :]
    order = torch.argsort((~flat).to(torch.int8), dim=-1, stable=True)[:, :count]
    valid = torch.gather(flat, 1, order)
    sink_bias = torch.gather(rows, 3, order[:, None, None, :].expand(-1, 1, width, count))
    return Partition(
        bias=torch.cat([rows, t_bias], dim=2),
        order=order,
        sink_bias=sink_bias + torch.where(valid, 0.0, inf)[:, None, None, :],
        visual=(valid & torch.gather(img, 1, order)).float(),
        has_target=targets.any(dim=-1)[:, None, None],
        **common,
    )


#: ``attention`` value of :func:`apply_partition` that derives every segment from one
#: score matrix instead of attention kernels (:func:`_shared_scores`).
SHARED_SCORES = "shared-scores"


def apply_partition(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    part: Partition,
    scale: float,
    p: torch.Tensor,
    threshold: torch.Tensor,
    summ: torch.Tensor,
    attention: Any = math_lse_attention,
    with_out: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """VAR's change of the attention output for a batch of requests. Shapes and returns
    as :func:`partitioned_update`; without ``with_out`` the output over all keys may be
    left out (None), for callers that add the change to the kernel's own output.

    The segment terms (output and log-sum-exp over all keys and over the non-sink image
    keys, the sinks' weights and values) come either from one LSE attention call over
    the stacked queries ``[q; q]`` plus a gather of the few sink keys (``attention`` a
    kernel, as on GPUs), or, with ``attention=SHARED_SCORES``, from one ``q k^T``
    product that every segment reuses: fewer, larger operations, faster on CPUs for a
    few queries per request (decoding). Both are exact."""
    if attention == SHARED_SCORES:
        if part.masks is None:
            raise ValueError("a kernel partition was given to the shared-scores path")
        return _shared_scores(q, k, v, part, scale, p, threshold, summ, with_out)
    if part.order is None:
        raise ValueError("a shared-scores partition was given to the kernel path")
    width = q.shape[2]
    both, lse2 = attention(torch.cat([q, q], dim=2), k, v, part.bias, scale)
    out, o_t = both[:, :, :width], both[:, :, width:]
    lse, lse_t = lse2[..., :width], lse2[..., width:]
    m_t = torch.where(part.has_target, torch.exp(lse_t - lse), 0.0)
    k_s, v_s = _sinks_of(k, part), _sinks_of(v, part)
    a_s = torch.exp((q @ k_s.transpose(-1, -2)) * scale + part.sink_bias - lse[..., None])
    m_s = a_s.sum(dim=-1)
    m_vs = (a_s * part.visual[:, None, None, :]).sum(dim=-1)
    changed = _selected(m_t, m_s, m_vs, part, p, threshold, summ)
    delta = p[:, None, None, None] * (m_s[..., None] * o_t - a_s @ v_s)
    # A product, not a select: a non-finite input stays visible in the result.
    return delta * changed[..., None], changed, out


def _selected(
    m_t: torch.Tensor, m_s: torch.Tensor, m_vs: torch.Tensor, part: Partition,
    p: torch.Tensor, threshold: torch.Tensor, summ: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """:func:`select_rows` from the masses (and only rows with targets and ``p > 0``)."""
    img = m_t + m_vs
    share = m_vs / (img + part.eps)
    return (
        (img >= summ[:, None, None])
        & (share <= threshold[:, None, None])
        & part.has_visual
        & (m_t > 0)
        & (p[:, None, None] > 0)
    )


def _sinks_of(x: torch.Tensor, part: Partition) -> torch.Tensor:
    """The sink keys' rows of ``x`` ``(R, H, L, D)``: ``(R, H, S, D)``."""
    idx = part.order[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1])
    return torch.gather(x, 2, idx)


def _shared_scores(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, part: Partition, scale: float,
    p: torch.Tensor, threshold: torch.Tensor, summ: torch.Tensor, with_out: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """The same update from one probability matrix ``a`` of the queries (as large as the
    score matrix, which is small for a few queries per request): the three masses are
    one product ``a @ [targets, sinks, visual sinks]``, and the change is
    ``p * (a * (m_S / m_T * targets - sinks)) @ v``, i.e. sinks keep ``1 - p`` of their
    weight and targets gain ``p * m_S`` in proportion to theirs."""
    # Every query sees at least its own key: no row of the softmax is empty. A non-finite
    # key or value shows in the result (callers check), as in the kernel path.
    probs = torch.softmax((q @ k.transpose(-1, -2)) * scale + part.bias, dim=-1)
    m_t, m_s, m_vs = (probs @ part.masks[:, None]).unbind(dim=-1)
    changed = _selected(m_t, m_s, m_vs, part, p, threshold, summ)
    # The weight change per key, zero on rows that are not selected.
    gain = torch.where(changed, p[:, None, None] * m_s / m_t, 0.0)[..., None]
    keep = torch.where(changed, p[:, None, None], 0.0)[..., None]
    targets, sinks = part.masks[:, None, None, :, 0], part.masks[:, None, None, :, 1]
    delta = (probs * (gain * targets - keep * sinks)) @ v
    return delta, changed, (probs @ v if with_out else None)


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
    ``probs @ v`` (float32 rounding aside). :func:`partition` + :func:`apply_partition`
    is the same computation with the partition shared between layers.
    """
    shared = attention == SHARED_SCORES
    part = partition(bias, image, sinks, kernel=not shared)
    if part is None:
        out, _ = (math_lse_attention if shared else attention)(q, k, v, bias, scale)
        none = torch.zeros(q.shape[:-1], dtype=torch.bool, device=q.device)
        return torch.zeros_like(out), none, out
    return apply_partition(q, k, v, part, scale, p, threshold, summ, attention)
