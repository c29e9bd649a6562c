"""The one small interface every decoding strategy implements.

A strategy is a name, a typed parameter model and a few capability flags. The same
validated parameters drive the reference engine (``decoding.reference``) and the served
path (``decoding.engine``), so a request means the same thing in both.
"""

from __future__ import annotations

from abc import ABC
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: unknown keys are errors, values are strict."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoParams(StrategyParams):
    """For strategies without parameters."""


class Strategy(ABC):
    """A decoding strategy.

    Subclasses set the class attributes and register themselves with
    :func:`decoding.strategies.registry.register_strategy`. They hold no per-request
    state: requests are described by an instance of ``Params``.
    """

    #: Name used in requests (``decoding.strategy``) and as the ``strategy`` metric label.
    name: ClassVar[str]
    #: Parameter model; its field defaults are the paper's defaults.
    Params: ClassVar[type[StrategyParams]] = NoParams
    #: The strategy contrasts against or reads the image, so a text-only request is an error.
    needs_image: ClassVar[bool] = False
    #: Sampling options the strategy cannot honour, each mapped to why (for the 400 message).
    unsupported_sampling: ClassVar[dict[str, str]] = {}
    #: Engine work of one request relative to plain decoding of the same answer (forward
    #: passes per generated token): drain time and admission budgets are sized by it.
    cost_factor: ClassVar[float] = 1.0

    @classmethod
    def cost(cls, params: StrategyParams) -> float:
        """Expected engine work of one request with ``params``, relative to plain decoding
        (1.0). Strategies whose cost depends on parameters override it."""
        return cls.cost_factor

    @classmethod
    def check_request(cls, params: StrategyParams, request: dict[str, Any]) -> None:
        """Reject combinations of this strategy with other request fields.

        ``request`` is the OpenAI request body (without ``decoding``). Raise
        :class:`decoding.strategies.errors.DecodingParamError` on a bad combination.
        The default checks ``unsupported_sampling`` against the body.
        """
        from decoding.strategies.errors import DecodingParamError

        for key, why in cls.unsupported_sampling.items():
            if request.get(key) not in (None, False):
                raise DecodingParamError(
                    f"strategy {cls.name!r} does not support {key}={request[key]!r}: {why}",
                    param=key,
                )


#: Request options the paired (main + contrast) engine requests of vcd/avc/damro cannot
#: honour; shared so that the three strategies reject them alike.
CONTRASTIVE_UNSUPPORTED: dict[str, str] = {
    "use_beam_search": "contrastive decoding samples or decodes greedily, not by beam search",
    "prompt_logprobs": "the prompt is scored by two requests; ask for output logprobs instead",
    "allowed_token_ids": "the contrastive pair reserves a control token that must stay allowed",
}
