"""The per-step execution mode: which steps may replay FULL CUDA graphs, which run the
language model eagerly (no GPU needed: the dispatcher guard wraps a stand-in with the
signature of vLLM's ``CudagraphDispatcher.dispatch``)."""

from __future__ import annotations

import inspect

import pytest
from vllm.config import CUDAGraphMode
from vllm.v1.cudagraph_dispatcher import CudagraphDispatcher

from decoding.engine.worker import graphs
from decoding.engine.worker.rows import STEP, Row
from decoding.wire import OperaProbe, PairSettings, VarSettings

VAR = VarSettings("var", 0.4, 0.5, 0.2, 6.0, (17, 93), (1, 2), 4)
PAIR = PairSettings("vcd", "p", "main", 1.0, 0.1)
AVC = PairSettings("avc", "p", "contrast", contrast="blind_mask")
OPERA = OperaProbe("opera", 3, 10, ((1, 5),), 5)


@pytest.fixture
def step():  # noqa: ANN201
    saved = dict(STEP.rows)
    STEP.rows.clear()
    yield STEP.rows
    STEP.rows.clear()
    STEP.rows.update(saved)


class StandIn:
    """Records what it was asked; same signature as vLLM's dispatcher method."""

    def dispatch(self, num_tokens, uniform_decode=False, has_lora=False, num_active_loras=0,
                 valid_modes=None, invalid_modes=None):  # noqa: ANN001, ANN201  # fmt: skip
        return invalid_modes


def test_stand_in_matches_vllm() -> None:
    ours = list(inspect.signature(StandIn.dispatch).parameters)
    theirs = list(inspect.signature(CudagraphDispatcher.dispatch).parameters)
    assert ours == theirs


@pytest.mark.parametrize(
    ("settings", "full_allowed"),
    [([], True), ([PAIR], True), ([OPERA], False), ([VAR], False), ([PAIR, AVC], False)],
)
def test_full_graphs_only_without_attention_or_forward_hooks(step, settings, full_allowed) -> None:  # noqa: ANN001
    for i, s in enumerate(settings):
        step[i] = Row(s, [1, 4, 2], [])
    guarded = graphs.guarded_dispatch(StandIn.dispatch)
    invalid = guarded(StandIn(), 8, uniform_decode=True)
    assert (invalid is None or CUDAGraphMode.FULL not in invalid) == full_allowed
    # The caller's own exclusions are kept.
    kept = guarded(StandIn(), 8, invalid_modes={CUDAGraphMode.PIECEWISE})
    assert CUDAGraphMode.PIECEWISE in kept


def test_eager_step_sets_and_restores_skip_compiled() -> None:
    from vllm.config import VllmConfig
    from vllm.forward_context import get_forward_context, set_forward_context

    with set_forward_context(None, VllmConfig()):
        assert get_forward_context().skip_compiled is False
        with graphs.eager_step():
            assert get_forward_context().skip_compiled is True
        assert get_forward_context().skip_compiled is False
    with graphs.eager_step():  # outside a step: nothing to set
        pass
