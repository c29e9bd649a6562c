"""Measure VAR's sink dimensions, layer range and threshold of a checkpoint.

    python -m decoding.profiles.calibrate MODEL_DIR --images DIR [--prompts FILE]
        [--out PROFILE.json] [--tau T] [--device cpu|cuda] [--max-images N]

The checkpoint is loaded with ``transformers`` (``AutoModelForImageTextToText``, eager
attention; float32 on CPU, bfloat16 on CUDA). Every image is paired with every prompt
through the processor's chat template and run through the model once; forward
pre-hooks on the language model's decoder layers record the residual stream entering
each layer (layer 0 receives the embeddings). :mod:`decoding.profiles.sinkdims` turns
those into ``D_sink``, the edited layer range and ``tau`` (the rule, its sources and its
deviations are documented there). The result is printed as a table and, with
``--out``, written as a profile in the bundled schema: write it over the model's file
in ``decoding/profiles`` to serve VAR with it.

Memory: per layer and prompt only the dimension peaks and the normalised magnitudes of
the ``--top-k`` largest dimensions are kept, so ``phi`` over ``D_sink`` is exact
whenever each sink dimension is among them (counted in the summary otherwise, where a
missing dimension contributes 0).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from decoding.profiles import ModelProfile, profile_for
from decoding.profiles import sinkdims as rule
from decoding.profiles.configs import (
    FAMILIES,
    architecture,
    as_dict,
    family_of,
    image_token_id,
    text_model_type,
    text_shape,
)

DEFAULT_PROMPTS = (
    "Describe the image.",
    "What objects are in the image?",
    "Is there a person in the image? Answer yes or no.",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_TOP_K = 32


@dataclass
class Observation:
    """One decoder layer's input for one prompt: what the rule needs of it."""

    layer: int
    prompt: int
    peaks: torch.Tensor  # (hidden,)
    top_dims: torch.Tensor  # (k,) dims with the largest peaks
    top_values: torch.Tensor  # (tokens, k) normalised magnitudes of those dims
    image: torch.Tensor  # (tokens,) bool


@dataclass
class Calibration:
    dims: tuple[int, ...]
    tau: float | None
    tau_given: bool
    layers: tuple[int, int] | None
    ranked: list[rule.DimStat]
    layer_shares: dict[int, float]
    bulk: float
    report: rule.TauReport | None
    num_layers: int
    prompts: int
    approximate: int = 0
    images: int = 0
    seconds: float = 0.0


# --- the measurement ---------------------------------------------------------------------


def find_images(directory: Path, limit: int) -> list[Path]:
    files = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
    return files[:limit]


def read_prompts(path: Path | None) -> list[str]:
    if path is None:
        return list(DEFAULT_PROMPTS)
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    prompts = [line for line in lines if line]
    if not prompts:
        raise SystemExit(f"no prompts in {path}")
    return prompts


def load(model_dir: Path, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, attn_implementation="eager", dtype=dtype
    )
    return model.to(device).eval(), AutoProcessor.from_pretrained(model_dir)


def decoder_layers(model: torch.nn.Module, num_layers: int | None) -> torch.nn.ModuleList:
    """The language model's decoder layers: a ``ModuleList`` named ``layers`` outside the
    vision tower (its attribute path differs per family in ``transformers`` 5)."""
    found = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.ModuleList)
        and name.rsplit(".", 1)[-1] == "layers"
        and not any(part.startswith(("vision", "visual")) for part in name.split("."))
    ]
    if num_layers is not None:
        found = [(name, mod) for name, mod in found if len(mod) == num_layers] or found
    named = [(name, mod) for name, mod in found if "language_model" in name] or found
    if len(named) != 1:
        names = ", ".join(name for name, _ in found) or "none"
        raise ValueError(f"cannot tell the language model's decoder layers (candidates: {names})")
    return named[0][1]


def summarise(
    hidden: torch.Tensor, top_k: int = DEFAULT_TOP_K
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(peaks, top_dims, top_values)`` of one layer input ``(tokens, hidden_size)``,
    on the CPU; the values are float16 to keep many observations in memory."""
    values = rule.normalised(hidden)
    peaks = values.max(dim=0).values
    top = torch.topk(peaks, min(top_k, peaks.numel())).indices
    return peaks.cpu(), top.cpu(), values[:, top].half().cpu()


@contextmanager
def recording(
    layers: torch.nn.ModuleList, top_k: int
) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Pre-hooks on every decoder layer; yields ``layer -> (peaks, top_dims,
    top_values)`` of the latest forward (batch of one)."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def probe(index: int):  # noqa: ANN202
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = (args[0] if args else kwargs["hidden_states"])[0]
            seen[index] = summarise(hidden, top_k)

        return hook

    handles = [
        layer.register_forward_pre_hook(probe(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def encode(processor: Any, image: Any, prompt: str) -> dict[str, torch.Tensor]:
    """One user turn with the image and the prompt, through the chat template."""
    content = [{"type": "image", "image": image}, {"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def measure(
    model: Any,
    processor: Any,
    images: Sequence[Any],
    prompts: Sequence[str],
    image_token: int | None,
    top_k: int = DEFAULT_TOP_K,
) -> list[Observation]:
    """Run every (image, prompt) pair once and return the observations of all layers."""
    layers = decoder_layers(model, text_shape(model.config)[1])
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out: list[Observation] = []
    with recording(layers, top_k) as seen, torch.inference_mode():
        for image in images:
            for p, prompt in enumerate(prompts):
                enc = encode(processor, image, prompt)
                ids = enc["input_ids"][0]
                batch = {
                    k: v.to(device, dtype) if torch.is_floating_point(v) else v.to(device)
                    for k, v in enc.items()
                    if isinstance(v, torch.Tensor)
                }
                seen.clear()
                model(**batch, use_cache=False)
                mask = ids == image_token if image_token is not None else torch.zeros_like(ids)
                for layer, (peaks, top, values) in sorted(seen.items()):
                    out.append(Observation(layer, p, peaks, top, values, mask.bool().cpu()))
    return out


# --- from observations to profile values -------------------------------------------------


def phi_rows(
    observations: Sequence[Observation], dims: tuple[int, ...]
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """``phi`` over ``dims`` per observation, and how many observations lacked a dim in
    their top-k (those contribute 0 for it)."""
    rows, missing = [], 0
    for obs in observations:
        cols = [int(torch.nonzero(obs.top_dims == d)[0]) for d in dims if d in obs.top_dims]
        missing += len(cols) < len(dims)
        if cols:
            phi = obs.top_values[:, cols].float().max(dim=-1).values
        else:
            phi = torch.zeros(obs.top_values.shape[0])
        rows.append((phi, obs.image))
    return rows, missing


def calibrate_observations(
    observations: Sequence[Observation],
    num_layers: int,
    ratio: float = rule.DEFAULT_RATIO,
    min_share: float = rule.DEFAULT_MIN_SHARE,
    tau: float | None = None,
) -> Calibration:
    """Steps 3-5 of :mod:`decoding.profiles.sinkdims` on recorded observations."""
    probed = [o for o in observations if 1 <= o.layer < num_layers]
    if not probed:
        raise ValueError("no observations of layers 1.. L-1")
    peaks = torch.stack([o.peaks for o in probed])
    dims = rule.sink_dims(peaks, ratio, min_share)
    by_layer: dict[int, list[torch.Tensor]] = {}
    for o in observations:
        by_layer.setdefault(o.layer, []).append(o.peaks)
    shares = rule.layer_shares({k: torch.stack(v) for k, v in by_layer.items()}, dims, ratio)
    layers = rule.var_layers(shares, num_layers, min_share) if dims else None
    edited = [o for o in probed if layers and layers[0] <= o.layer < layers[1]] or probed
    edited_peaks = torch.stack([o.peaks for o in edited])
    value = tau if tau is not None else (rule.derive_tau(edited_peaks, ratio) if dims else None)
    report, missing = None, 0
    if dims and value is not None:
        rows, missing = phi_rows(edited, dims)
        report = rule.tau_report(rows, value)
    return Calibration(
        dims=dims,
        tau=value,
        tau_given=tau is not None,
        layers=layers,
        ranked=rule.rank_dims(peaks, ratio),
        layer_shares=shares,
        bulk=rule.bulk_level(edited_peaks),
        report=report,
        num_layers=num_layers,
        prompts=len({o.prompt for o in observations}),
        approximate=missing,
    )


# --- output ------------------------------------------------------------------------------


def _base(config: Any) -> ModelProfile | None:
    try:
        return profile_for(config)
    except KeyError:
        return None


def _identity(config: Any) -> dict[str, Any]:
    """The non-VAR part of the profile: the matched profile's, else made from the config."""
    cfg = as_dict(config)
    base = _base(config)
    if base is not None:
        return {
            "name": base.name,
            "family": base.family,
            "checkpoint": base.checkpoint,
            "match": dict(base.match),
            "image_token_id": base.image_token_id,
            "vision_feature_layer": base.vision_feature_layer,
            "image_tokens": base.image_tokens,
            "sources": dict(base.sources),
        }
    family = family_of(cfg) or "unknown"
    hidden, layers = text_shape(cfg)
    match = {
        "model_type": cfg.get("model_type"),
        "architecture": architecture(cfg) or FAMILIES.get(family, (None, None))[1],
        "text_hidden_size": hidden,
        "text_num_layers": layers,
    }
    if text_model_type(cfg):
        match["text_model_type"] = text_model_type(cfg)
    return {
        "name": Path(str(cfg.get("_name_or_path") or "model")).name,
        "family": family,
        "checkpoint": None,
        "match": match,
        "image_token_id": image_token_id(cfg),
        "vision_feature_layer": cfg.get("vision_feature_layer"),
        "image_tokens": None,
        "sources": {"match": "the checkpoint's config.json", "image_token_id": "same"},
    }


def profile_dict(
    cal: Calibration, config: Any, command: str, ratio: float, min_share: float
) -> dict[str, Any]:
    """A profile in the bundled schema with the calibrated VAR values."""
    data = _identity(config)
    hidden, layers = text_shape(config)
    date = datetime.date.today().isoformat()
    how = "given with --tau" if cal.tau_given else f"{ratio} x bulk level {cal.bulk:.3g}"
    source = (
        f"calibrated: {command} ({cal.images} images x {cal.prompts} prompts, {date}); "
        f"rule decoding.profiles.sinkdims (ratio {ratio}, min share {min_share}); tau {how}"
    )
    found = bool(cal.dims) and cal.tau is not None
    data["description"] = (
        f"Calibrated profile ({data['family']}, text hidden {hidden}, {layers} layers)."
    )
    data["var"] = {
        "sink_dims": list(cal.dims) if found else None,
        "tau": round(cal.tau, 4) if found and cal.tau is not None else None,
        "layers": list(cal.layers or (2, (layers or 3) - 1)),
        "source": source if found else f"calibration found no sink dimensions: {source}",
        "calibration": {
            "command": command,
            "date": date,
            "images": cal.images,
            "prompts": cal.prompts,
            "ratio": ratio,
            "min_share": min_share,
            "bulk_level": round(cal.bulk, 4),
            "seconds": round(cal.seconds, 1),
            "dims": [_rounded(asdict(s)) for s in cal.ranked],
            "layer_shares": {str(k): round(v, 3) for k, v in cal.layer_shares.items()},
            "tau_margins": _rounded(asdict(cal.report)) if cal.report else None,
            "approximate_observations": cal.approximate,
        },
    }
    return data


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def summary(cal: Calibration) -> str:
    lines = [
        f"{cal.images} images x {cal.prompts} prompts, {cal.num_layers} decoder layers, "
        f"{cal.seconds:.1f} s",
        "",
        "dim     massive in   mean peak   max peak   D_sink",
    ]
    for s in cal.ranked:
        mark = "yes" if s.dim in cal.dims else ""
        lines.append(
            f"{s.dim:<7} {s.share:>10.0%} {s.mean_peak:>11.2f} {s.max_peak:>10.2f}   {mark}"
        )
    lines += ["", "layer   prompts with a D_sink dim massive"]
    for layer, share in cal.layer_shares.items():
        edited = cal.layers is not None and cal.layers[0] <= layer < cal.layers[1]
        lines.append(f"{layer:<7} {share:>6.0%}{'   edited' if edited else ''}")
    lines.append("")
    if not cal.dims:
        lines.append("no dimension is massive consistently enough: VAR stays uncalibrated")
        return "\n".join(lines)
    rep = cal.report
    how = "given" if cal.tau_given else f"derived: ratio x bulk level {cal.bulk:.3f}"
    lines.append(f"D_sink {list(cal.dims)}  layers {cal.layers}  tau {cal.tau:.3f} ({how})")
    if rep is not None:
        lines.append(
            f"at tau: first token phi >= {rep.first_token_min:.2f}; sinks among image tokens "
            f"{rep.image_share:.1%}, other text tokens {rep.text_share:.1%}; nearest phi "
            f"below/above {rep.below:.2f}/{rep.above:.2f}; {rep.near:.1%} of tokens within "
            "10% of tau"
        )
        if rep.first_token_min <= (cal.tau or 0.0):
            lines.append("warning: the first token is not a sink in every edited layer")
    if cal.approximate:
        lines.append(f"{cal.approximate} observations lacked a D_sink dim in their top-k")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--images", type=Path, required=True, help="folder of images")
    ap.add_argument("--prompts", type=Path, help="text file, one prompt per line")
    ap.add_argument("--out", type=Path, help="write the profile JSON here")
    ap.add_argument("--tau", type=float, help="keep this threshold instead of deriving one")
    ap.add_argument("--ratio", type=float, default=rule.DEFAULT_RATIO)
    ap.add_argument("--min-share", type=float, default=rule.DEFAULT_MIN_SHARE)
    ap.add_argument("--max-images", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from PIL import Image

    start = time.perf_counter()
    dtype_name = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    model, processor = load(args.model_dir, args.device, getattr(torch, dtype_name))
    files = find_images(args.images, args.max_images)
    images = [Image.open(f).convert("RGB") for f in files]
    prompts = read_prompts(args.prompts)
    config = model.config
    num_layers = text_shape(config)[1] or len(decoder_layers(model, None))
    observations = measure(model, processor, images, prompts, image_token_id(config), args.top_k)
    cal = calibrate_observations(observations, num_layers, args.ratio, args.min_share, args.tau)
    cal.images = len(images)
    cal.seconds = time.perf_counter() - start
    print(summary(cal))
    if args.out:
        command = shlex.join(["python", "-m", "decoding.profiles.calibrate", *argv])
        data = profile_dict(cal, config, command, args.ratio, args.min_share)
        args.out.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if cal.dims else 2


if __name__ == "__main__":
    raise SystemExit(main())
