"""One-off reference runs: ``python -m decoding.reference --model DIR --image IMG --prompt TEXT``.

``--image`` is a file path or ``synthetic:SEED`` (a seeded scene from
:mod:`decoding.testing.synthetic`); ``--decoding`` is the request's ``decoding`` object as
JSON, e.g. ``'{"strategy": "vcd", "alpha": 1.0}'``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def load(model_dir: str | Path, device: str = "cpu", dtype: str = "auto") -> tuple[Any, Any]:
    """Model (eager attention, eval mode) and processor of a checkpoint of any supported
    family (its ``architectures`` pick the ``transformers`` class)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, attn_implementation="eager", dtype=torch_dtype
    )
    return model.to(device).eval(), AutoProcessor.from_pretrained(model_dir)


def load_image(spec: str, size: int | None = None) -> Any:
    from PIL import Image

    if spec.startswith("synthetic:"):
        from decoding.testing import synthetic

        return synthetic.sample(int(spec.split(":", 1)[1]), size or 112)[0]
    return Image.open(spec).convert("RGB")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="checkpoint directory")
    ap.add_argument("--image", required=True, help="image file or synthetic:SEED")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--decoding", default=None, help="decoding object as JSON")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--ignore-eos", action="store_true", help="run to --max-new-tokens")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    ap.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = ap.parse_args(argv)

    from dataclasses import asdict

    from decoding.reference.engine import reference_generate
    from decoding.strategies import DecodingParamError

    try:
        decoding = json.loads(args.decoding) if args.decoding else None
    except json.JSONDecodeError as exc:
        print(f"--decoding is not valid JSON: {exc}", file=sys.stderr)
        return 2
    model, processor = load(args.model, args.device, args.dtype)
    size = processor.image_processor.crop_size.get("height")
    try:
        result = reference_generate(
            model,
            processor,
            load_image(args.image, size),
            args.prompt,
            decoding,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            ignore_eos=args.ignore_eos,
        )
    except DecodingParamError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        out = asdict(result)
        out.pop("prompt_ids")
        print(json.dumps(_jsonable(out), indent=1))
    else:
        print(result.text)
        print(
            f"[{result.strategy}] {len(result.token_ids)} tokens, finish={result.finish_reason}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
