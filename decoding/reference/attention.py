"""Eager attention with an optional post-softmax edit, for the reference engine.

The reference reads attention probabilities (AVC, OPERA) and edits them (VAR), which
needs the eager implementation. This registers one more ``transformers`` attention
implementation, ``"lucid_eager"``: the eager computation (``softmax(q k^T * scale +
mask)`` in float32, then ``@ v``), plus, when the attention module carries an
``edit_attention(probs, module) -> probs`` callable in ``_lucid_edit``, that edit applied
to the probabilities before they multiply the values. With no edit it is numerically the
eager implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

NAME = "lucid_eager"

Edit = Callable[[torch.Tensor, torch.nn.Module], torch.Tensor]


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def lucid_eager_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    groups = getattr(module, "num_key_value_groups", 1)
    k = _repeat_kv(key, groups)
    v = _repeat_kv(value, groups)
    weights = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    probs = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    edit: Edit | None = getattr(module, "_lucid_edit", None)
    if edit is not None:
        probs = edit(probs, module)
    out = torch.matmul(probs, v).transpose(1, 2).contiguous()
    return out, probs


AttentionInterface.register(NAME, lucid_eager_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)


def decoder_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer of the language model, in order."""
    from decoding.reference.families import reference_family

    return [layer.self_attn for layer in reference_family(model.config).decoder_layers(model)]


@contextmanager
def lucid_attention(model: torch.nn.Module) -> Iterator[None]:
    """Run the language model with ``lucid_eager`` attention inside the block."""
    text_cfg = model.config.text_config
    before = text_cfg._attn_implementation
    text_cfg._attn_implementation = NAME
    try:
        yield
    finally:
        text_cfg._attn_implementation = before
        for mod in decoder_attention_modules(model):
            if hasattr(mod, "_lucid_edit"):
                del mod._lucid_edit
