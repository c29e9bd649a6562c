"""``gcd``: a contrastive strategy written as a deployment extension, to show (and test)
that a new method needs only its declaration module and its core.

It contrasts against a grayscale copy of the image: what survives the loss of colour
(shape, layout, language prior) is subtracted, so colour evidence is amplified. The core
is :func:`grayscale`; everything else (runner, engine hooks, chart data, bench and eval
lists, docs) is derived from the declaration. Load it with
``LUCID_STRATEGY_MODULES=gray_strategy`` (module on ``PYTHONPATH``).
"""

from __future__ import annotations

from typing import Any

from decoding.strategies.base import (
    CONTRASTIVE_REJECTS,
    BenchTarget,
    Family,
    Strategy,
    StrategyParams,
    pair_needs,
    param,
)
from decoding.strategies.contrast import PixelContrast
from decoding.strategies.registry import register_strategy

SRC = "this extension (VCD's defaults, Leng et al. CVPR 2024)"


def grayscale(pixels: Any) -> Any:
    """Every channel replaced by the channel mean, ``(C, H, W) -> (C, H, W)``."""
    return pixels.mean(dim=0, keepdim=True).expand_as(pixels).clone()


class GrayParams(StrategyParams):
    alpha: float = param(1.0, "Contrast strength; 0 = plain decoding.", SRC, ge=0.0, le=10.0)
    beta: float = param(0.1, "Plausibility cutoff on the clean logits.", SRC, ge=0.0, le=1.0)


@register_strategy
class GrayStrategy(Strategy):
    """Grayscale contrastive decoding (an example extension; no paper)."""

    name = "gcd"
    summary = "contrast against a grayscale copy of the image"
    order = 60
    family = Family.CONTRASTIVE
    Params = GrayParams
    needs_image = True
    rejects = CONTRASTIVE_REJECTS
    engine = pair_needs()
    bench_target = BenchTarget("none", 0.5)
    contrast = PixelContrast(transform=lambda px, p: grayscale(px), tag=lambda p: "gray")
