"""Per-request tally of the extra engine work a strategy caused (vLLM-free).

The HTTP layer opens a :class:`Tally` for each generation request (:func:`open_tally`);
the engine client's runners add to it through ``RunContext.extra_tokens`` / ``event``,
next to the server-wide counters. A context variable carries it: vLLM's serving layer
calls ``engine_client.generate`` from the request's own task (or tasks it spawns, which
copy the context), so concurrent requests never see each other's tally.
"""

from __future__ import annotations

import contextvars
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Tally:
    """Extra forward tokens by kind and strategy events (rollbacks, restarts)."""

    tokens: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)

    def add_tokens(self, kind: str, n: int) -> None:
        self.tokens[kind] += n

    def add_event(self, name: str, n: int = 1) -> None:
        self.events[name] += n


_CURRENT: contextvars.ContextVar[Tally | None] = contextvars.ContextVar("lucid_tally", default=None)


def open_tally() -> Tally:
    """A fresh tally for the request running in the current context."""
    tally = Tally()
    _CURRENT.set(tally)
    return tally


def current_tally() -> Tally | None:
    return _CURRENT.get()
