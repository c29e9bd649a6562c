"""Extension lists the model and the attention backend call into, filled by worker modules.

Each worker module (one per engine-side mechanism) registers its functions here when it
is imported; :mod:`decoding.engine.worker.plugin` imports them all. Hooks only act on
rows flagged in :data:`decoding.engine.worker.rows.STEP`, so requests without a strategy
pay one dictionary check per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: ``fn(model, logits) -> logits`` after the language model head (rows = batch order).
LogitsHook = Callable[[Any, torch.Tensor], torch.Tensor]
#: ``fn(impl, layer, query, kv_cache, attn_metadata, output)`` after an attention layer.
AttentionHook = Callable[[Any, Any, torch.Tensor, torch.Tensor, Any, torch.Tensor], None]
#: ``fn(model, run) -> hidden`` around the language model's forward: call ``run(embeds)``
#: (possibly twice) with the step's input embeddings and return its result.
ForwardHook = Callable[[Any, Callable[[torch.Tensor | None], Any], Any], Any]

LOGITS: list[LogitsHook] = []
ATTENTION: list[AttentionHook] = []
FORWARD: list[ForwardHook] = []
