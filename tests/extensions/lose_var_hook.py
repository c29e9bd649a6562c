"""A worker extension that removes VAR's attention hook in the engine at run time (after
the server's start-up checks passed), to show that the engine then fails VAR requests
instead of answering them plainly."""

from __future__ import annotations

from decoding.engine.worker import hooks
from decoding.wire import ATTENTION, FORWARD


@hooks.register(FORWARD, "lose_var_hook", order=0)
def lose(model, run, embeds):  # noqa: ANN001, ANN201
    hooks.unregister("var", ATTENTION)
    return run(embeds)
