"""Tokens/s of every strategy in the reference engine (the batch-1 baseline).

``python -m decoding.reference.bench [--model DIR] [--out build/bench-reference.json]``
runs each strategy at its paper defaults, greedy, on seeded synthetic scenes with the
captioning prompt, after one warm-up request per strategy, and prints a table. The JSON
file holds one record per strategy: ``{strategy, tokens, seconds, tokens_per_s,
requests, max_new_tokens, model, device}``. Without ``--model`` it uses the tiny test
checkpoint (built on first use).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

PROMPT = "Describe the image."


def all_strategies() -> list[str]:
    """Every declared strategy (the reference engine runs all of them)."""
    from decoding.strategies import available

    return available()


def run(
    model: Any,
    processor: Any,
    strategies: list[str] | tuple[str, ...] | None = None,
    requests: int = 4,
    max_new_tokens: int = 32,
    model_name: str = "",
) -> list[dict[str, Any]]:
    from decoding.reference.cli import load_image
    from decoding.reference.engine import reference_generate

    # The processor's crop size where it has one (LLaVA-1.5); processors that tile or
    # resize dynamically (LLaVA-NeXT, OneVision, Qwen) get the served bench's 112 px.
    crop = getattr(processor.image_processor, "crop_size", None) or {}
    size = crop.get("height") if isinstance(crop, dict) else None
    images = [load_image(f"synthetic:{i}", size) for i in range(requests)]
    records = []
    from decoding.reference.families import reference_family

    undefined = reference_family(model.config).model.undefined
    for name in [s for s in strategies or all_strategies() if s not in undefined]:
        decoding = {"strategy": name}
        reference_generate(model, processor, images[0], PROMPT, decoding, max_new_tokens=4)
        tokens, start = 0, time.perf_counter()
        for image in images:
            out = reference_generate(
                model, processor, image, PROMPT, decoding, max_new_tokens=max_new_tokens
            )
            tokens += len(out.token_ids)
        seconds = time.perf_counter() - start
        records.append(
            {
                "strategy": name,
                "tokens": tokens,
                "seconds": round(seconds, 4),
                "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else None,
                "requests": requests,
                "max_new_tokens": max_new_tokens,
                "model": model_name,
                "device": str(model.device),
            }
        )
    return records


def table(records: list[dict[str, Any]]) -> str:
    lines = [f"{'strategy':<10}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}"]
    for r in records:
        lines.append(
            f"{r['strategy']:<10}{r['tokens']:>8}{r['seconds']:>10.2f}{r['tokens_per_s']:>10.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: tiny test model)")
    ap.add_argument("--out", type=Path, default=Path("build/bench-reference.json"))
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--strategies", default=None, help="comma-separated; default: all")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args(argv)

    from decoding.reference.cli import load

    model_dir = args.model
    if model_dir is None:
        from decoding.testing.tiny_llava import ensure_tiny_llava

        model_dir = str(ensure_tiny_llava())
    model, processor = load(model_dir, args.device, args.dtype)
    records = run(
        model,
        processor,
        [s for s in (args.strategies or "").split(",") if s] or None,
        args.requests,
        args.max_new_tokens,
        model_name=str(model_dir),
    )
    print(table(records))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
