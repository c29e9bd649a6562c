"""``LucidLlava``: vLLM's LLaVA with the hooks strategies need, selected by architecture.

The server switches the checkpoint's architecture to ``LucidLlavaForConditionalGeneration``
(``hf_overrides``) when a strategy other than ``none`` is enabled. Weights, processor and
prompt handling are vLLM's LLaVA unchanged; the subclass adds

* ``embed_multimodal``: image items that carry a ``lucid_topk`` field return only their
  top-k [CLS]-outlier patch features (DAMRO's contrast input, :mod:`.damro`);
* ``forward``: the :data:`hooks.FORWARD` chain (AVC's contrast prefill, VAR's sinks);
* ``compute_logits``: the :data:`hooks.LOGITS` chain (contrastive coupling, probes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from vllm.model_executor.models.llava import LlavaForConditionalGeneration

from decoding.engine.worker import hooks
from decoding.engine.worker.rows import STEP

ARCHITECTURE = "LucidLlavaForConditionalGeneration"


class LucidLlava(LlavaForConditionalGeneration):
    @property
    def stall_token(self) -> int:
        """The image placeholder id: never a real answer token, used to flag a stall."""
        return int(self.config.image_token_index)

    def embed_multimodal(self, **kwargs: object) -> Any:
        topk = kwargs.pop("lucid_topk", None)
        if topk is None:
            return super().embed_multimodal(**kwargs)
        from decoding.engine.worker.damro import top_patch_features

        return top_patch_features(self, topk, super().embed_multimodal, kwargs)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> Any:
        def run(embeds: torch.Tensor | None) -> Any:
            return super(LucidLlava, self).forward(
                input_ids, positions, intermediate_tensors, inputs_embeds=embeds, **kwargs
            )

        if not STEP.rows or not hooks.FORWARD:
            return run(inputs_embeds)
        chain: Callable[[torch.Tensor | None], Any] = run
        for hook in hooks.FORWARD:
            chain = _bind(hook, self, chain)
        return chain(inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = super().compute_logits(hidden_states)
        if logits is None or not STEP.rows:
            return logits
        for hook in hooks.LOGITS:
            logits = hook(self, logits)
        return logits


def _bind(hook: hooks.ForwardHook, model: Any, inner: Callable) -> Callable:
    return lambda embeds: hook(model, inner, embeds)
