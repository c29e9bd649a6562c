"""``opera``: beam search with an over-trust penalty and retrospection (rollback)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from decoding.strategies.base import Strategy, StrategyParams
from decoding.strategies.registry import register_strategy


class OPERAParams(StrategyParams):
    """OPERA parameters; defaults are the official LLaVA-1.5 setting (5 beams, 5
    candidates, scale 50, threshold 15, penalty weight 1)."""

    #: Penalty weight (official ``penalty_weights``); 0 = no penalty.
    alpha: float = Field(default=1.0, ge=0.0, le=100.0)
    #: Retrospection-allocation (rollback) on/off.
    rollback: bool = True
    #: Beams. 1 = "greedy OPERA": one hypothesis, same penalty and rollback.
    num_beams: int = Field(default=5, ge=1, le=16)
    #: Candidates per beam (official ``num_attn_candidates``); also the rollback budget
    #: per position. The official "fast" setting is 1 (with threshold 25).
    num_candidates: int = Field(default=5, ge=1, le=32)
    #: Attention scale sigma of the column product.
    scale_factor: float = Field(default=50.0, gt=0.0, le=1000.0)
    #: A location must recur MORE than this many times in every beam to roll back.
    threshold: int = Field(default=15, ge=0, le=1024)
    #: Bound of the location history and of how far back a rollback may go.
    window: int = Field(default=512, ge=1, le=8192)


@register_strategy
class OPERAStrategy(Strategy):
    """OPERA (Over-trust Penalty and Retrospection-Allocation).

    Paper: Huang et al., CVPR 2024, arXiv 2311.17911. Official code: ``shikiw/OPERA``
    commit ``61426efe``, ``transformers-4.29.2/src/transformers/generation/utils.py``
    (``opera_beam_search``, lines 3116-3674; defaults ``:1157-1162``).

    Beam search; per step and beam the top ``num_candidates`` tokens are scored by their
    log-probability plus, while the answer is at most 10 tokens long, ``alpha`` times
    their last-layer attention mass on the image, and afterwards minus ``alpha`` times the
    over-trust score of the last-layer (max over heads) attention window over the answer;
    other tokens are excluded. Rollback returns to a repeatedly over-trusted "summary"
    token and re-chooses the next one (:mod:`decoding.cores.opera`).

    ``num_beams = 1`` (the official code asserts beams > 1): one hypothesis with the same
    candidates, penalty and rollback, i.e. greedy decoding over the penalised candidate
    scores; with ``alpha = 0`` and no rollback it equals plain greedy decoding.

    Deviations: candidate scores are full-vocabulary log-probabilities plus the penalty
    (official: penalised raw logits renormalised over the candidates), so ``alpha = 0``
    without rollback is exactly beam search restricted to each beam's top candidates
    (equal to ``generate(num_beams=k)`` when ``num_candidates >= num_beams + 1``); length
    normalisation by generated length as current ``transformers``; float64 scores; the
    other rule fixes listed in :mod:`decoding.cores.opera`. Sampling is not supported;
    ``n`` up to ``num_beams`` returns the ``n`` best finished hypotheses.
    """

    name = "opera"
    Params = OPERAParams
    needs_image = True
    unsupported_sampling = {"top_p": "OPERA is a beam search and does not sample"}

    cost_factor = 30.0

    @classmethod
    def cost(cls, params: StrategyParams) -> float:
        # Each step: num_beams x num_candidates one-token look-ahead requests (plus the
        # beams' own), each a short prefill over the cached prefix.
        assert isinstance(params, OPERAParams)
        return float(params.num_beams * (1 + params.num_candidates))

    @classmethod
    def check_request(cls, params: StrategyParams, request: dict[str, Any]) -> None:
        from decoding.strategies.errors import DecodingParamError

        temperature = request.get("temperature")
        if temperature not in (None, 0, 0.0):
            raise DecodingParamError(
                f"strategy 'opera' does not support temperature={temperature!r}: OPERA is a "
                "beam search and does not sample (send temperature 0 or omit it)",
                param="temperature",
            )
        top_p = request.get("top_p")
        if top_p not in (None, 1, 1.0):
            raise DecodingParamError(
                f"strategy 'opera' does not support top_p={top_p!r}: OPERA is a beam search "
                "and does not sample",
                param="top_p",
            )
        n = request.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n > params.num_beams:
            raise DecodingParamError(
                f"strategy 'opera' returns at most num_beams={params.num_beams} answers "
                f"(the best finished hypotheses), got n={n}",
                param="n",
            )
        if isinstance(n, int) and n > 1 and temperature in (0, 0.0):
            # vLLM refuses n > 1 with greedy sampling before the strategy runs; OPERA never
            # samples, so the temperature is meaningless and is dropped from the request.
            del request["temperature"]
