"""VAR's sink dimensions, layer range and threshold, measured from residual streams.

What the papers define:

- VAR (Kang et al., ICLR 2025, arXiv 2503.03321; official code ``seilk/VisAttnSink``
  ``98e62d6``) scores a token by ``phi(x) = max_{d in D_sink} |x[d]| / RMS(x)`` and calls
  it a sink if ``phi > tau`` (``src/logic/logic.py:99-108``; ``tau = 20``,
  ``A_exps/lv1.5_7b.yml:12``). ``D_sink`` is the set of massive-activation dimensions of
  the base language model, which visual sink tokens share with the BOS text sink; for
  LLaMA-2 it is the set Sun et al. found (7B ``{1415, 2533}``, 13B ``{2100, 4743}``,
  ``src/logic/constants.py:8-11``). Sinks are read from layer 2 on (``logic.py:50-52``)
  and the last layer is not edited. The paper gives no procedure for a new model's
  ``D_sink`` beyond that, and no rule for ``tau``.
- Sun et al., "Massive Activations in Large Language Models" (COLM 2024, arXiv
  2402.17762): very few activations, orders of magnitude larger than the rest, in a few
  fixed feature dimensions (LLaMA2-7B: 1415 and 2533) and on few tokens (the starting
  token, the first delimiter), appearing after the first layers and nearly constant
  across inputs. Their working threshold is absolute: magnitude above 100 and about
  1,000 times the median magnitude of the hidden state.

The rule implemented here, with ``ratio`` and ``min_share`` as parameters:

1. One observation is one decoder layer's input ``x`` (``(tokens, hidden)``) for one
   prompt with one image. Each dimension's peak is ``p_d = max_j |x_j[d]| / RMS(x_j)``:
   VAR's ``phi`` restricted to one dimension, so the rule measures what VAR thresholds.
2. A dimension is massive in the observation if ``p_d >= ratio * median_d p_d``.
3. ``D_sink`` is the set of dimensions massive in at least ``min_share`` of the
   observations of layers ``1 .. L-1`` over all images and prompts: fixed dimensions,
   consistent across layers and inputs.
4. Layers: from the first layer whose input has some ``D_sink`` dimension massive in
   ``min_share`` of the prompts (never layer 0, whose input is the token embeddings),
   to ``L - 2``.
5. ``tau = ratio * m``, with ``m`` the median over the observations in that range of
   ``median_d p_d``: a token is a sink when its ``phi`` stands as far above a typical
   dimension's peak as a dimension must to count as massive.

Deviations, named: Sun et al.'s absolute threshold does not carry to small models (the
test checkpoints' massive values are 6 to 60, not thousands); step 2 is a scale-free
form of it on the RMS-normalised magnitudes VAR uses. ``tau`` is a configuration value
in VAR, not derived; step 5 is this module's rule and in general gives a value other
than 20 on LLaVA-1.5 (the calibration command takes ``--tau`` to keep a published one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decoding.cores.var import RMS_EPS

DEFAULT_RATIO = 3.0
DEFAULT_MIN_SHARE = 0.5


def normalised(hidden: torch.Tensor) -> torch.Tensor:
    """``|x_j[d]| / RMS(x_j)`` for ``hidden`` ``(tokens, hidden_size)``, in float32,
    with the RMS of :func:`decoding.cores.var.sink_scores`."""
    x = hidden.float()
    rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + RMS_EPS)
    return x.abs() / rms


def dim_peaks(hidden: torch.Tensor) -> torch.Tensor:
    """``(hidden_size,)``: each dimension's largest normalised magnitude over tokens."""
    return normalised(hidden).max(dim=0).values


def massive(peaks: torch.Tensor, ratio: float = DEFAULT_RATIO) -> torch.Tensor:
    """Boolean mask over the last axis: peak at least ``ratio`` times the median peak
    (per row for a ``(observations, hidden_size)`` input)."""
    median = peaks.median(dim=-1, keepdim=True).values
    return peaks >= ratio * median


@dataclass(frozen=True)
class DimStat:
    dim: int
    #: Share of observations in which the dimension is massive.
    share: float
    mean_peak: float
    max_peak: float


def rank_dims(peaks: torch.Tensor, ratio: float = DEFAULT_RATIO, top: int = 8) -> list[DimStat]:
    """The ``top`` dimensions by share of observations massive, then by mean peak.
    ``peaks``: ``(observations, hidden_size)``."""
    share = massive(peaks, ratio).float().mean(dim=0)
    mean = peaks.mean(dim=0)
    order = sorted(range(peaks.shape[1]), key=lambda d: (-float(share[d]), -float(mean[d])))
    return [
        DimStat(d, float(share[d]), float(mean[d]), float(peaks[:, d].max())) for d in order[:top]
    ]


def sink_dims(
    peaks: torch.Tensor, ratio: float = DEFAULT_RATIO, min_share: float = DEFAULT_MIN_SHARE
) -> tuple[int, ...]:
    """Step 3: dimensions massive in at least ``min_share`` of the observations."""
    share = massive(peaks, ratio).float().mean(dim=0)
    return tuple(int(d) for d in torch.nonzero(share >= min_share).flatten())


def layer_shares(
    peaks_by_layer: dict[int, torch.Tensor], dims: tuple[int, ...], ratio: float = DEFAULT_RATIO
) -> dict[int, float]:
    """Per layer, the share of its observations (``(prompts, hidden_size)``) in which
    some dimension of ``dims`` is massive."""
    out = {}
    for layer, peaks in sorted(peaks_by_layer.items()):
        hit = massive(peaks, ratio)[:, list(dims)].any(dim=-1) if dims else torch.zeros(1)
        out[layer] = float(hit.float().mean())
    return out


def var_layers(
    shares: dict[int, float], num_layers: int, min_share: float = DEFAULT_MIN_SHARE
) -> tuple[int, int] | None:
    """Step 4: ``(first, num_layers - 1)``, ``first`` the first layer >= 1 whose share
    reaches ``min_share``; ``None`` if no such layer precedes the last."""
    for layer in range(1, num_layers - 1):
        if shares.get(layer, 0.0) >= min_share:
            return (layer, num_layers - 1)
    return None


def bulk_level(peaks: torch.Tensor) -> float:
    """Median over observations of the median dimension peak (``m`` of step 5)."""
    return float(peaks.median(dim=-1).values.median())


def derive_tau(peaks: torch.Tensor, ratio: float = DEFAULT_RATIO) -> float:
    """Step 5 on ``(observations, hidden_size)`` peaks of the edited layers."""
    return ratio * bulk_level(peaks)


@dataclass(frozen=True)
class TauReport:
    """How a threshold splits the tokens of the edited layers (``phi`` over ``D_sink``)."""

    tau: float
    #: Smallest ``phi`` of the first token (the text sink, BOS where there is one).
    first_token_min: float
    #: Share of image tokens and of the other text tokens above ``tau``.
    image_share: float
    text_share: float
    #: The closest ``phi`` values below and above ``tau`` (the margins of the cut).
    below: float
    above: float
    #: Share of all tokens within 10% of ``tau``: how sensitive the split is.
    near: float


def tau_report(rows: list[tuple[torch.Tensor, torch.Tensor]], tau: float) -> TauReport:
    """``rows``: per observation, ``phi`` ``(tokens,)`` and the image-token mask."""
    if not rows:
        nan = float("nan")
        return TauReport(tau, nan, nan, nan, nan, nan, nan)
    phi = torch.cat([p for p, _ in rows])
    image = torch.cat([m for _, m in rows])
    first = torch.zeros_like(image)
    offset = 0
    for p, _ in rows:
        first[offset] = True
        offset += p.numel()
    text = ~image & ~first
    lower, upper = phi[phi <= tau], phi[phi > tau]

    def share(mask: torch.Tensor) -> float:
        return float((phi[mask] > tau).float().mean()) if mask.any() else float("nan")

    return TauReport(
        tau=tau,
        first_token_min=float(phi[first].min()),
        image_share=share(image),
        text_share=share(text),
        below=float(lower.max()) if lower.numel() else float("nan"),
        above=float(upper.min()) if upper.numel() else float("nan"),
        near=float(((phi - tau).abs() <= 0.1 * tau).float().mean()),
    )
