"""``opera``: beam search with an over-trust penalty and retrospection (rollback)."""

from __future__ import annotations

from typing import Any

from decoding.strategies.base import (
    BenchTarget,
    EngineNeeds,
    Family,
    Graphs,
    Strategy,
    StrategyParams,
    param,
)
from decoding.strategies.errors import DecodingParamError
from decoding.strategies.registry import register_strategy
from decoding.wire import ATTENTION, LOGITS

SRC = "shikiw/OPERA 61426efe transformers-4.29.2/src/transformers/generation/utils.py:1157-1162"


class OPERAParams(StrategyParams):
    """OPERA parameters; defaults are the official LLaVA-1.5 setting (5 beams, 5
    candidates, scale 50, threshold 15, penalty weight 1)."""

    alpha: float = param(
        1.0, "Penalty weight (official penalty_weights); 0 = no penalty.", SRC, ge=0.0, le=100.0
    )
    rollback: bool = param(True, "Retrospection-allocation (rollback) on/off.", SRC)
    num_beams: int = param(
        5,
        "Beams. 1 = greedy OPERA: one hypothesis, same penalty and rollback.",
        SRC,
        ge=1,
        le=16,
    )
    num_candidates: int = param(
        5,
        "Candidates per beam (official num_attn_candidates); also the rollback budget per "
        "position. The official fast setting is 1 (with threshold 25).",
        SRC,
        ge=1,
        le=32,
    )
    scale_factor: float = param(
        50.0, "Attention scale sigma of the column product.", SRC, gt=0.0, le=1000.0
    )
    threshold: int = param(
        15,
        "A location must recur MORE than this many times in every beam to roll back.",
        SRC,
        ge=0,
        le=1024,
    )
    window: int = param(
        512,
        "Bound of the location history and of how far back a rollback may go.",
        SRC,
        ge=1,
        le=8192,
    )


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
    summary = "beam search with over-trust penalty and rollback"
    order = 40
    family = Family.BEAM_SEARCH
    runner = "opera"
    Params = OPERAParams
    needs_image = True
    rejects = {"use_beam_search": "OPERA is itself a beam search (set decoding.num_beams)"}
    engine = EngineNeeds(
        hooks=frozenset({("opera", ATTENTION), ("opera", LOGITS)}),
        # Every step resubmits prompt + beam: without prefix caching each look-ahead
        # re-runs the whole prompt.
        prefix_caching=True,
        # The look-ahead's attention over the answer returns as log-probabilities.
        max_logprobs=-1,
        speculative_decoding=False,
        # The probe is an attention-backend hook; FULL graphs (which one-token
        # look-ahead batches would get) skip it.
        cuda_graphs=Graphs.PIECEWISE,
        # Max over heads needs every head.
        tensor_parallel=False,
        cost_factor=30.0,
        fans_out=True,
        cpu_block_size=32,
    )
    bench_target = BenchTarget("beam-5", 0.3)

    @classmethod
    def cost(cls, params: StrategyParams) -> float:
        # Each step: num_beams x num_candidates one-token look-ahead requests plus the
        # beams' own, each a short prefill over the cached prefix.
        assert isinstance(params, OPERAParams)
        return float(params.num_beams * (1 + params.num_candidates))

    @classmethod
    def check_request(cls, params: StrategyParams, request: dict[str, Any]) -> None:
        assert isinstance(params, OPERAParams)
        super().check_request(params, request)
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

    @classmethod
    def adjust_request(cls, params: StrategyParams, request: dict[str, Any]) -> dict[str, Any]:
        n = request.get("n")
        if isinstance(n, int) and n > 1 and request.get("temperature") in (0, 0.0):
            # vLLM refuses n > 1 with greedy sampling before the strategy runs; OPERA never
            # samples, so the temperature is meaningless and is left out.
            return {k: v for k, v in request.items() if k != "temperature"}
        return request
