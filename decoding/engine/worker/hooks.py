"""The engine's hook points and the hooks registered at them, in an explicit order.

Each worker module (one per engine-side mechanism) registers its functions with
:func:`register` when it is imported; :mod:`decoding.engine.worker.plugin` imports them
all. A hook is registered for a *mechanism* at a *point* (:mod:`decoding.wire`): engine
settings name the (mechanism, point) pairs their rows need, and a flagged row whose needs
are not all registered is failed (:func:`missing`), never decoded plainly.

Order within a point (lower first), fixed here rather than by import order:

========== ================ ======= ================================================
point      mechanism        order   why this position
========== ================ ======= ================================================
forward    ``var``          10      outermost: plans the step once, probes both passes
forward    ``blind_mask``   20      AVC's two-pass prefill, inside VAR's plan
attention  ``blind_mask``   10      records the clean pass's attention (read only)
attention  ``opera``        20      reads the last layer's attention (read only)
attention  ``var``          30      rewrites the output of VAR rows in place
logits     ``cd``           10      couples contrastive pairs
logits     ``opera``        20      encodes look-ahead probes (its rows are not pairs)
embed      ``outliers``     10      DAMRO's top-k vision tokens
========== ================ ======= ================================================

Hooks only act on rows flagged in :data:`decoding.engine.worker.rows.STEP`, so requests
without a strategy pay one dictionary check per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from decoding.wire import ATTENTION, EMBED, FORWARD, HOOK_POINTS, LOGITS, Need

#: ``fn(model, logits) -> logits`` after the language model head (rows = batch order).
LogitsHook = Callable[[Any, torch.Tensor], torch.Tensor]
#: ``fn(impl, layer, query, kv_cache, attn_metadata, output)`` after an attention layer.
AttentionHook = Callable[[Any, Any, torch.Tensor, torch.Tensor, Any, torch.Tensor], None]
#: ``fn(model, run, embeds) -> hidden`` around the language model's forward: call
#: ``run(embeds)`` (possibly twice) with the step's input embeddings and return its result.
ForwardHook = Callable[[Any, Callable[[torch.Tensor | None], Any], Any], Any]
#: ``fn(model, counts, embed, kwargs) -> features`` for image items with a ``lucid_topk``.
EmbedHook = Callable[[Any, Any, Callable[..., Any], dict[str, Any]], Any]


@dataclass(frozen=True)
class Hook:
    point: str
    mechanism: str
    order: int
    fn: Callable[..., Any]


_HOOKS: dict[str, list[Hook]] = {point: [] for point in HOOK_POINTS}


def register(point: str, mechanism: str, order: int) -> Callable[[Callable], Callable]:
    """Decorator: run ``fn`` at ``point`` for ``mechanism``'s rows, at position ``order``."""
    if point not in _HOOKS:
        raise ValueError(f"unknown hook point {point!r}; points: {', '.join(HOOK_POINTS)}")

    def deco(fn: Callable) -> Callable:
        hooks = [h for h in _HOOKS[point] if h.mechanism != mechanism]
        hooks.append(Hook(point, mechanism, order, fn))
        _HOOKS[point] = sorted(hooks, key=lambda h: h.order)
        return fn

    return deco


def unregister(mechanism: str, point: str | None = None) -> None:
    """Remove ``mechanism``'s hooks (at ``point``, or everywhere)."""
    for p in [point] if point else HOOK_POINTS:
        _HOOKS[p] = [h for h in _HOOKS[p] if h.mechanism != mechanism]


def at(point: str) -> list[Callable[..., Any]]:
    """The hooks of ``point`` in order."""
    return [h.fn for h in _HOOKS[point]]


def registered() -> frozenset[Need]:
    return frozenset((h.mechanism, h.point) for hooks in _HOOKS.values() for h in hooks)


def missing(needs: frozenset[Need]) -> frozenset[Need]:
    """The needs no registered hook covers."""
    return needs - registered()


def table() -> list[tuple[str, str, int]]:
    """(point, mechanism, order) of every registered hook, for the start-up log."""
    return [(h.point, h.mechanism, h.order) for p in HOOK_POINTS for h in _HOOKS[p]]


__all__ = ["ATTENTION", "EMBED", "FORWARD", "LOGITS", "at", "missing", "register", "table"]
