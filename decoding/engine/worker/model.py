"""vLLM's VLM classes with the hooks strategies need, selected by architecture.

One subclass per model family (:mod:`decoding.engine.families`), all sharing
:class:`LucidHooks`. The server switches the checkpoint's architecture to the family's
hooked one (e.g. ``LucidQwen2_5_VLForConditionalGeneration``, via ``hf_overrides``) when
an enabled strategy acts through engine hooks. Weights, processor and prompt handling
are vLLM's unchanged; the subclass runs the hooks registered in :mod:`.hooks`:

* ``embed_multimodal``: image items that carry a ``lucid_topk`` field go to the
  ``embed`` hook (DAMRO's contrast input, :mod:`.damro`);
* ``forward``: the ``forward`` hooks, outermost first (AVC's contrast prefill, VAR's sinks);
* ``compute_logits``: the ``logits`` hooks (contrastive coupling, probes), then every
  faulty row (a hook it needs is missing) is forced to the stall token, which its runner
  reports as a failed request instead of returning a plain answer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from vllm.model_executor.models.llava import LlavaForConditionalGeneration
from vllm.model_executor.models.llava_next import LlavaNextForConditionalGeneration
from vllm.model_executor.models.llava_onevision import LlavaOnevisionForConditionalGeneration
from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration

from decoding.engine.families import family_for
from decoding.engine.worker import hooks
from decoding.engine.worker.rows import STEP
from decoding.wire import EMBED, FORWARD, LOGITS


class LucidHooks:
    """The hook points, mixed in before a vLLM model class (its methods via ``super``).
    The subclass keeps vLLM's ``__init__(self, *, vllm_config, prefix="")``."""

    config: Any

    @functools.cached_property
    def stall_token(self) -> int:
        """The image placeholder id: never a real answer token, used to flag a stall."""
        return family_for(self.config).image_token(self.config)

    def embed_multimodal(self, **kwargs: object) -> Any:
        topk = kwargs.pop("lucid_topk", None)
        if topk is None:
            return super().embed_multimodal(**kwargs)  # type: ignore[misc]
        embed = hooks.at(EMBED)
        if not embed:
            # The row of this request is failed (its needs name the embed hook); the
            # features only have to fit the placeholders until then.
            counts = torch.as_tensor(topk).reshape(-1).tolist()
            feats = super().embed_multimodal(**kwargs)  # type: ignore[misc]
            return [f[: int(c)] for f, c in zip(feats, counts, strict=True)]
        return embed[0](self, topk, super().embed_multimodal, kwargs)  # type: ignore[misc]

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> Any:
        def run(embeds: torch.Tensor | None) -> Any:
            return super(LucidHooks, self).forward(  # type: ignore[misc]
                input_ids, positions, intermediate_tensors, inputs_embeds=embeds, **kwargs
            )

        if not STEP.rows:  # plain steps: no hook list is even built
            return run(inputs_embeds)
        outer_first = hooks.at(FORWARD)
        if not outer_first:
            return run(inputs_embeds)
        chain: Callable[[torch.Tensor | None], Any] = run
        for hook in reversed(outer_first):
            chain = _bind(hook, self, chain)
        return chain(inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = super().compute_logits(hidden_states)  # type: ignore[misc]
        if logits is None or not STEP.rows:
            return logits
        for hook in hooks.at(LOGITS):
            logits = hook(self, logits)
        for index in STEP.faulty():
            if index < logits.shape[0]:
                logits[index] = float("-inf")
                logits[index, self.stall_token] = 0.0
        return logits


def _bind(hook: hooks.ForwardHook, model: Any, inner: Callable) -> Callable:
    return lambda embeds: hook(model, inner, embeds)


class LucidLlava(LucidHooks, LlavaForConditionalGeneration):
    pass


class LucidLlavaNext(LucidHooks, LlavaNextForConditionalGeneration):
    pass


class LucidLlavaOnevision(LucidHooks, LlavaOnevisionForConditionalGeneration):
    pass


class LucidQwen2_5_VL(LucidHooks, Qwen2_5_VLForConditionalGeneration):  # noqa: N801
    pass


class LucidQwen3VL(LucidHooks, Qwen3VLForConditionalGeneration):
    pass
