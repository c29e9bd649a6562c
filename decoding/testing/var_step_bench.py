"""VAR's extra time per decode step against a plain decoder step, at real model shapes.

    python -m decoding.testing.var_step_bench [--device cuda] [--requests 16] [--out F]

Torch only (no vLLM): it builds a paged KV cache in vLLM's FlashAttention layout
(``[blocks, kv_heads, block_size, 2 * head_dim]``, keys then values per token) for
``--requests`` requests, then times, per decode step,

* VAR's work in every edited layer as the engine does it (:mod:`decoding.engine.worker.var`):
  the paged gather of keys and values and :func:`decoding.cores.var.partitioned_update`
  with the device's LSE attention kernel (:mod:`decoding.engine.worker.lse`);
* a plain Llama decoder step at the same shapes (RMSNorm, q/k/v/o projections, SDPA over
  the same cache length, SwiGLU MLP; random weights) over all layers.

Defaults are LLaVA-1.5-7B's shapes: 32 layers (VAR edits layers 2..30), hidden 4096, 32
heads of 128, MLP 11008, a 640-token prompt (576 image tokens) plus 64 generated tokens.
The target is VAR's time at most 25% of the decoder step's. Prints a line per figure and
writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from decoding.cores import var as var_core


@dataclass(frozen=True)
class Shapes:
    layers: int = 32
    edited_layers: int = 29
    hidden: int = 4096
    heads: int = 32
    kv_heads: int = 32
    head_dim: int = 128
    mlp: int = 11008
    prompt: int = 640
    image: tuple[int, int] = (35, 611)
    generated: int = 64
    block: int = 16
    sinks: int = 24  # visual sinks plus BOS per edited layer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Any, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (kernel selection, allocator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def var_step(s: Shapes, requests: int, device: torch.device, dtype: torch.dtype) -> Any:
    """A closure running VAR's edit of one decode step in every edited layer."""
    from decoding.engine.worker.lse import lse_attention_for
    from decoding.engine.worker.paged import gather_kv

    g = torch.Generator(device="cpu").manual_seed(0)
    length = s.prompt + s.generated
    per_request = -(-length // s.block)
    blocks = requests * per_request
    cache = torch.randn(blocks, s.kv_heads, s.block, 2 * s.head_dim, generator=g).to(device, dtype)
    table = torch.randperm(blocks, generator=g).view(requests, per_request).to(device)
    query = torch.randn(requests, s.heads, s.head_dim, generator=g).to(device, dtype)
    image = torch.zeros(requests, length, dtype=torch.bool, device=device)
    image[:, s.image[0] : s.image[1]] = True
    sinks = torch.zeros_like(image)
    sinks[:, 0] = True
    picks = torch.randint(s.image[0], s.image[1], (requests, s.sinks - 1), generator=g)
    sinks.scatter_(1, picks.to(device), True)
    seq_lens = torch.full((requests,), length, device=device)
    layer_sinks = sinks[None].expand(s.edited_layers, -1, -1)
    bias = torch.zeros(requests, 1, 1, length, device=device)
    p = torch.full((requests,), 0.4, device=device)
    thr = torch.full((requests,), 0.5, device=device)
    summ = torch.full((requests,), 0.2, device=device)
    group = s.heads // s.kv_heads
    attention = lse_attention_for(device, group)  # one query per request and KV head group

    def split(kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return kv.split(s.head_dim, dim=-1)  # FlashAttention: key and value side by side

    def step() -> None:
        # As the engine: one key partition per step for all edited layers (sinks are
        # final while decoding), then the paged gather and the update per layer.
        kernel = attention != var_core.SHARED_SCORES
        part = var_core.partition(bias.repeat(1, 1, group, 1), image, layer_sinks, kernel)
        for i in range(s.edited_layers):
            k, v = gather_kv(cache, table, seq_lens, length, split, clean=False)  # as the engine
            q = query.float().view(requests, s.kv_heads, group, s.head_dim)
            var_core.apply_partition(
                q, k, v, part.layer(i), s.head_dim**-0.5, p, thr, summ, attention=attention
            )

    return step


def decoder_step(s: Shapes, requests: int, device: torch.device, dtype: torch.dtype) -> Any:
    """A closure running one plain decode step of a Llama decoder at ``s``'s shapes."""
    g = torch.Generator(device="cpu").manual_seed(1)

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(device, dtype)

    # One set of layer weights reused for every layer: timing, not modelling.
    qkv, o = w(s.hidden, 3 * s.hidden), w(s.hidden, s.hidden)
    up, down = w(s.hidden, 2 * s.mlp), w(s.mlp, s.hidden)
    length = s.prompt + s.generated
    k = torch.randn(requests, s.heads, length, s.head_dim, generator=g).to(device, dtype)
    v = torch.randn_like(k)
    x0 = torch.randn(requests, s.hidden, generator=g).to(device, dtype)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)

    def step() -> None:
        x = x0
        for _ in range(s.layers):
            q = (norm(x) @ qkv)[:, : s.hidden].view(requests, s.heads, 1, s.head_dim)
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            x = x + a.reshape(requests, s.hidden) @ o
            gate, val = (norm(x) @ up).chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(gate) * val) @ down

    return step


def run(s: Shapes, requests: int, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    var_s = _timed(var_step(s, requests, device, dtype), device, repeats)
    dec_s = _timed(decoder_step(s, requests, device, dtype), device, repeats)
    return {
        "shapes": asdict(s),
        "requests": requests,
        "device": str(device),
        "dtype": str(dtype),
        "var_ms_per_step": var_s * 1e3,
        "decoder_ms_per_step": dec_s * 1e3,
        "var_over_decoder": var_s / dec_s,
        "target": 0.25,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--requests", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--small", action="store_true", help="tiny shapes (a smoke run on CPU)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = SMALL if args.small else Shapes()
    result = run(shapes, args.requests, device, dtype, args.repeats)
    print(
        f"{result['device']} {result['dtype']} requests={args.requests}: VAR "
        f"{result['var_ms_per_step']:.2f} ms/step, decoder {result['decoder_ms_per_step']:.2f}"
        f" ms/step, ratio {result['var_over_decoder']:.3f} (target <= 0.25)"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


#: Shapes for a smoke run (the tiny checkpoint's order of magnitude).
SMALL = Shapes(layers=4, edited_layers=2, hidden=128, heads=4, kv_heads=2, head_dim=32,
               mlp=384, prompt=80, image=(3, 67), generated=8, block=16, sinks=4)  # fmt: skip


if __name__ == "__main__":
    main()
