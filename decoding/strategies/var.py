"""``var``: Visual Attention Redistribution from attention sinks onto image tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

from decoding.strategies.base import (
    BenchTarget,
    EngineNeeds,
    Family,
    Graphs,
    Strategy,
    StrategyParams,
    param,
)
from decoding.strategies.registry import register_strategy
from decoding.wire import ATTENTION, FORWARD, VarSettings

if TYPE_CHECKING:
    from decoding.profiles import ModelProfile

SRC = "seilk/VisAttnSink 98e62d6 A_exps/lv1.5_7b.yml (paper meanings, issue #5)"


class VARParams(StrategyParams):
    """VAR parameters in the PAPER's meaning.

    Mapping to the official code (VisAttnSink issue #5): ``rho_code = 1 - rho`` and
    ``p_code = 1 - p``. The released LLaVA-1.5 config (``rho_code 0.5, p_code 0.6``)
    is ``rho = 0.5, p = 0.4``.
    """

    p: float = param(
        0.4,
        "Fraction of the sink attention moved onto non-sink image tokens; 0 = no change.",
        SRC,
        ge=0.0,
        le=1.0,
    )
    rho: float = param(
        0.5,
        "A row is image-centric if its non-sink share of image attention is >= rho "
        "(paper: 0.5 hallucination tasks, 0.8 general, 0.9 vision-centric).",
        SRC,
        ge=0.0,
        le=1.0,
    )
    tau: float | None = param(
        None,
        "Sink threshold on phi = max|x_d| / RMS(x); null = the model profile's "
        "(20 for LLaVA-1.5 7B/13B).",
        "VAR paper Sec. 3.1 (tau = 20)",
        gt=0.0,
        le=1000.0,
    )
    summ: float = param(
        0.2, "Minimum total image attention of a row to be edited.", SRC, ge=0.0, le=1.0
    )


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
    summary = "moves attention from sink tokens onto the image"
    order = 50
    family = Family.ATTENTION_EDIT
    Params = VARParams
    needs_image = True
    engine = EngineNeeds(
        hooks=frozenset({("var", FORWARD), ("var", ATTENTION)}),
        speculative_decoding=False,
        # Sinks are read by pre-hooks on decoder layers inside the compiled language model.
        cuda_graphs=Graphs.EAGER,
        cost_factor=1.5,
        private_kv=True,
    )
    bench_target = BenchTarget("none", 0.8)

    @classmethod
    def unavailable_on(cls, profile: ModelProfile | None, no_profile: str) -> str | None:
        # Sink dimensions and threshold are per model: never guessed.
        if profile is None:
            return f"VAR needs the model's sink dimensions: {no_profile}"
        return None if profile.var_calibrated else profile.var_missing_reason()

    @classmethod
    def engine_settings(
        cls, params: StrategyParams, profile: ModelProfile, num_layers: int
    ) -> VarSettings:
        assert isinstance(params, VARParams)
        profile.require_var()
        if profile.image_token_id is None:
            raise ValueError(f"model profile {profile.name!r} has no image-token id")
        return VarSettings(
            strategy=cls.name,
            p=params.p,
            rho=params.rho,
            summ=params.summ,
            tau=profile.sink_tau if params.tau is None else params.tau,
            dims=tuple(profile.sink_dims),
            # As the reference: the profile's range, within the model's layers.
            layers=tuple(i for i in profile.var_layer_set() if i < num_layers),
            image_token_id=int(profile.image_token_id),
        )
