"""DAMRO: the vision encoder's [CLS]-to-patch attention and its top-k "outlier" patches.

Paper: Gong et al., "DAMRO: Dive into the Attention Mechanism of LVLM to Reduce Object
Hallucination", EMNLP 2024, arXiv 2410.04514. Official code: ``coder-gx/DAMRO`` commit
``03008aca``, ``transformers-4.43.0/src/transformers/models/llava/modeling_llava.py``:
hooks on the feature layer's ``q_proj``/``k_proj`` (``:46-50, 438-443``), the score
(``:466-468``), top-k (``:472-473``) and the contrast splice (``:474-482``).

For LLaVA the score is ONE full-width head: ``softmax(q_cls . k^T / sqrt(C))`` with ``q``,
``k`` the outputs of the feature layer's ``q_proj``/``k_proj`` (width ``C``, e.g. 1024 for
CLIP ViT-L), over all tokens including [CLS]; the patch scores are entries ``1:``. It is
not the model's per-head attention. The feature layer is the encoder layer whose output
LLaVA reads: ``vision_feature_layer = -2`` means encoder layer ``L - 2`` (0-based) of an
``L``-layer tower.

The outliers are the ``top_k`` patches by score, in DESCENDING score order (ties: lower
patch index first); the contrast prompt contains only those ``top_k`` image tokens, in
that order, in place of the full image.

Deviation: none in the math; the official code computes it in fp32 with module-level
hook state, here it is a pure function of ``q`` and ``k`` (computed in float32).
"""

from __future__ import annotations

import math

import torch


def feature_layer_index(vision_feature_layer: int, num_layers: int) -> int:
    """0-based encoder layer whose output is ``hidden_states[vision_feature_layer]``."""
    f = vision_feature_layer
    idx = num_layers + f if f < 0 else f - 1
    if not 0 <= idx < num_layers:
        raise ValueError(f"feature layer {vision_feature_layer} is not an encoder layer output")
    return idx


def cls_patch_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Patch scores of one image: ``softmax(q[0] @ k.T / sqrt(C))[1:]``.

    ``q``, ``k``: ``(tokens, C)`` projections of one image, [CLS] first.
    """
    qf, kf = q.float(), k.float()
    logits = kf @ qf[0] / math.sqrt(qf.shape[-1])
    return torch.softmax(logits, dim=-1)[1:]


def top_outliers(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """Indices of the ``top_k`` highest scores, highest first, lower index on ties."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[: min(top_k, scores.numel())]
