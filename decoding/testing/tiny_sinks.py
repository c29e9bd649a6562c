"""Weights planted in the family test checkpoints (:mod:`decoding.testing.tiny_models`):
the massive activations VAR looks for, and the start of a content-matching head.

The text sink (the template's first token) is written before training and kept fixed;
the visual-sink unit stays silent until the vision tower has been trained and frozen,
then it is aimed at the tower's own features (:func:`plant_visual_sinks`), as the
LLaVA-1.5 checkpoint's recipe does (:mod:`decoding.testing.tiny_llava`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from decoding.testing import training

UNIT = 0  # the projector/merger hidden unit dedicated to visual sinks


@dataclass(frozen=True)
class SinkSites:
    """Where the massive activations are planted in one checkpoint."""

    embedding: nn.Parameter  # text input embeddings (vocab, hidden)
    first_token: int  # the template's first token: BOS, or ``<|im_start|>``
    fc1: nn.Linear  # projector/merger input layer: unit 0 detects the visual sinks
    fc2: nn.Linear  # projector/merger output layer: unit 0 writes into sink_dims[0]
    #: Further layers that write image features into the residual stream (deepstack).
    writers: tuple[nn.Linear, ...] = ()


def reserve_sinks(sites: SinkSites, dims: tuple[int, ...], value: float) -> list[training.Mask]:
    """Write the text sink (``value`` in every sink dim of the first token's embedding),
    silence the sink unit, and keep every image-feature writer out of the sink dims
    (otherwise training spreads large values there over every image token). Returns the
    gradient masks that hold all of it, and the sink unit's weights, fixed."""
    emb, fc1, fc2 = sites.embedding, sites.fc1, sites.fc2
    with torch.no_grad():
        emb[sites.first_token, list(dims)] = value
        fc2.weight[:, UNIT] = 0.0
        for layer in (fc2, *sites.writers):
            layer.weight[list(dims)] = 0.0
            layer.bias[list(dims)] = 0.0
    masks = [
        (emb, _mask(emb, (sites.first_token, list(dims)))),
        (fc1.weight, _mask(fc1.weight, UNIT)),
        (fc1.bias, _mask(fc1.bias, UNIT)),
        (fc2.weight, _mask(fc2.weight, (slice(None), UNIT))),
    ]
    for layer in (fc2, *sites.writers):
        masks += [(layer.weight, _mask(layer.weight, list(dims)))]
        masks += [(layer.bias, _mask(layer.bias, list(dims)))]
    return masks


def plant_visual_sinks(
    model: nn.Module,
    sites: SinkSites,
    calibration: dict[str, torch.Tensor],
    dim: int,
    fraction: float,
    gain: float,
    sharpness: float,
    seed: int,
) -> None:
    """Aim the sink unit (``fc1`` unit 0) along a seeded direction of its input features,
    biased to fire on about ``fraction`` of the calibration images' tokens
    (:func:`_calibrate`; ``sharpness`` caps its slope in score standard deviations);
    through ``fc2`` it writes ``gain`` into ``dim``, so which image tokens become sinks
    depends on the image. Call it once the tower is frozen: the cut is in its features."""
    feats = _fc1_inputs(model, sites.fc1, calibration)
    direction, cut, half_gap = _calibrate(feats, fraction, seed)
    # Both edges of the gap at |pre-activation| >= 3: below, GELU's flat tail; above,
    # GELU ~ identity. The cap keeps values finite-precision friendly if the gap is thin.
    scale = min(3.0 / max(half_gap, 1e-9), sharpness / float((feats @ direction).std()))
    with torch.no_grad():
        sites.fc1.weight[UNIT] = direction * scale
        sites.fc1.bias[UNIT] = -cut * scale
        sites.fc2.weight[dim, UNIT] = gain


def init_match_head(attn: nn.Module, hidden: int, head_dim: int, gain: float, seed: int) -> None:
    """Start head 0 of a text layer as a content-matching head: query and key read the
    same seeded projection of the input in the slowest rotary frequencies (the last four
    pairs of each half), so the score barely depends on distance and a question's object
    word can find the image tokens that look like it. Small models rarely find this
    circuit in a few hundred steps from a random start; it stays trainable. With
    grouped-query attention query head 0 reads key head 0, the first rows of both."""
    half = head_dim // 2
    rows = [*range(half - 4, half), *range(head_dim - 4, head_dim)]
    gen = torch.Generator().manual_seed(seed + 13)
    proj = torch.linalg.qr(torch.randn(hidden, len(rows), generator=gen))[0].T
    with torch.no_grad():
        attn.q_proj.weight[rows] = gain * proj
        attn.k_proj.weight[rows] = proj
        for layer in (attn.q_proj, attn.k_proj):
            if layer.bias is not None:  # Qwen2's q/k biases
                layer.bias[rows] = 0.0


def _fc1_inputs(model: nn.Module, fc1: nn.Linear, inputs: dict) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = fc1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return torch.cat([s.reshape(-1, fc1.in_features) for s in seen])


def _calibrate(
    feats: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, float, float]:
    """A seeded direction, a cut and a half-gap for the visual-sink unit.

    GELU's negative dip (down to -0.17 at -0.75) times a large gain is itself sink-sized,
    and plain backgrounds give large clusters of identical features: a cut inside or just
    above a cluster makes every token of those images a sink. So among 32 random
    directions, take the one with the widest empty gap in the sorted scores around the
    top ``fraction`` (ranks 1-2f .. 1-f/2), and cut in the middle of that gap."""
    gen = torch.Generator().manual_seed(seed + 11)
    cands = torch.randn(feats.shape[1], 32, generator=gen)
    cands /= cands.norm(dim=0)
    scores = (feats @ cands).sort(dim=0).values  # (tokens, candidates)
    n = scores.shape[0]
    lo, hi = int(n * (1 - 2 * fraction)), int(n * (1 - fraction / 2))
    gaps = (scores[lo + 1 : hi + 1] - scores[lo:hi]) / scores.std(dim=0)
    best = int(gaps.max(dim=0).values.argmax())
    at = lo + int(gaps[:, best].argmax())
    low, high = float(scores[at, best]), float(scores[at + 1, best])
    return cands[:, best], (low + high) / 2, (high - low) / 2


def _mask(param: torch.Tensor, index: Any) -> torch.Tensor:
    """Ones with zeros at ``index``: multiplied into the gradient, it freezes those."""
    m = torch.ones_like(param)
    m[index] = 0
    return m
