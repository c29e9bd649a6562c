"""What runners report about a request, named once (no vLLM): the observer interface the
server implements, the events it counts and the kinds of extra engine work.

``server.metrics`` maps every member to a Prometheus series; a test checks that no
member lacks one, so a runner cannot emit a name the server would not count.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol


class Event(StrEnum):
    """Counted occurrences (``lucid:<series>_total``)."""

    #: OPERA went back to a summary token and re-chose (``lucid:rollbacks_total``).
    ROLLBACK = "rollback"
    #: A contrastive pair was restarted because the engine did not schedule both rows
    #: together (``lucid:cd_uncoupled_steps_total``).
    UNCOUPLED_STEP = "uncoupled_step"


class ExtraTokens(StrEnum):
    """Kinds of tokens run through the model beyond the request's own sequence
    (``lucid:extra_forward_tokens_total{kind}``)."""

    CONTRAST_PREFILL = "contrast_prefill"
    CONTRAST_DECODE = "contrast_decode"
    CANDIDATE = "candidate"
    ROLLBACK = "rollback"


class StrategyObserver(Protocol):
    """Receives per-request facts for metrics; implemented by the server."""

    def request_finished(
        self,
        strategy: str,
        *,
        ttft: float | None,
        e2e: float,
        finish_reason: str,
        generation_tokens: int,
    ) -> None: ...

    def extra_forward_tokens(self, strategy: str, kind: ExtraTokens, tokens: int) -> None: ...

    def event(self, strategy: str, name: Event, count: int = 1) -> None: ...
