"""Which request each batch row belongs to, for code that runs inside the forward pass.

vLLM's model runner (V1, the runner the CPU build uses and the one this server pins on
GPU) gives the model no per-request information. Its logits processors, however, are
told about every request entering, leaving and moving within the persistent batch, and
``update_state`` runs before each step's forward pass. In that runner the persistent
batch index of a request is also its row in ``compute_logits`` and its position in the
attention metadata (``query_start_loc``), so :class:`StepRows`, registered as a logits
processor, doubles as the carrier of per-row strategy settings for the model and the
attention backend during the same step. The processor never edits logits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.sampling_params import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from decoding.wire import ENGINE_KEY, EngineSettings, Need, WireError, decode_engine

log = logging.getLogger("lucid.engine")


@dataclass
class Row:
    """One flagged request in the persistent batch."""

    #: Engine-side settings (:mod:`decoding.wire`); None when they did not decode.
    config: Any
    prompt: list[int]
    #: Live reference to the request's output token list (vLLM appends to it).
    output: list[int]
    #: Per-request scratch state owned by the worker modules (sinks, images, ...).
    state: dict[str, Any] = field(default_factory=dict)
    #: Why the settings did not decode (the row is failed).
    error: str | None = None
    reported: bool = False
    needs: frozenset[Need] | None = None

    @property
    def strategy(self) -> str:
        return self.config.strategy if isinstance(self.config, EngineSettings) else "unknown"

    def unmet(self) -> frozenset[Need]:
        """Needs of this row that no registered hook covers now."""
        from decoding.engine.worker import hooks

        if self.config is None:
            return frozenset({("settings", str(self.error))})
        if self.needs is None:  # settings are frozen: their needs once per request
            self.needs = self.config.needs()
        return hooks.missing(self.needs)


class _Step:
    """The rows of the current persistent batch (index -> Row), for flagged requests."""

    def __init__(self) -> None:
        self.rows: dict[int, Row] = {}

    def of_kind(self, kind: str) -> dict[int, Row]:
        return {i: r for i, r in self.rows.items() if getattr(r.config, "kind", None) == kind}

    def faulty(self) -> dict[int, Row]:
        """Rows that must be failed: their settings did not decode, or a hook they need
        is not registered (checked every step, so a hook lost at run time is caught)."""
        out = {}
        for index, row in self.rows.items():
            unmet = row.unmet()
            if unmet:
                out[index] = row
                if not row.reported:
                    row.reported = True
                    log.error(
                        "strategy %s: no engine hook for %s; the request is failed",
                        row.strategy,
                        ", ".join(f"{m}.{p}" for m, p in sorted(unmet)),
                    )
        return out


#: The engine process's single view of the batch (one model runner per process).
STEP = _Step()


def make_row(params: SamplingParams | None, prompt: Any, output: list[int]) -> Row | None:
    """The row of a request with engine settings (None for a plain request)."""
    extra = params.extra_args if params is not None else None
    if not extra or ENGINE_KEY not in extra:
        return None
    try:
        return Row(decode_engine(extra[ENGINE_KEY]), list(prompt or []), output)
    except WireError as exc:
        return Row(None, list(prompt or []), output, error=str(exc))


class StepRows(LogitsProcessor):
    """Tracks flagged requests by persistent-batch index; returns logits unchanged."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        STEP.rows = {}
        self.rows = STEP.rows

    def is_argmax_invariant(self) -> bool:
        # True keeps it off the greedy path entirely (it never changes logits).
        return True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        rows = self.rows
        for index in batch_update.removed:
            rows.pop(index, None)
        for index, params, prompt, output in batch_update.added:
            row = make_row(params, prompt, output)
            if row is None:
                rows.pop(index, None)
            else:
                rows[index] = row
        for a, b, direction in batch_update.moved:
            ra, rb = rows.pop(a, None), rows.pop(b, None)
            if ra is not None:
                rows[b] = ra
            if direction == MoveDirectionality.SWAP and rb is not None:
                rows[a] = rb
