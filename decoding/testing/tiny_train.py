"""Family-agnostic pieces of the tiny VLM test checkpoints: batches of synthetic scenes
rendered through the checkpoint's own processor and chat template, the planted attention
sinks, a short AdamW run (the shared loop of :mod:`decoding.testing.training`), and a
deterministic save.

Everything goes through ``processor.apply_chat_template`` and ``processor(...)``, so a
checkpoint is trained on exactly the prompts that ``transformers`` and vLLM's chat
endpoint render from it. Labels cover the answer tokens and EOS only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from decoding.testing import shapes, training

Example = tuple[Image.Image, list[tuple[str, str]]]  # image, (prompt, answer) turns
#: Per-token tensors of a processor output, padded (with this value) when batching.
SEQUENCE_KEYS = {"input_ids": None, "attention_mask": 0, "mm_token_type_ids": 0}


@dataclass(frozen=True)
class SinkSites:
    """Where the massive activations are planted in one checkpoint."""

    embedding: nn.Parameter  # text input embeddings (vocab, hidden)
    first_token: int  # the template's first token: BOS, or ``<|im_start|>``
    fc1: nn.Linear  # projector/merger input layer: unit 0 detects the visual sinks
    fc2: nn.Linear  # projector/merger output layer: unit 0 writes into sink_dims[0]
    #: Further layers that write image features into the residual stream (deepstack).
    writers: tuple[nn.Linear, ...] = ()


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """One thread and deterministic kernels (fixed reduction order: identical bytes)."""
    threads = torch.get_num_threads()
    was = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was)


def prompt_text(processor, prompt: str) -> str:  # noqa: ANN001
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def encode(processor, img: Image.Image, prompt: str) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """One chat turn with one image, as the chat endpoint renders it (the template writes
    any BOS itself)."""
    text = prompt_text(processor, prompt)
    enc = processor(images=img, text=text, return_tensors="pt", add_special_tokens=False)
    return dict(enc)


def examples(seed: int, step: int, n: int, size: int, turns: int) -> list[Example]:
    """``n`` seeded shape scenes (:mod:`decoding.testing.shapes`), each with ``turns``
    distinct questions about it."""
    rng = random.Random(seed * 1_000_003 + step)
    out = []
    for _ in range(n):
        scene = shapes.random_scene(rng)
        img = shapes.draw_scene(scene, size, rng)
        out.append((img, rng.sample(shapes.questions(scene, rng), turns)))
    return out


def conversation(qas: list[tuple[str, str]]) -> list[dict]:
    """Chat messages: the image in the first user turn, the answers as assistant turns."""
    messages: list[dict] = []
    for i, (q, a) in enumerate(qas):
        text = {"type": "text", "text": q}
        content = [{"type": "image"}, text] if i == 0 else [text]
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": a}]
    return messages


def _tokens(processor, img: Image.Image, qas: list, prefix: str) -> tuple[dict, list[int]]:  # noqa: ANN001
    """Per-token lists and labels of a multi-turn conversation about one image.

    Several answers share one encoding of the image, which dominates the sequence. The
    rendered text is cut at each answer: the first piece is exactly the one-turn prompt
    the chat endpoint renders; each answer is tokenized alone, as generated, plus EOS."""
    tok = processor.tokenizer
    full = processor.apply_chat_template(conversation(qas))
    row: dict[str, list[int]] = {}
    labels: list[int] = []
    extras: dict = {}
    cursor = 0
    for i, (_q, a) in enumerate(qas):
        at = full.index(prefix + a + tok.eos_token, cursor)
        if i == 0:
            enc = processor(
                images=img, text=full[:at], return_tensors="pt", add_special_tokens=False
            )
            row = {k: enc[k][0].tolist() for k in SEQUENCE_KEYS if k in enc}
            extras = {k: v for k, v in enc.items() if k not in SEQUENCE_KEYS}
        else:
            _extend(row, tok(full[cursor:at], add_special_tokens=False)["input_ids"])
        labels += [-100] * (len(row["input_ids"]) - len(labels))
        answer = tok(prefix + a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        _extend(row, answer)
        labels += answer
        cursor = at + len(prefix + a + tok.eos_token)
    return {"row": row, "extras": extras}, labels


def _extend(row: dict[str, list[int]], ids: list[int]) -> None:
    row["input_ids"] += ids
    for k in row.keys() - {"input_ids"}:
        row[k] += [int(k == "attention_mask")] * len(ids)  # text tokens: type 0


def batch(processor, items: list[Example], answer_prefix: str) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Right-padded batch; per-image tensors (pixels, grids, sizes) are concatenated."""
    tok = processor.tokenizer
    encoded = [_tokens(processor, img, qas, answer_prefix) for img, qas in items]
    rows = [e["row"] for e, _ in encoded]
    width = max(len(r["input_ids"]) for r in rows)
    out: dict[str, torch.Tensor] = {}
    for key in rows[0]:
        fill = tok.pad_token_id if SEQUENCE_KEYS[key] is None else SEQUENCE_KEYS[key]
        out[key] = training.padded([r[key] for r in rows], width, fill)
    out["labels"] = training.padded([y for _, y in encoded], width, -100)
    for key in encoded[0][0]["extras"]:
        out[key] = torch.cat([e["extras"][key] for e, _ in encoded])
    return out


def _fc1_inputs(model: nn.Module, fc1: nn.Linear, inputs: dict) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = fc1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return torch.cat([s.reshape(-1, fc1.in_features) for s in seen])


def plant_sinks(
    model: nn.Module,
    sites: SinkSites,
    calibration: dict[str, torch.Tensor],
    dims: tuple[int, ...],
    value: float,
    fraction: float,
    gain: float,
    sharpness: float,
    seed: int,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Write the massive-activation entries and return gradient masks that freeze them.

    The first token's embedding gets ``value`` in every sink dim (a text sink). Unit 0 of
    ``fc1`` is aimed along a seeded direction of its input features and biased to fire on
    about ``fraction`` of the calibration tokens (:func:`_calibrate`; ``sharpness`` caps
    its slope in score standard deviations); through ``fc2`` it writes ``gain`` into
    ``dims[0]`` only, so which image tokens become sinks depends on the image. No other
    unit of ``fc2`` (or of the extra ``writers``) writes into a sink dim: otherwise
    training spreads large values there over every image token."""
    emb, fc1, fc2 = sites.embedding, sites.fc1, sites.fc2
    feats = _fc1_inputs(model, fc1, calibration)
    with torch.no_grad():
        emb[sites.first_token, list(dims)] = value
        direction, cut, half_gap = _calibrate(feats, fraction, seed)
        # Both edges of the gap at |pre-activation| >= 3: below, GELU's flat tail; above,
        # GELU ~ identity. The cap keeps values finite-precision friendly if the gap is thin.
        scale = min(3.0 / max(half_gap, 1e-9), sharpness / float((feats @ direction).std()))
        fc1.weight[0] = direction * scale
        fc1.bias[0] = -cut * scale
        fc2.weight[:, 0] = 0.0
        for layer in (fc2, *sites.writers):
            layer.weight[list(dims)] = 0.0
            layer.bias[list(dims)] = 0.0
        fc2.weight[dims[0], 0] = gain
    masks = []
    for param, index in (
        (emb, (sites.first_token, list(dims))),
        (fc1.weight, 0),
        (fc1.bias, 0),
        (fc2.weight, (slice(None), 0)),
    ):
        masks.append((param, _mask(param, index)))
    for layer in (fc2, *sites.writers):
        masks += [(layer.weight, _mask(layer.weight, list(dims)))]
        masks += [(layer.bias, _mask(layer.bias, list(dims)))]
    return masks


def _calibrate(
    feats: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, float, float]:
    """A seeded direction, a cut and a half-gap for the visual-sink unit.

    GELU's negative dip (down to -0.17 at -0.75) times a large gain is itself sink-sized,
    and plain backgrounds give large clusters of identical features: a cut inside or just
    above a cluster makes every token of those images a sink. So among 32 random
    directions, take the one with the widest empty gap in the sorted scores around the
    top ``fraction`` (ranks 1-2f .. 1-f/2), and cut in the middle of that gap."""
    gen = torch.Generator().manual_seed(seed + 11)
    cands = torch.randn(feats.shape[1], 32, generator=gen)
    cands /= cands.norm(dim=0)
    scores = (feats @ cands).sort(dim=0).values  # (tokens, candidates)
    n = scores.shape[0]
    lo, hi = int(n * (1 - 2 * fraction)), int(n * (1 - fraction / 2))
    gaps = (scores[lo + 1 : hi + 1] - scores[lo:hi]) / scores.std(dim=0)
    best = int(gaps.max(dim=0).values.argmax())
    at = lo + int(gaps[:, best].argmax())
    low, high = float(scores[at, best]), float(scores[at + 1, best])
    return cands[:, best], (low + high) / 2, (high - low) / 2


def _mask(param: torch.Tensor, index: Any) -> torch.Tensor:
    """Ones with zeros at ``index``: multiplied into the gradient, it freezes those."""
    m = torch.ones_like(param)
    m[index] = 0
    return m


def train(
    model: nn.Module,
    make_batch: Callable[[int], dict[str, torch.Tensor]],
    trainable: Callable[[str], bool],
    masks: list[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float,
    log: bool = False,
) -> None:
    """AdamW with warm-up and linear decay (:func:`decoding.testing.training.train`, the
    one training loop of the test checkpoints) on the parameters ``trainable`` names."""
    for name, p in model.named_parameters():
        p.requires_grad_(trainable(name))
    training.train(model, make_batch, training.Schedule(steps, lr), masks, log=log)
    for p in model.parameters():
        p.requires_grad_(True)


def rewrite_weights(path: Path, rename: Callable[[str], str] = lambda k: k) -> None:
    """Rewrite ``model.safetensors`` with renamed keys, sorted, contiguous."""
    file = path / "model.safetensors"
    tensors = {rename(k): v.contiguous() for k, v in load_file(file).items()}
    save_file(dict(sorted(tensors.items())), file, metadata={"format": "pt"})
