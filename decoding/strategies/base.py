"""What a strategy declares: everything the server, the engine, the chart, the benchmarks
and the evaluators know about it comes from one class in one module.

A declaration is a :class:`Strategy` subclass registered with
:func:`decoding.strategies.registry.register_strategy`. It states the strategy's name and
family, its parameters (pydantic, each with a description, the paper's default and its
source), the request options it refuses and why, its engine needs
(:class:`EngineNeeds`), its benchmark target, and, by family:

* contrastive: the contrast input (:mod:`decoding.strategies.contrast`);
* attention edit: :meth:`Strategy.engine_settings`, the typed engine settings
  (:mod:`decoding.wire`) of one request.

Nothing here imports vLLM or torch: the HTTP layer validates requests with it, the chart
generator reads it, and the engine derives its flags and checks from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from decoding.strategies.errors import DecodingParamError
from decoding.wire import LOGITS

if TYPE_CHECKING:
    from decoding.profiles import ModelProfile
    from decoding.strategies.contrast import ContrastInput
    from decoding.wire import EngineSettings, Need


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: unknown keys are errors, values are strict."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoParams(StrategyParams):
    """For strategies without parameters."""


def param(default: Any, description: str, source: str, **constraints: Any) -> Any:
    """A parameter field: ``default`` is the paper's value, ``source`` where it is stated
    (both appear in ``GET /v1/decoding/strategies``)."""
    return Field(
        default=default,
        description=description,
        json_schema_extra={"paper_default": default, "source": source},
        **constraints,
    )


class Family(StrEnum):
    """How a strategy runs: the engine has one runner per family."""

    #: One engine request, as sent.
    PLAIN = "plain"
    #: A main and a contrast engine request whose logits are combined every step.
    CONTRASTIVE = "contrastive"
    #: A beam search orchestrated in the API process over one-token engine requests.
    BEAM_SEARCH = "beam_search"
    #: One engine request whose attention the engine edits.
    ATTENTION_EDIT = "attention_edit"


class Graphs(StrEnum):
    """The mode a step holding a strategy's rows runs in (the engine chooses it per step;
    steps without such rows keep the engine's full speed)."""

    #: FULL CUDA graphs: only hooks outside the captured model (``compute_logits``,
    #: ``embed_multimodal``, logits processors).
    FULL = "FULL"
    #: PIECEWISE graphs only: attention-backend hooks run between graph pieces.
    PIECEWISE = "PIECEWISE"
    #: Eager mode: hooks inside the compiled language model (decoder-layer probes) or
    #: multi-pass forwards that piecewise graphs would replay from stale addresses.
    EAGER = "NONE"

    @property
    def rank(self) -> int:
        return {"FULL": 0, "PIECEWISE": 1, "NONE": 2}[self.value]


@dataclass(frozen=True)
class EngineNeeds:
    """What a strategy requires of the engine; the server and the chart derive flags and
    start-up checks from it (:mod:`decoding.strategies.rules`)."""

    #: Engine hooks (mechanism, hook point) its requests' rows need (:mod:`decoding.wire`).
    hooks: frozenset[Need] = frozenset()
    #: Needs prefix caching (requests resubmit shared prefixes every step).
    prefix_caching: bool = False
    #: Needs ``--max-logprobs`` at least this (-1 = the vocabulary); None = any.
    max_logprobs: int | None = None
    #: Correct with speculative decoding.
    speculative_decoding: bool = True
    #: Mode of the steps that hold its rows (at their most demanding: VAR's and AVC's
    #: prefill steps run eagerly, their decode steps as the table in
    #: ``decoding/engine/worker/graphs.py`` says).
    cuda_graphs: Graphs = Graphs.FULL
    #: Correct with ``tensor_parallel_size > 1`` (hooks that read all heads are not).
    tensor_parallel: bool = True
    #: Engine work relative to plain decoding of the same answer, at default parameters.
    cost_factor: float = 1.0
    #: The request's KV is edited: it never reads the prefix cache and its blocks are
    #: salted so no other request reuses them.
    private_kv: bool = False
    #: Its runner fans one request out into many independent engine requests (OPERA's
    #: look-aheads): those are paced so that plain requests keep room in the engine.
    fans_out: bool = False
    #: KV block size on CPU (None = vLLM's); small blocks let resubmitted prefixes hit.
    cpu_block_size: int | None = None
    #: Why, per need, for start-up messages.
    why: str = ""


@dataclass(frozen=True)
class BenchTarget:
    """A benchmark target: tokens/s at concurrency 16 at least ``ratio`` x ``against``."""

    against: str
    ratio: float


class Strategy:
    """A decoding strategy's declaration (class attributes; no per-request state:
    requests are described by an instance of ``Params``)."""

    #: Name used in requests (``decoding.strategy``) and as the ``strategy`` metric label.
    name: ClassVar[str]
    #: One line for tables (README, docs, ``/v1/decoding/strategies``).
    summary: ClassVar[str] = ""
    #: Position in user-facing lists (``none`` is 0).
    order: ClassVar[int] = 100
    family: ClassVar[Family] = Family.PLAIN
    #: Parameter model; its field defaults are the paper's defaults.
    Params: ClassVar[type[StrategyParams]] = NoParams
    #: The strategy contrasts against or reads the image, so a text-only request is an error.
    needs_image: ClassVar[bool] = False
    #: Request options the strategy refuses (any value but null/false), each with why.
    rejects: ClassVar[dict[str, str]] = {}
    engine: ClassVar[EngineNeeds] = EngineNeeds()
    bench_target: ClassVar[BenchTarget | None] = None
    #: Contrastive family: the contrast input.
    contrast: ClassVar[ContrastInput | None] = None
    #: Engine runner name; None = the family's runner.
    runner: ClassVar[str | None] = None

    @classmethod
    def runner_name(cls) -> str:
        return cls.runner or {
            Family.PLAIN: "single",
            Family.ATTENTION_EDIT: "single",
            Family.CONTRASTIVE: "pair",
        }.get(cls.family, cls.family.value)

    @classmethod
    def cost(cls, params: StrategyParams) -> float:
        """Expected engine work of one request with ``params``, relative to plain decoding
        (1.0). Strategies whose cost depends on parameters override it."""
        return cls.engine.cost_factor

    @classmethod
    def check_request(cls, params: StrategyParams, request: dict[str, Any]) -> None:
        """Refuse combinations of this strategy with other request fields; never changes
        ``request`` (the OpenAI body without ``decoding``). Raises
        :class:`DecodingParamError` naming the field."""
        for key, why in cls.rejects.items():
            if request.get(key) not in (None, False):
                raise DecodingParamError(
                    f"strategy {cls.name!r} does not support {key}={request[key]!r}: {why}",
                    param=key,
                )

    @classmethod
    def adjust_request(cls, params: StrategyParams, request: dict[str, Any]) -> dict[str, Any]:
        """The request as the engine should see it (a new dict; default: unchanged)."""
        return request

    @classmethod
    def unavailable_on(cls, profile: ModelProfile | None, no_profile: str) -> str | None:
        """Why this strategy cannot serve a model with ``profile`` (None: no bundled
        profile matches, ``no_profile`` says why), or None. Checked at start-up; the
        deployment then answers its requests with a 400 quoting the reason."""
        return None

    @classmethod
    def engine_settings(
        cls, params: StrategyParams, profile: ModelProfile, num_layers: int
    ) -> EngineSettings | None:
        """Single-request families: the engine settings of one request (None = plain)."""
        return None

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The declaration as data (``/v1/decoding/strategies``, the chart, the docs)."""
        e = cls.engine
        return {
            "name": cls.name,
            "summary": cls.summary,
            "family": cls.family.value,
            "needs_image": cls.needs_image,
            "rejects": dict(cls.rejects),
            "parameters": cls.Params.model_json_schema(),
            "engine": {
                "hooks": sorted(f"{m}.{p}" for m, p in e.hooks),
                "prefix_caching": e.prefix_caching,
                "max_logprobs": e.max_logprobs,
                "speculative_decoding": e.speculative_decoding,
                "cuda_graphs": e.cuda_graphs.value,
                "tensor_parallel": e.tensor_parallel,
                "cost_factor": e.cost_factor,
            },
        }


#: Request options the paired (main + contrast) engine requests of contrastive strategies
#: cannot honour; shared so that they reject them alike.
CONTRASTIVE_REJECTS: dict[str, str] = {
    "use_beam_search": "contrastive decoding samples or decodes greedily, not by beam search",
    "prompt_logprobs": "the prompt is scored by two requests; ask for output logprobs instead",
    "allowed_token_ids": "the contrastive pair reserves a control token that must stay allowed",
}


def pair_needs(**changes: Any) -> EngineNeeds:
    """Engine needs of a contrastive strategy: two engine requests per answer, coupled
    every step in ``compute_logits``; ``changes`` adds its contrast input's needs."""
    base: dict[str, Any] = {
        "hooks": frozenset({("cd", LOGITS)}),
        "speculative_decoding": False,
        "cost_factor": 2.0,
    }
    hooks = changes.pop("hooks", frozenset())
    return EngineNeeds(**{**base, **changes, "hooks": base["hooks"] | hooks})
