"""Attention that also returns the log-sum-exp, on whatever device the KV cache lives.

VAR's edit (:func:`decoding.cores.var.partitioned_update`) needs, per flagged query, the
attention output over a key subset and its log-sum-exp, never the probabilities. Each
platform has a fused kernel that returns both:

* CPU: ``aten._scaled_dot_product_flash_attention_for_cpu`` (an additive mask, the
  log-sum-exp per query);
* CUDA: ``aten._scaled_dot_product_efficient_attention`` with ``compute_log_sumexp``
  (an additive bias; the log-sum-exp comes padded along the query axis);
* anything else: the plain formula (:func:`decoding.cores.var.math_lse_attention`).

On CPUs, a step whose edited requests have at most :data:`SHARED_SCORES_MAX_QUERIES`
queries each along the (grouped) query axis, i.e. decoding, skips the kernel: one score
matrix serves every segment (:data:`decoding.cores.var.SHARED_SCORES`), which measured
1.3-1.7x faster than the stacked flash call for 1-4 queries and slower from 16 on
(``docs/performance.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from decoding.cores import var as var_core

Attention = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
    tuple[torch.Tensor, torch.Tensor],
]


def cpu_lse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    mask = bias.to(q.dtype).expand(q.shape[0], 1, q.shape[2], k.shape[2])
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, False, attn_mask=mask, scale=scale
    )[:2]
    return out, lse


def cuda_lse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    scale: float,
    op: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory-efficient attention with an additive bias; its log-sum-exp is padded along
    the query axis (to a multiple of 32), so it is cut back to ``Q``."""
    op = op or torch.ops.aten._scaled_dot_product_efficient_attention
    n, heads, width, length = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    attn_bias = bias.to(q.dtype).expand(n, heads, width, length).contiguous()
    out, lse = op(q, k, v, attn_bias, True, 0.0, False, scale=scale)[:2]
    return out, lse[..., :width].float()


#: Most queries per request (query heads of a KV head included) for the shared-scores path.
SHARED_SCORES_MAX_QUERIES = 4


def lse_attention_for(device: torch.device, queries: int | None = None) -> Attention | str:
    """The attention for VAR's segments on ``device`` with ``queries`` per request."""
    if device.type == "cpu":
        if queries is not None and queries <= SHARED_SCORES_MAX_QUERIES:
            return var_core.SHARED_SCORES
        return cpu_lse_attention
    if device.type == "cuda":
        return cuda_lse_attention
    return var_core.math_lse_attention
