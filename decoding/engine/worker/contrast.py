"""Contrastive coupling of a request pair inside the engine (VCD, DAMRO, AVC).

A contrastive request runs as two engine requests: the *main* one (the user's input) and
the *contrast* one (noised image, outlier tokens only, or masked image tokens), tagged
with the same ``pair`` id. When both are in the step's batch at the same generated
length, ``compute_logits`` replaces BOTH rows by the contrasted scores of
:func:`decoding.cores.contrastive.contrast_logits`. Both requests carry the same sampling
parameters and seed, so vLLM's own sampler draws the same token for both (greedy or
seeded), the contrast sequence stays token-synchronised, and the log-probabilities vLLM
returns are those of the combined distribution.

When a pair is not co-scheduled (the two requests were admitted in different steps, or
one was preempted), both rows are forced to the stall token (the image placeholder id,
never a real answer token). The runner on the API side sees it, drops it, and restarts
the pair from the tokens decided so far; the prefix cache keeps that cheap. The stall
token is also excluded from the combined distribution so that it always means a stall.
"""

from __future__ import annotations

from typing import Any

import torch

from decoding.cores.contrastive import contrast_logits
from decoding.engine.worker import hooks
from decoding.engine.worker.rows import STEP
from decoding.wire import LOGITS, PairSettings

KIND = PairSettings.kind


@hooks.register(LOGITS, "cd", order=10)
def couple(model: Any, logits: torch.Tensor) -> torch.Tensor:
    rows = STEP.of_kind(KIND)
    if not rows:
        return logits
    pairs: dict[str, dict[str, int]] = {}
    for index, row in rows.items():
        pairs.setdefault(row.config.pair, {})[row.config.role] = index
    stall = model.stall_token
    n = logits.shape[0]
    for roles in pairs.values():
        main, con = roles.get("main"), roles.get("contrast")
        solo = roles.get("solo")
        if solo is not None and solo < n:
            # alpha = 0: no contrast branch, only the plausibility cutoff.
            cfg = rows[solo].config
            logits[solo] = contrast_logits(logits[solo], logits[solo], 0.0, cfg.beta)
            continue
        if (
            main is not None
            and con is not None
            and main < n
            and con < n
            and len(rows[main].output) == len(rows[con].output)
        ):
            cfg = rows[main].config
            combined = contrast_logits(logits[main], logits[con], cfg.alpha, cfg.beta)
            combined[stall] = float("-inf")
            logits[main] = combined.to(logits.dtype)
            logits[con] = logits[main]
        else:
            for index in (main, con):
                if index is not None and index < n:
                    logits[index] = float("-inf")
                    logits[index, stall] = 0.0
    return logits
