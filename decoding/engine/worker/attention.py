"""Attention backends that run the stock kernel, then the strategies' attention hooks.

vLLM never materialises attention probabilities. The backends here subclass the stock
implementation (``CPU_ATTN`` on CPU, ``FLASH_ATTN`` on CUDA), call it unchanged, and then
hand the layer's query, paged KV cache and metadata to the ``attention`` hooks for the
flagged rows of the step; hooks recompute the probabilities they need in float32 from
the cache (reading it through the owning backend's layout) and may rewrite the output.
Unflagged steps cost one dictionary check per layer.

The Python ``forward`` runs every step only when attention is not captured in a full
CUDA graph: the server runs strategy deployments eagerly on GPU (see
:mod:`decoding.engine.frontend`).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

from decoding.engine.worker import hooks
from decoding.engine.worker.rows import STEP
from decoding.wire import ATTENTION

_LAYER = re.compile(r"layers\.(\d+)\.")


def layer_index(layer: Any) -> int:
    """Decoder layer number from the layer's name (``...layers.<i>.self_attn.attn``)."""
    match = _LAYER.search(getattr(layer, "layer_name", ""))
    return int(match.group(1)) if match else -1


def row_span(meta: Any, row: int) -> tuple[int, int, int]:
    """(first token, end token, sequence length) of batch row ``row`` in this step."""
    qsl = meta.query_start_loc
    return int(qsl[row]), int(qsl[row + 1]), int(meta.seq_lens[row])


def gather_kv(
    key_cache: torch.Tensor, value_cache: torch.Tensor, meta: Any, row: int, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V ``(kv_heads, length, head_dim)`` of one request from ``(blocks, kv_heads,
    block_size, head_dim)`` caches, in position order."""
    block = key_cache.shape[2]
    ids = meta.block_table[row, : (length + block - 1) // block].long()

    def one(cache: torch.Tensor) -> torch.Tensor:
        part = cache.index_select(0, ids).transpose(0, 1)
        return part.reshape(part.shape[0], -1, part.shape[-1])[:, :length]

    return one(key_cache), one(value_cache)


class _HookMixin:
    """Runs the ``attention`` hooks after the stock forward for decoder self-attention."""

    def split_cache(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _run_hooks(self, layer: Any, query: torch.Tensor, kv_cache: Any, meta: Any, out: Any):
        if meta is None or not STEP.rows:
            return
        if getattr(self, "attn_type", AttentionType.DECODER) != AttentionType.DECODER:
            return
        for hook in hooks.at(ATTENTION):
            hook(self, layer, query, kv_cache, meta, out)


class LucidCPUAttentionImpl(_HookMixin, CPUAttentionBackendImpl):
    def split_cache(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # CPU layout: [blocks, kv_heads, block_size, 2 * head_dim] holding each block's
        # keys then values (cpu_attn.py forward). The "vec"/"vec16" kernels store a block's
        # keys transposed, [head_dim, block_size], and its values as [block_size, head_dim]
        # (checked against cpu_attn_reshape_and_cache); the key view undoes the transpose.
        # The AMX kernels (bf16 on AMX CPUs) tile both and are not readable here.
        if getattr(self, "_lucid_isa", None) not in (None, "vec", "vec16"):
            raise NotImplementedError(f"reading the CPU KV cache of ISA {self._lucid_isa!r}")
        nb, h, bs, _ = kv_cache.shape
        key, value = kv_cache.view(nb, h, bs * 2, -1).chunk(2, dim=2)
        return key.view(nb, h, -1, bs).transpose(2, 3), value

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN201
        self._lucid_isa = getattr(layer, "isa", None)
        out = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *a, **kw)
        self._run_hooks(layer, query, kv_cache, attn_metadata, out)
        return out


class LucidCPUAttentionBackend(CPUAttentionBackend):
    @staticmethod
    def get_impl_cls() -> type[LucidCPUAttentionImpl]:
        return LucidCPUAttentionImpl


def __getattr__(name: str) -> type:
    # The FlashAttention subclass is built on first access: the CPU build lacks its kernels.
    if name == "LucidFlashAttentionBackend":
        return _cuda_backend()
    raise AttributeError(name)


def _cuda_backend() -> type:
    from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend, FlashAttentionImpl

    class LucidFlashAttentionImpl(_HookMixin, FlashAttentionImpl):
        def split_cache(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # FlashAttention layout: [blocks, kv_heads, block_size, 2 * head_dim] with each
            # token's key and value side by side (flash_attn.py forward).
            return kv_cache.split(self.head_size, dim=-1)

        def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN201
            out = super().forward(
                layer, query, key, value, kv_cache, attn_metadata, output, *a, **kw
            )
            self._run_hooks(layer, query, kv_cache, attn_metadata, out)
            return out

    class LucidFlashAttentionBackend(FlashAttentionBackend):
        @staticmethod
        def get_impl_cls() -> type:
            return LucidFlashAttentionImpl

    return LucidFlashAttentionBackend
