"""Which execution mode a step runs in, chosen per step from the rows it holds.

Plain steps keep the engine's full speed: torch.compile, and on GPU FULL CUDA graphs for
uniform decode batches and PIECEWISE graphs otherwise. A step that holds flagged rows
gets the mode their hooks need:

========================================= =========== ==========================
rows in the step                          GPU graphs  compiled language model
========================================= =========== ==========================
none flagged, or only ``logits``/``embed``  any        yes
hooks (contrastive pairs, DAMRO)
``attention`` hooks (OPERA probes, VAR      PIECEWISE   yes (attention is an opaque
edits at decode)                                        custom op, its Python runs)
``forward`` probes or passes (VAR sinks     PIECEWISE   no: ``skip_compiled`` for the
at prefill, AVC's two-pass prefill)                     step (:func:`eager_step`)
========================================= =========== ==========================

FULL graphs replay without any Python, so :func:`install_dispatch_guard` excludes FULL
for steps with ``attention``/``forward`` needs; ``forward`` hooks that must see the
language model's layers (decoder-layer pre-hooks) or run it twice set ``skip_compiled``
for their step, which runs the language model eagerly (its piecewise graphs live inside
the compiled callable, so none is replayed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from decoding.engine.worker.rows import STEP
from decoding.wire import ATTENTION, FORWARD

log = logging.getLogger("lucid.engine")

#: The modes each kind of step runs in, for the start-up log and ``/version``.
STEP_MODES = {
    "plain": "compiled; FULL CUDA graphs for uniform decode, PIECEWISE otherwise",
    "logits/embed hooks (vcd, damro)": "compiled; CUDA graphs as plain steps",
    "attention hooks (opera, var decode)": "compiled; PIECEWISE CUDA graphs (FULL excluded)",
    "forward probes or passes (var prefill, avc contrast prefill)": "eager (skip_compiled)",
}


def step_excludes_full() -> bool:
    """True when a row of the step needs a hook that FULL CUDA graphs would skip."""
    for row in STEP.rows.values():
        needs = row.config.needs() if row.config is not None else frozenset()
        if any(point in (ATTENTION, FORWARD) for _, point in needs):
            return True
    return False


@contextmanager
def eager_step() -> Iterator[None]:
    """Run the language model of this step without its compiled code."""
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if not is_forward_context_available():
        yield
        return
    ctx = get_forward_context()
    before = ctx.skip_compiled
    ctx.skip_compiled = True
    try:
        yield
    finally:
        ctx.skip_compiled = before


def guarded_dispatch(dispatch: Any) -> Any:
    """Wrap ``CudagraphDispatcher.dispatch``: FULL is excluded for steps whose rows need
    attention or forward hooks (``STEP`` is current: the row carrier's ``update_state``
    runs before the runner dispatches)."""
    from vllm.config import CUDAGraphMode

    def dispatch_for_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if STEP.rows and step_excludes_full():
            invalid = set(kwargs.get("invalid_modes") or ())
            kwargs["invalid_modes"] = invalid | {CUDAGraphMode.FULL}
        return dispatch(self, *args, **kwargs)

    dispatch_for_step.__wrapped__ = dispatch  # type: ignore[attr-defined]
    return dispatch_for_step


def install_dispatch_guard() -> None:
    """Patch vLLM's CUDA-graph dispatcher (GPU engines only; idempotent)."""
    from vllm.v1.cudagraph_dispatcher import CudagraphDispatcher

    if not hasattr(CudagraphDispatcher.dispatch, "__wrapped__"):
        CudagraphDispatcher.dispatch = guarded_dispatch(CudagraphDispatcher.dispatch)
