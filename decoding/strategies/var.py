"""``var``: Visual Attention Redistribution from attention sinks onto image tokens."""

from __future__ import annotations

from pydantic import Field

from decoding.strategies.base import Strategy, StrategyParams
from decoding.strategies.registry import register_strategy


class VARParams(StrategyParams):
    """VAR parameters in the PAPER's meaning.

    Mapping to the official code (VisAttnSink issue #5): ``rho_code = 1 - rho`` and
    ``p_code = 1 - p``. The released LLaVA-1.5 config (``rho_code 0.5, p_code 0.6``)
    is ``rho = 0.5, p = 0.4``.
    """

    #: Fraction of the sink attention moved onto non-sink image tokens; 0 = no change.
    p: float = Field(default=0.4, ge=0.0, le=1.0)
    #: A row is image-centric if its non-sink share of image attention is >= rho
    #: (paper: 0.5 hallucination tasks, 0.8 general, 0.9 vision-centric).
    rho: float = Field(default=0.5, ge=0.0, le=1.0)
    #: Sink threshold on phi; None = the model profile's (20 for LLaVA-1.5 7B/13B).
    tau: float | None = Field(default=None, gt=0.0, le=1000.0)
    #: Minimum total image attention of a row to be edited.
    summ: float = Field(default=0.2, ge=0.0, le=1.0)


@register_strategy
class VARStrategy(Strategy):
    """VAR ("See What You Are Told: Visual Attention Sink in Large Multimodal Models").

    Paper: Kang, Kim, Kim, Hwang, ICLR 2025, arXiv 2503.03321. Official code:
    ``seilk/VisAttnSink`` commit ``98e62d6`` (``src/logic/logic.py``,
    ``src/logic/constants.py``, ``A_exps/lv1.5_7b.yml``). Defaults: tau 20 on dims
    {1415, 2533} (7B), rho 0.5, summ 0.2, p 0.4 (= code p 0.6).

    Single pass. At prefill the residual-stream input of each profile layer gives the sink
    tokens (``phi > tau`` in the profile's sink dimensions); in those layers, for every
    head and query (prefill: text tokens after the image; decoding: the new token) whose
    attention is image-centric, a fraction ``p`` of the attention on all sinks moves to
    the non-sink image tokens, post-softmax (:mod:`decoding.cores.var`).

    Deviations: paper meanings of ``rho``/``p`` (see ``VARParams``); sinks recomputed per
    request (official reuses the first sample's); the last decoder layer is not edited
    (paper; the official flag is ineffective); layers, dims and default tau come from the
    model profile (``decoding/profiles``).
    """

    name = "var"
    Params = VARParams
    needs_image = True
    cost_factor = 1.5
