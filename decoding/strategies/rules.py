"""Engine rules derived from the enabled strategies' declarations: the one source the
server (``decoding.engine.frontend``) and the Helm chart (``deploy/helm/lucid/
strategies.json``, generated from :func:`chart_data`) both apply.

A deployment the server cannot run correctly fails at start-up with a message naming
the strategies and the setting, never at request time with a wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from decoding.strategies.base import Graphs, Strategy
from decoding.strategies.registry import get_strategy, strategies


@dataclass(frozen=True)
class EngineRules:
    """What a deployment of ``enabled`` requires of the engine."""

    enabled: tuple[str, ...]
    #: Any strategy acts through engine hooks (hooked model class, row carrier).
    hooked: bool
    #: The strictest mode a step holding the enabled strategies' rows runs in (chosen per
    #: step by the engine; plain steps keep full speed), and which strategies set it.
    cuda_graphs: Graphs
    graphs_set_by: tuple[str, ...]
    #: ``--max-logprobs`` at least (-1 = vocabulary), None = no need.
    max_logprobs: int | None
    cpu_block_size: int | None
    needs_prefix_caching: tuple[str, ...]
    no_speculative: tuple[str, ...]
    no_tensor_parallel: tuple[str, ...]


def rules_for(enabled: list[str] | tuple[str, ...]) -> EngineRules:
    decls: list[type[Strategy]] = [get_strategy(n) for n in enabled]
    graphs = max((d.engine.cuda_graphs for d in decls), key=lambda g: g.rank, default=Graphs.FULL)
    logprobs = [d.engine.max_logprobs for d in decls if d.engine.max_logprobs is not None]
    blocks = [d.engine.cpu_block_size for d in decls if d.engine.cpu_block_size]
    return EngineRules(
        enabled=tuple(enabled),
        hooked=any(d.engine.hooks for d in decls),
        cuda_graphs=graphs,
        graphs_set_by=tuple(d.name for d in decls if d.engine.cuda_graphs == graphs),
        max_logprobs=-1 if -1 in logprobs else max(logprobs, default=None),
        cpu_block_size=min(blocks, default=None),
        needs_prefix_caching=tuple(d.name for d in decls if d.engine.prefix_caching),
        no_speculative=tuple(d.name for d in decls if not d.engine.speculative_decoding),
        no_tensor_parallel=tuple(d.name for d in decls if not d.engine.tensor_parallel),
    )


def deployment_errors(
    rules: EngineRules,
    *,
    speculative: bool,
    tensor_parallel_size: int,
    prefix_caching: bool | None,
    cudagraph_mode: str | None,
) -> list[str]:
    """Why the engine settings cannot serve ``rules.enabled`` correctly (empty: they can).
    ``prefix_caching``/``cudagraph_mode`` None means the engine's default."""
    errors = []
    if speculative and rules.no_speculative:
        errors.append(
            f"speculative decoding is configured, but strategies {', '.join(rules.no_speculative)}"
            " cannot run with it: enable only strategies that can, or drop the speculative config"
        )
    if tensor_parallel_size > 1 and rules.no_tensor_parallel:
        errors.append(
            f"tensor_parallel_size={tensor_parallel_size}, but strategies "
            f"{', '.join(rules.no_tensor_parallel)} read every attention head (one rank holds "
            "a shard): use tensor_parallel_size=1 (data parallelism to scale) or leave them out"
        )
    if prefix_caching is False and rules.needs_prefix_caching:
        errors.append(
            f"prefix caching is off, but strategies {', '.join(rules.needs_prefix_caching)} need "
            "it (every step resubmits the prompt): enable prefix caching or leave them out"
        )
    # Any CUDA-graph mode works: the engine picks each step's mode from its rows
    # (decoding/engine/worker/graphs.py), so ``cudagraph_mode`` is not restricted.
    del cudagraph_mode
    return errors


def chart_data() -> dict[str, Any]:
    """Per-strategy engine needs for the Helm chart (written to strategies.json)."""
    return {
        "strategies": {
            d.name: {
                "order": d.order,
                "costFactor": d.engine.cost_factor,
                "hooked": bool(d.engine.hooks),
                "cudaGraphs": d.engine.cuda_graphs.value,
                "prefixCaching": d.engine.prefix_caching,
                "speculativeDecoding": d.engine.speculative_decoding,
                "tensorParallel": d.engine.tensor_parallel,
            }
            for d in strategies()
        }
    }
