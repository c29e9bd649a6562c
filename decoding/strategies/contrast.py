"""Contrast inputs a contrastive strategy can declare (no vLLM, no engine state).

The engine (``decoding.engine.runners.contrast_inputs``) and the reference engine
(``decoding.reference.engine``) each implement these three forms, so a new contrastive
strategy that uses one of them needs only its declaration:

* :class:`PixelContrast`: the same prompt with transformed image pixels (VCD's noise,
  or any pure function of the normalised pixel tensor);
* :class:`OutlierTokens`: the prompt with each image reduced to its ``top_k`` vision
  tokens of highest [CLS] attention (DAMRO);
* :class:`BlindTokens`: the same prompt whose non-"blind" image embeddings are masked,
  the blind tokens chosen from the clean prefill's attention (AVC).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PixelContrast:
    """``transform(pixels, params) -> pixels`` on one image's normalised pixel values
    (``(channels, height, width)``, the processor's output); ``tag(params)`` names the
    variant in the image's cache hash, so different contrasts never share cache entries."""

    transform: Callable[[torch.Tensor, Any], torch.Tensor]
    tag: Callable[[Any], str]


@dataclass(frozen=True)
class OutlierTokens:
    """Keep ``count(params)`` vision tokens per image, highest [CLS] attention first."""

    count: Callable[[Any], int]


@dataclass(frozen=True)
class BlindTokens:
    """Mask all image embeddings but the blind ones; the parameter object has
    ``gamma``, ``lamb`` and ``mask`` (:mod:`decoding.cores.avc`)."""


ContrastInput = PixelContrast | OutlierTokens | BlindTokens
