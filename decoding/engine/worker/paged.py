"""Keys and values of a few requests, read from vLLM's paged KV cache (torch only).

Both backends VAR reads store a block's keys and values in one tensor of shape
``[blocks, kv_heads, block_size, ...]`` (``split_cache`` of the backend's attention impl
separates them), so one ``index_select`` of the requests' blocks serves both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Split = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def gather_kv(
    kv_cache: torch.Tensor,
    block_ids: torch.Tensor,
    seq_lens: torch.Tensor,
    length: int,
    split: Split,
    clean: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k, v)``, each ``(R, kv_heads, length, head_dim)`` float32, for the requests whose
    block ids are the rows of ``block_ids`` ``(R, blocks)`` and whose own lengths are
    ``seq_lens`` ``(R,)``.

    Slots past a request's own length are masked by the caller but may hold anything
    (padded block ids read some other block). Finite values there contribute exactly 0;
    NaN or infinities would not, so with ``clean`` those slots are zeroed in the copy, by
    index (only those few slots are written). vLLM's caches start zeroed and hold finite
    keys and values, so callers may skip it and redo with ``clean`` on a non-finite
    result."""
    n = block_ids.shape[0]
    block = kv_cache.shape[2]
    blocks = (length + block - 1) // block
    raw = kv_cache.index_select(0, block_ids[:, :blocks].flatten())
    k, v = split(raw)  # views of the copy: (R * blocks, H, block, D) each
    if clean:  # only on the rare second pass: the mask is not built on the hot path
        slot = torch.arange(blocks * block, device=raw.device)
        foreign = slot[None, :] >= seq_lens.to(raw.device)[:, None]  # (R, blocks * block)
        row, at = torch.nonzero(foreign, as_tuple=True)
        copy_block, offset = row * blocks + at // block, at % block
        k[copy_block, :, offset] = 0.0
        v[copy_block, :, offset] = 0.0

    def per_request(part: torch.Tensor) -> torch.Tensor:
        heads, dim = part.shape[1], part.shape[-1]
        part = part.view(n, blocks, heads, block, dim).transpose(1, 2)
        return part.reshape(n, heads, blocks * block, dim)[:, :, :length].float()

    return per_request(k), per_request(v)
