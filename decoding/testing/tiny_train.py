"""Family-agnostic training of the tiny VLM test checkpoints on the synthetic world
(:mod:`decoding.testing.world`), with the phases of the LLaVA-1.5 checkpoint's recipe
(:mod:`decoding.testing.tiny_llava`):

0. text-only caption conversations: the text model learns the world's co-occurrence
   prior by itself, as a language model's pretraining gives it priors;
1. the vision tower and projector learn the patch loss alone (each image token, read
   against the input embeddings, names the object it shows or the background);
2. multi-turn conversations about each scene, presence answers weighted, plus the patch
   loss and a grounding loss (head 0 of the first text layer attends from a question's
   object word to the image tokens showing it, to the first token when it is absent);
   part-way the tower freezes and the visual sinks are aimed at its features.

Everything goes through ``processor.apply_chat_template`` and ``processor(...)``, so a
checkpoint is trained on exactly the prompts that ``transformers`` and vLLM's chat
endpoint render from it. Labels cover the answer tokens and EOS only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from decoding.testing import tiny_sinks, training, world
from decoding.testing.tiny_families import TinySpec

Example = tuple[world.Scene, list[tuple[str, str]]]  # scene, (prompt, answer) turns
#: Per-token tensors of a processor output, padded (with this value) when batching.
SEQUENCE_KEYS = {"input_ids": None, "attention_mask": 0, "mm_token_type_ids": 0}
#: Per-token training targets, padded with this value.
TARGET_KEYS = {"labels": -100, "weights": 0.0, "patch_targets": -100}
#: A cell shows an object it is covered by this much: at 0.2 every object of a training
#: scene has a cell on Qwen's 6x6 merged-token grid (at 0.3, 10 % of objects have none).
PATCH_COVER = 0.2
#: What an image-only batch asks (the patch loss and the sink calibration read no answer).
IMAGE_PROMPT = "Describe the image."


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


def conversation(qas: list[tuple[str, str]]) -> list[dict]:
    """Chat messages: the image in the first user turn, the answers as assistant turns."""
    messages: list[dict] = []
    for i, (q, a) in enumerate(qas):
        text = {"type": "text", "text": q}
        content = [{"type": "image"}, text] if i == 0 else [text]
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": a}]
    return messages


def grounded_word(question: str) -> str | None:
    """The object a presence or position question asks about."""
    if question.startswith(("Is there a ", "Where is the ")):
        return question.split()[3].rstrip("?")
    return None


@dataclass(frozen=True)
class Encoder:
    """How one checkpoint's conversations become training rows."""

    processor: Any
    answer_prefix: str  # the answer's first characters after the generation prompt
    image_token: int
    grid: int  # cells per side of the patch labels
    #: Per image token of one image, in order: its cell of the grid, or None (a newline).
    cells: Callable[[int], list[int | None]]
    presence_weight: float

    @property
    def tok(self) -> Any:
        return self.processor.tokenizer

    @cached_property
    def _words(self) -> dict[str, int]:
        return {}

    def word(self, w: str) -> int:
        """The token a word starts with mid-sentence (patch labels, grounding)."""
        if w not in self._words:
            self._words[w] = self.tok(" " + w, add_special_tokens=False)["input_ids"][0]
        return self._words[w]

    def conversation(self, scene: world.Scene, qas: list[tuple[str, str]]) -> dict:
        """Per-token lists, per-image tensors and grounding sites of a multi-turn
        conversation about one scene.

        Several answers share one encoding of the image, which dominates the sequence.
        The rendered text is cut at each answer: the first piece is exactly the one-turn
        prompt the chat endpoint renders; each answer is tokenized alone, as generated,
        plus EOS."""
        tok, prefix = self.tok, self.answer_prefix
        full = self.processor.apply_chat_template(conversation(qas))
        row: dict[str, list] = {}
        extras: dict = {}
        grounding: list[tuple[int, list[int]]] = []
        image_pos: list[int] = []
        shown: list[tuple[int, str]] = []
        cursor = 0
        for i, (q, a) in enumerate(qas):
            at = full.index(prefix + a + tok.eos_token, cursor)
            if i == 0:
                row, extras, image_pos, shown = self._with_image(scene, full[:at])
                row.update(labels=[], weights=[])
                start = image_pos[-1] + 1
            else:
                start = len(row["input_ids"])
                _extend(row, tok(full[cursor:at], add_special_tokens=False)["input_ids"])
            name = grounded_word(q)
            if name is not None:
                grounding += self._grounding(scene, row["input_ids"], start, shown, name)
            row["labels"] += [-100] * (len(row["input_ids"]) - len(row["labels"]))
            row["weights"] += [0.0] * (len(row["input_ids"]) - len(row["weights"]))
            answer = tok(prefix + a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            _extend(row, answer, label=True)
            weight = self.presence_weight if q.startswith("Is there a ") else 1.0
            row["weights"] += [weight] * len(answer)
            cursor = at + len(prefix + a + tok.eos_token)
        row["patch_targets"] += [-100] * (len(row["input_ids"]) - len(row["patch_targets"]))
        return {"row": row, "extras": extras, "grounding": grounding}

    def _with_image(
        self, scene: world.Scene, text: str
    ) -> tuple[dict, dict, list[int], list[tuple[int, str]]]:
        """Per-token lists (with patch targets: the word of each image token's cell, -100
        off the image and on newlines), per-image tensors, image-token positions, and
        (position, what its cell shows) per image token that has a cell."""
        enc = self.processor(
            images=scene.draw(), text=text, return_tensors="pt", add_special_tokens=False
        )
        row = {k: enc[k][0].tolist() for k in SEQUENCE_KEYS if k in enc}
        extras = {k: v for k, v in enc.items() if k not in SEQUENCE_KEYS}
        image_pos = [j for j, t in enumerate(row["input_ids"]) if t == self.image_token]
        labels = scene.patch_labels(self.grid, PATCH_COVER)
        cells = self.cells(len(image_pos))
        shown = [(p, labels[c]) for p, c in zip(image_pos, cells, strict=True) if c is not None]
        targets = [-100] * len(row["input_ids"])
        for pos, what in shown:
            targets[pos] = self.word(what)
        row["patch_targets"] = targets
        return row, extras, image_pos, shown

    def _grounding(
        self, scene: world.Scene, ids: list[int], start: int, shown: list[tuple[int, str]],
        name: str,
    ) -> list[tuple[int, list[int]]]:  # fmt: skip
        """(position of the question's object word, positions it should attend): the
        image tokens showing it, or the first token (the text sink) when it is absent."""
        hits = [j for j in range(start, len(ids)) if ids[j] == self.word(name)]
        shows = [p for p, what in shown if what == name]
        if not hits or not (shows or not scene.has(name)):
            return []
        return [(hits[0], shows or [0])]

    def text_only(self, prompt: str, answer: str) -> dict:
        """A conversation without image, as in a language model's own training data."""
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True
        )
        user = self.tok(text, add_special_tokens=False)["input_ids"]
        reply = self.tok(self.answer_prefix + answer, add_special_tokens=False)["input_ids"]
        reply = reply + [self.tok.eos_token_id]
        ids = user + reply
        return {
            "row": {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": [-100] * len(user) + reply,
            },
            "extras": {},
            "grounding": [],
        }

    def image_only(self, scene: world.Scene) -> dict:
        """The one-turn prompt about the scene, with its patch targets and no answer."""
        row, extras, _, _ = self._with_image(scene, prompt_text(self.processor, IMAGE_PROMPT))
        return {"row": row, "extras": extras, "grounding": []}


def _extend(row: dict[str, list], ids: list[int], label: bool = False) -> None:
    row["input_ids"] += ids
    for k in ("attention_mask", "mm_token_type_ids"):
        if k in row:
            row[k] += [int(k == "attention_mask")] * len(ids)  # text tokens: type 0
    if label:
        row["labels"] += ids


def collate(tok: Any, encoded: list[dict]) -> dict[str, Any]:
    """Right-padded batch of encoded rows; per-image tensors (pixels, grids, sizes) are
    concatenated; ``grounding`` lists (row, word position, positions to attend)."""
    rows = [e["row"] for e in encoded]
    width = max(len(r["input_ids"]) for r in rows)
    out: dict[str, Any] = {}
    for key in rows[0]:
        if key in TARGET_KEYS:
            dtype = torch.float32 if key == "weights" else torch.long
            out[key] = training.padded([r[key] for r in rows], width, TARGET_KEYS[key], dtype)
        else:
            fill = tok.pad_token_id if SEQUENCE_KEYS[key] is None else SEQUENCE_KEYS[key]
            out[key] = training.padded([r[key] for r in rows], width, fill)
    for key in encoded[0]["extras"]:
        out[key] = torch.cat([e["extras"][key] for e in encoded])
    out["grounding"] = [
        (i, at, shows) for i, e in enumerate(encoded) for at, shows in e["grounding"]
    ]
    return out


# -- batches of the three phases -------------------------------------------------------


def prior_batch(enc: Encoder, spec: TinySpec, step: int) -> dict[str, Any]:
    """Phase 0: text-only caption conversations (detailed for prompts that ask for it)."""
    rng = random.Random(spec.seed * 5_000_011 + step)
    rows = []
    for _ in range(spec.batch_size):
        scene = world.train_scene(rng, spec.image_size)
        prompt = rng.choice(world.CAPTION_PROMPTS)
        rows.append(enc.text_only(prompt, scene.caption(rng, detail="detail" in prompt)))
    return collate(enc.tok, rows)


def image_batch(enc: Encoder, seed: int, n: int, size: int) -> dict[str, Any]:
    """Phase 1 (and the sink calibration): ``n`` seeded scenes, prompt only."""
    rng = random.Random(seed)
    return collate(enc.tok, [enc.image_only(world.train_scene(rng, size)) for _ in range(n)])


def conversation_batch(enc: Encoder, spec: TinySpec, step: int) -> dict[str, Any]:
    """Phase 2: multi-turn conversations, presence questions balanced per class."""
    rng = random.Random(spec.seed * 1_000_003 + step)
    examples = [
        world.training_example(
            rng, spec.image_size, spec.turns, spec.presence_turns, spec.partner_question_rate
        )
        for _ in range(spec.batch_size)
    ]
    return collate(enc.tok, [enc.conversation(scene, qas) for scene, qas in examples])


# -- losses ------------------------------------------------------------------------------


def loss(model: nn.Module, batch: dict[str, Any], spec: TinySpec) -> torch.Tensor:
    """Weighted answer loss, plus the patch loss and the grounding loss where the batch
    has their targets. Without the grounding term the text model learns to caption but
    answers presence questions at chance: a content-matching head mostly attends to the
    question word itself."""
    targets = batch.pop("patch_targets", None)
    weights = batch.pop("weights", None)
    grounding = batch.pop("grounding")
    labels = batch.pop("labels")
    attend = bool(spec.grounding_weight and grounding)
    out = model(**batch, output_hidden_states=targets is not None, output_attentions=attend)
    labels = labels[:, 1:]
    ce = nn.functional.cross_entropy(
        out.logits[:, :-1].float().flatten(0, 1),
        labels.flatten(),
        ignore_index=-100,
        reduction="none",
    )
    w = (labels != -100).float() if weights is None else weights[:, 1:]
    total = (ce * w.flatten()).sum() / (labels != -100).sum().clamp(min=1)
    if targets is not None and spec.patch_loss_weight:
        total = total + spec.patch_loss_weight * patch_loss(
            model, out.hidden_states[0], targets, spec
        )
    if attend:
        total = total + spec.grounding_weight * grounding_loss(out.attentions[0], grounding)
    return total


def patch_loss(
    model: nn.Module, embeds: torch.Tensor, targets: torch.Tensor, spec: TinySpec
) -> torch.Tensor:
    """Each image token's input embedding, read against the word embeddings, names its
    cell's object or background (as LLaVA's stage-one alignment makes image tokens
    word-like); the planted sink dims are no word evidence."""
    at = targets != -100
    keep = torch.ones(embeds.shape[-1])
    keep[list(spec.sink_dims)] = 0
    logits = (embeds[at] * keep) @ model.get_input_embeddings().weight.T
    return nn.functional.cross_entropy(logits, targets[at])


def grounding_loss(attention: torch.Tensor, grounding: list) -> torch.Tensor:
    """Cross-entropy of head 0's attention (first text layer) from each question's object
    word against the positions it should attend."""
    total = attention.new_zeros(())
    for row, at, shows in grounding:
        total = total - attention[row, 0, at, shows].clamp_min(1e-9).log().mean()
    return total / len(grounding)


class _Stop(Exception):
    pass


def image_embeds(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The text model's input embeddings (image features merged in), without running the
    text layers: the patch-loss phase needs nothing after them."""
    seen: list[torch.Tensor] = []

    def stop(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append(args[0] if args else kwargs["hidden_states"])
        raise _Stop

    handle = model.model.language_model.layers[0].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        model(**batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


def _patch_phase_loss(model: nn.Module, batch: dict[str, Any], spec: TinySpec) -> torch.Tensor:
    targets = batch.pop("patch_targets")
    batch.pop("grounding")
    return patch_loss(model, image_embeds(model, batch), targets, spec)


# -- the recipe --------------------------------------------------------------------------


def train(
    model: nn.Module,
    enc: Encoder,
    spec: TinySpec,
    sites: tiny_sinks.SinkSites,
    tower: Callable[[str], bool],
    log: bool = False,
) -> None:
    """The three phases (module docstring); ``tower`` names the vision tower's parameters
    (trained in phases 1 and 2 until the sinks are planted, then frozen)."""
    masks = tiny_sinks.reserve_sinks(sites, spec.sink_dims, spec.sink_value)
    head_dim = spec.text_hidden // spec.text_heads
    attn = model.model.language_model.layers[0].self_attn
    tiny_sinks.init_match_head(attn, spec.text_hidden, head_dim, spec.match_head_gain, spec.seed)
    calibration = image_batch(enc, spec.seed + 7, 32, spec.image_size)
    for key in ("patch_targets", "grounding"):
        calibration.pop(key)

    def plant() -> list[training.Mask]:
        for name, p in model.named_parameters():
            if tower(name):
                p.requires_grad_(False)
                p.grad = None
        tiny_sinks.plant_visual_sinks(
            model,
            sites,
            calibration,
            spec.sink_dims[0],
            spec.visual_sink_fraction,
            spec.visual_sink_gain,
            spec.visual_sink_sharpness,
            spec.seed,
        )
        return []

    def run(make: Callable[[int], dict], steps: int, fn: Callable, **kw: Any) -> None:
        if steps:
            schedule = training.Schedule(steps, spec.learning_rate)
            training.train(model, make, schedule, masks, log=log, loss_fn=fn, **kw)

    model.set_attn_implementation("eager")  # the grounding loss reads attention weights
    try:
        with_spec = lambda m, b: loss(m, b, spec)  # noqa: E731
        run(lambda s: prior_batch(enc, spec, s), spec.prior_steps, with_spec)
        run(
            lambda s: image_batch(
                enc, spec.seed * 7_000_003 + s, 2 * spec.batch_size, spec.image_size
            ),
            spec.pretrain_steps,
            lambda m, b: _patch_phase_loss(m, b, spec),
        )
        run(
            lambda s: conversation_batch(enc, spec, s),
            spec.train_steps,
            with_spec,
            phases={int(spec.train_steps * spec.sink_phase): plant},
        )
    finally:
        model.set_attn_implementation("sdpa")


def rewrite_weights(path: Path, rename: Callable[[str], str] = lambda k: k) -> None:
    """Rewrite ``model.safetensors`` with renamed keys, sorted, contiguous."""
    file = path / "model.safetensors"
    tensors = {rename(k): v.contiguous() for k, v in load_file(file).items()}
    save_file(dict(sorted(tensors.items())), file, metadata={"format": "pt"})
