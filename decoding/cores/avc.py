"""AVC (AvisC): which image tokens the model over-attends ("blind" tokens) and the
contrast input that keeps only them.

Paper: Woo et al., "Don't Miss the Forest for the Trees: Attentional Vision Calibration
for Large Vision Language Models", arXiv 2405.17820. Official code: ``sangminwoo/AvisC``
commit ``772eba49``: ``avisc_utils/avisc_sample.py:108, 138-179`` (selection) and
``experiments/llava/model/language_model/llava_llama.py:93-112`` (masking).

Input: at prefill of the clean pass, for every decoder layer the attention of the LAST
prompt token (the query that predicts the first answer token), averaged over heads,
restricted to the image-token columns: a ``(layers, image_tokens)`` matrix.

1. Layer shares ``s_L = sum_j A[L, j]`` normalised over layers; sort descending
   (stable: lower layer first on ties); ``k`` = number of layers whose cumulative share
   is still ``< gamma``, plus one; keep those ``k`` layers (``avisc_sample.py:138-170``).
2. ``a_j`` = mean of ``A[L, j]`` over the kept layers (``:175-176``).
3. Blind tokens: ``a_j >= mean(a) + lamb * std(a)`` (unbiased std, ``:179``).
4. Contrast input: the same prompt with the input embeddings of all NON-blind image
   tokens set to 0 (``mask="zeros"``) or 1 (``"ones"``), after the projector.

Deviations: image positions come from the image-token id in the prompt, not the
hard-coded offsets 35..610 of the official code; the selection is computed per request
(the official code mixes batch rows, ``:179``); the official Gaussian ``"noise"`` mask is
not offered (it would need its own seed contract).
"""

from __future__ import annotations

import torch


def select_layers(layer_image_attention: torch.Tensor, gamma: float) -> torch.Tensor:
    """Indices of the layers kept by the cumulative-share rule, highest share first.

    ``layer_image_attention``: ``(layers,)`` total image attention of the query per layer.
    """
    s = layer_image_attention.double()
    shares = s / s.sum()
    order = torch.sort(shares, descending=True, stable=True).indices
    cum = torch.cumsum(shares[order], dim=0)
    k = int((cum < gamma).sum()) + 1
    return order[: min(k, s.numel())]


def blind_tokens(image_attention: torch.Tensor, gamma: float, lamb: float) -> torch.Tensor:
    """Boolean mask over image tokens: True for the blind (over-attended) tokens.

    ``image_attention``: ``(layers, image_tokens)`` head-mean attention of the last prompt
    token to each image token, per layer.
    """
    a_all = image_attention.double()
    layers = select_layers(a_all.sum(dim=-1), gamma)
    a = a_all[layers].mean(dim=0)
    threshold = a.mean() + lamb * a.std()
    return a >= threshold


def mask_image_embeddings(
    embeds: torch.Tensor, image_positions: torch.Tensor, blind: torch.Tensor, mask: str = "zeros"
) -> torch.Tensor:
    """Copy of ``embeds`` (``(seq, hidden)``) with every non-blind image token replaced.

    ``image_positions``: ``(image_tokens,)`` sequence positions of the image tokens, in
    the order of ``blind``.
    """
    if mask not in ("zeros", "ones"):
        raise ValueError(f"unknown AVC mask {mask!r}")
    out = embeds.clone()
    drop = image_positions[~blind]
    out[drop] = 0.0 if mask == "zeros" else 1.0
    return out
