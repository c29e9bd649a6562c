"""Tiny test checkpoints of five VLM families: ``python -m decoding.testing.tiny_models
FAMILY DIR`` builds one, ``--ensure FAMILY`` builds the cached default and prints its path,
``--families`` lists the families.

Each checkpoint has its family's real structure at ~1-1.5 M parameters (text hidden 128,
4 layers, head_dim 32 as vLLM's CPU attention needs, float32), a locally trained
byte-level BPE tokenizer with the family's special tokens and chat template, and the
family's processor, so ``transformers.AutoProcessor`` and vLLM's chat endpoint render
the same prompt:

- ``llava-1.5``: :mod:`decoding.testing.tiny_llava`, unchanged.
- ``llava-next``: CLIP 112 px / patch 14 + Llama, anyres tiles of 112 px (a 112x112
  image: base 64 + tile 64 + 8 row newlines = 136 tokens), vicuna template with
  ``<image>``.
- ``llava-onevision``: SigLIP 112/14 + Qwen2, ``anyres_max_9`` (136 tokens for
  112x112), ChatML with ``<image>``.
- ``qwen2.5-vl``: ViT (patch 14, window attention, full-attention blocks 1 and 3,
  2x2 merger) + Qwen2 with M-RoPE; a 112x112 image is resized to 168x168: 36 tokens.
- ``qwen3-vl``: ViT (patch 16, deepstack levels 1 and 2) + Qwen3 (qk-norm) with
  interleaved M-RoPE; 112x112 is resized to 192x192: 36 tokens.

Every checkpoint is trained on the synthetic world of :mod:`decoding.testing.world` with
the LLaVA-1.5 checkpoint's recipe (:mod:`decoding.testing.tiny_train`: a text-only prior
phase, patch-loss alignment of the vision tower and projector, conversations with a
grounding loss), so each one looks at the image and hallucinates an absent prior partner
(the lab behaviour, tested per family). Sinks are planted
(:mod:`decoding.testing.tiny_sinks`): the template's first token, BOS or
``<|im_start|>``, carries massive activations in ``config.sink_dims`` from the start
(with ChatML every turn's ``<|im_start|>`` shares that embedding), and once the tower is
frozen a few image tokens of some images get them too. Builds are deterministic (one
thread, seeded, sorted safetensors keys): the same spec gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers as tf
from torch import nn

from decoding.testing import tiny_families as fam
from decoding.testing import tiny_sinks, tiny_train
from decoding.testing.tiny_families import (
    RECIPE_VERSION,
    TinySpec,
    onevision_tokenizer,
    qwen_tokenizer,
)
from decoding.testing.tiny_llava import (
    build_tiny_llava,
    default_cache_dir,
    ensure_tiny_llava,
    file_hashes,
)
from decoding.testing.tokenizer import build_tokenizer

FAMILIES: tuple[str, ...] = ("llava-1.5", "llava-next", "llava-onevision", "qwen2.5-vl", "qwen3-vl")


@dataclass(frozen=True)
class Recipe:
    """How one family is assembled; the rest of the build is shared."""

    model_cls: type[nn.Module]
    tokenizer: Callable[[TinySpec], Any]
    config: Callable[[TinySpec, Any], tf.PreTrainedConfig]
    processor: Callable[[TinySpec, Any], tf.ProcessorMixin]
    #: The projector's (fc1, fc2) and any further layers writing image features.
    sink_layers: Callable[[nn.Module], tuple[nn.Linear, nn.Linear, tuple[nn.Linear, ...]]]
    tower: Callable[[str], bool]  # the vision tower's parameter names (frozen for the sinks)
    answer_prefix: str  # the answer's first characters after the generation prompt
    #: Per image token of a 112 px scene: its cell of a grid x grid split, or None.
    cells: Callable[[int], list[int | None]]
    grid: int
    rename: Callable[[str], str] = lambda key: key  # to the key layout vLLM loads


def _merger(
    fc1: str, fc2: str, deepstack: str | None = None
) -> Callable[[nn.Module], tuple[nn.Linear, nn.Linear, tuple[nn.Linear, ...]]]:
    def find(model: nn.Module) -> tuple[nn.Linear, nn.Linear, tuple[nn.Linear, ...]]:
        extra = model.get_submodule(deepstack) if deepstack else ()
        writers = tuple(m.linear_fc2 for m in extra)
        return model.get_submodule(fc1), model.get_submodule(fc2), writers

    return find


def _visual_tower(*kept: str) -> Callable[[str], bool]:
    return lambda name: name.startswith("model.visual.") and not name.startswith(kept)


_PROJECTOR = _merger("model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2")

RECIPES: dict[str, Recipe] = {
    "llava-next": Recipe(
        model_cls=tf.LlavaNextForConditionalGeneration,
        tokenizer=lambda spec: build_tokenizer(spec.seed, spec.tokenizer_vocab),
        config=fam.next_config,
        processor=fam.next_processor,
        sink_layers=_PROJECTOR,
        tower=lambda name: name.startswith("model.vision_tower."),
        answer_prefix=" ",
        cells=fam.anyres_cells(8),
        grid=8,
        rename=fam.vision_model_layout,
    ),
    "llava-onevision": Recipe(
        model_cls=tf.LlavaOnevisionForConditionalGeneration,
        tokenizer=lambda spec: onevision_tokenizer(spec.seed, spec.tokenizer_vocab),
        config=fam.ov_config,
        processor=fam.ov_processor,
        sink_layers=_PROJECTOR,
        tower=lambda name: name.startswith("model.vision_tower."),
        answer_prefix="",
        cells=fam.anyres_cells(8),
        grid=8,
        rename=fam.vision_model_layout,
    ),
    "qwen2.5-vl": Recipe(
        model_cls=tf.Qwen2_5_VLForConditionalGeneration,
        tokenizer=lambda spec: qwen_tokenizer(spec.seed, spec.tokenizer_vocab),
        config=fam.q25_config,
        processor=fam.qwen_processor(
            tf.Qwen2_5_VLProcessor, tf.Qwen2VLVideoProcessor, 14, fam.CLIP_NORM
        ),
        sink_layers=_merger("model.visual.merger.mlp.0", "model.visual.merger.mlp.2"),
        tower=_visual_tower("model.visual.merger."),
        answer_prefix="",
        cells=fam.raster_cells(6),
        grid=6,
    ),
    "qwen3-vl": Recipe(
        model_cls=tf.Qwen3VLForConditionalGeneration,
        tokenizer=lambda spec: qwen_tokenizer(spec.seed, spec.tokenizer_vocab),
        config=fam.q3_config,
        processor=fam.qwen_processor(
            tf.Qwen3VLProcessor, tf.Qwen3VLVideoProcessor, 16, ([0.5] * 3, [0.5] * 3)
        ),
        sink_layers=_merger(
            "model.visual.merger.linear_fc1",
            "model.visual.merger.linear_fc2",
            "model.visual.deepstack_merger_list",
        ),
        tower=_visual_tower("model.visual.merger.", "model.visual.deepstack_merger_list."),
        answer_prefix="",
        cells=fam.raster_cells(6),
        grid=6,
    ),
}

DEFAULT_SPECS: dict[str, TinySpec] = {
    "llava-next": TinySpec(text_kv_heads=4),
    "llava-onevision": TinySpec(),
    "qwen2.5-vl": TinySpec(),
    "qwen3-vl": TinySpec(),
}


def build_tiny(
    family: str, out_dir: str | Path, spec: TinySpec | None = None, log: bool = False
) -> Path:
    """Build ``family``'s checkpoint into ``out_dir`` (replaced if present)."""
    if family == "llava-1.5":
        return build_tiny_llava(out_dir, spec, log=log)  # type: ignore[arg-type]
    recipe = RECIPES[family]
    spec = spec or DEFAULT_SPECS[family]
    out = Path(out_dir)
    with tiny_train.deterministic(spec.seed):
        tok = recipe.tokenizer(spec)
        cfg = recipe.config(spec, tok)
        cfg.sink_dims = list(spec.sink_dims)  # read by decoding.profiles for VAR
        torch.manual_seed(spec.seed)
        model = recipe.model_cls(cfg).float()
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        processor = recipe.processor(spec, tok)

        image_token = getattr(cfg, "image_token_id", None) or cfg.image_token_index
        enc = tiny_train.Encoder(
            processor, recipe.answer_prefix, image_token, recipe.grid, recipe.cells,
            spec.presence_weight,
        )  # fmt: skip
        first = tok(tiny_train.prompt_text(processor, ""), add_special_tokens=False)["input_ids"][0]
        fc1, fc2, writers = recipe.sink_layers(model)
        emb = model.get_input_embeddings().weight
        sites = tiny_sinks.SinkSites(emb, first, fc1, fc2, writers)
        tiny_train.train(model, enc, spec, sites, recipe.tower, log)
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        tiny_train.rewrite_weights(tmp, recipe.rename)
        meta = {"recipe": RECIPE_VERSION, "family": family, **asdict(spec)}
        (tmp / "tiny_spec.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def ensure_tiny(family: str, cache_dir: Path | None = None) -> Path:
    """Return the cached default build of ``family``, building it on first use."""
    if family == "llava-1.5":
        return ensure_tiny_llava(cache_dir=cache_dir)
    if family not in RECIPES:
        raise KeyError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
    spec = DEFAULT_SPECS[family]
    path = (cache_dir or default_cache_dir()) / f"tiny-{family}-{spec.digest(family)}"
    if not (path / "model.safetensors").exists():
        # Build beside it and rename: concurrent test processes may race for the build.
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        build_tiny(family, tmp, spec, log=True)
        try:
            tmp.rename(path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--families"]:
        print("\n".join(FAMILIES))
        return
    if len(argv) == 2 and argv[0] == "--ensure":
        print(ensure_tiny(argv[1]))
        return
    if argv[:1] == ["llava-1.5"]:
        from decoding.testing import tiny_llava

        tiny_llava.main(argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=[f for f in FAMILIES if f != "llava-1.5"])
    ap.add_argument("out_dir", type=Path)
    for name, default in asdict(TinySpec()).items():
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            ap.add_argument(f"--{name.replace('_', '-')}", type=type(default))
    ap.add_argument("--sink-dims", type=lambda s: tuple(int(x) for x in s.split(",")))
    args = vars(ap.parse_args(argv))
    family, out_dir = args.pop("family"), args.pop("out_dir")
    spec = replace(DEFAULT_SPECS[family], **{k: v for k, v in args.items() if v is not None})
    path = build_tiny(family, out_dir, spec, log=True)
    for name, digest in file_hashes(path).items():
        print(f"{digest}  {name}")


if __name__ == "__main__":
    main()
