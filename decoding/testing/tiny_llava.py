"""Build the tiny LLaVA-1.5 test checkpoint: ``python -m decoding.testing.tiny_llava DIR``.

The checkpoint has the real LLaVA-1.5 structure in the llava-hf layout (CLIP ViT vision
tower read at ``vision_feature_layer=-2`` with the "default" CLS-dropping strategy, a
two-layer GELU projector, a Llama text model), a locally trained byte-level BPE
tokenizer with ``<image>`` and the llava-1.5 chat template, and a ``LlavaProcessor``.
``transformers`` and vLLM load it like any checkpoint.

Weights are seeded; the whole model, vision tower included, is then trained on the
synthetic world of :mod:`decoding.testing.world` (objects with strong co-occurrence and
frequency priors), so that it grounds what it sees and also hallucinates a frequent
partner that is absent: the phenomenon the decoding strategies target. Training runs in
four phases: first the text model learns the world's captions as text-only conversations
(as a language model's own pretraining gives it priors before it ever sees an image);
then the tower and projector learn a patch loss alone (each image token names what it
shows, as LLaVA's alignment stage makes image tokens word-like); then
everything learns on multi-turn conversations, with an attention loss that teaches one
head of the first text layer to match a question's object word to the patches showing
it (without it presence answers stay at chance); then the vision tower is frozen, the
visual sink unit is calibrated on the trained tower's features, and the text model and
projector learn around the planted sinks.

Planted attention sinks: "massive activation" dimensions ``sink_dims`` of the residual
stream, as VAR (Kang et al., ICLR 2025) finds them in LLaMA-2 (dims 1415/2533 of 7B).
The BOS embedding carries a large constant in those dimensions (a text sink), and one
projector unit, tuned to fire on a few percent of patches, writes a large value into
``sink_dims[0]`` (visual sinks that depend on the image). Those entries are frozen during
training so the model learns around them (the BOS entries from the start, the unit from
the second phase on). With hidden size ``H`` the VAR score
``max |x_d| / RMS(x)`` is bounded by ``sqrt(H)``, so the tiny model's profile uses a
smaller sink threshold than the paper's 20 (see ``decoding/profiles``).

The build is deterministic: one thread, deterministic algorithms, seeded everything, so
rebuilding with the same spec writes byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from decoding.testing import tiny_sinks, training, world
from decoding.testing.tokenizer import build_tokenizer

#: Residual-stream dimensions that carry the planted massive activations.
TINY_SINK_DIMS = (17, 93)
#: Bumped whenever the build recipe changes, so cached builds are not reused.
RECIPE_VERSION = 5


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Knobs of the tiny checkpoint. Defaults give 64 image tokens and build in ~3 min."""

    seed: int = 0
    image_size: int = 112  # 112/14 = 8x8 = 64 image tokens (336 gives LLaVA's 576)
    patch_size: int = 14
    vision_hidden: int = 64
    vision_layers: int = 3  # feature layer -2 is the output of encoder layer 1
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4  # head_dim 32: vLLM's CPU attention needs 32, 64, 80, ...
    text_intermediate: int = 384
    tokenizer_vocab: int = 1024
    train_steps: int = 300
    batch_size: int = 16
    learning_rate: float = 3e-3
    sink_phase: float = 0.6  # share of the steps after which the tower freezes, sinks plant
    turns: int = 4  # question/answer turns per training image
    presence_turns: int = 2  # of them yes/no presence questions (one balanced per class)
    partner_question_rate: float = 0.0  # extra presence turns asking a missing partner
    presence_weight: float = 3.0  # loss weight of the presence answers' tokens
    patch_loss_weight: float = 1.0  # auxiliary loss: each patch token names what it shows
    # Stage one (as LLaVA's alignment stage): tower and projector learn the patch loss
    # alone, for pretrain_share * train_steps steps of 2 * batch_size images.
    pretrain_share: float = 1.0
    # Auxiliary attention loss: in the first text layer's head 0, the object word of a
    # presence or position question attends to the patches showing that object (to BOS
    # when it is absent).
    grounding_weight: float = 1.0
    # Stage zero (as the language model's own pretraining): text-only conversations with
    # the world's captions, so the text model holds the co-occurrence prior by itself.
    prior_steps: int = 100
    match_head_gain: float = 8.0  # start of a content-matching head (0: plain init)
    sink_dims: tuple[int, ...] = TINY_SINK_DIMS
    sink_value: float = 6.0  # BOS value in each sink dim (embeddings are ~0.02-0.3)
    visual_sink_fraction: float = 0.04  # share of patches the sink unit fires on
    visual_sink_gain: float = 60.0

    def digest(self) -> str:
        blob = json.dumps({"recipe": RECIPE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _config(spec: TinyLlavaSpec, vocab: int, image_token: int, pad: int) -> LlavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 4,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        vocab_size=vocab,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=pad,
        tie_word_embeddings=False,
    )
    grid = spec.image_size // spec.patch_size
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=grid * grid,
        pad_token_id=pad,
        tie_word_embeddings=False,
    )
    cfg.sink_dims = list(spec.sink_dims)  # read by decoding.profiles for VAR
    return cfg


def _processor(spec: TinyLlavaSpec, tokenizer) -> LlavaProcessor:  # noqa: ANN001
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
        image_token="<image>",
    )


def _examples(spec: TinyLlavaSpec, step: int) -> list[tuple]:
    rng = random.Random(spec.seed * 1_000_003 + step)
    return [
        world.training_example(
            rng, spec.image_size, spec.turns, spec.presence_turns, spec.partner_question_rate
        )
        for _ in range(spec.batch_size)
    ]


def _word_ids(tok):  # noqa: ANN001, ANN202
    words: dict[str, int] = {}

    def word(w: str) -> int:
        if w not in words:
            words[w] = tok(" " + w, add_special_tokens=False)["input_ids"][0]
        return words[w]

    return word


def _batch(
    processor: LlavaProcessor, examples: list[tuple], grid: int, spec: TinyLlavaSpec
) -> dict:
    """Conversations in the llava-1.5 template: ``USER: <image>\nq1 ASSISTANT: a1</s>USER:
    q2 ASSISTANT: a2</s>...``; only the answers (and their ``</s>``) are labels, those of
    presence questions weighted ``presence_weight``. ``grounding`` lists, per presence or
    position question, (row, position of its object word, positions it should attend)."""
    tok = processor.tokenizer
    word = _word_ids(tok)
    image_id = tok.convert_tokens_to_ids("<image>")
    ids, labels, weights, patches, grounding = [], [], [], [], []
    pixels = []
    for row, (scene, turns) in enumerate(examples):
        first = turns[0][0]
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": first}]}],
            add_generation_prompt=True,
        )
        # The chat template writes BOS itself (as vLLM's chat endpoint expects).
        enc = processor(
            images=scene.draw(), text=prompt, return_tensors="pt", add_special_tokens=False
        )
        seq = enc["input_ids"][0].tolist()
        lab = [-100] * len(seq)
        wts = [0.0] * len(seq)
        image_pos = [j for j, t in enumerate(seq) if t == image_id]
        cells = scene.patch_labels(grid)
        for i, (q, a) in enumerate(turns):
            start = len(seq) if i else image_pos[-1] + 1
            if i:
                user = tok(f"USER: {q} ASSISTANT:", add_special_tokens=False)["input_ids"]
                seq += user
                lab += [-100] * len(user)
                wts += [0.0] * len(user)
            presence = q.startswith("Is there a ")
            if presence or q.startswith("Where is the "):
                name = q.split()[3].rstrip("?")
                at = [j for j in range(start, len(seq)) if seq[j] == word(name)]
                shows = [image_pos[k] for k, c in enumerate(cells) if c == name]
                if at and (shows or not scene.has(name)):
                    grounding.append((row, at[0], shows or [0]))  # absent: BOS, the sink
            answer = tok(" " + a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            seq += answer
            lab += answer
            wts += [spec.presence_weight if presence else 1.0] * len(answer)
        ids.append(seq)
        labels.append(lab)
        weights.append(wts)
        pixels.append(enc["pixel_values"])
        patches.append([word(w) for w in cells])
    width = max(len(x) for x in ids)
    return {
        **_text_batch(tok, ids, labels, width),
        "weights": training.padded(weights, width, 0.0, torch.float32),
        "pixel_values": torch.cat(pixels),
        "patch_labels": torch.tensor(patches),
        "grounding": grounding,
    }


def _loss(model, batch: dict, spec: TinyLlavaSpec) -> torch.Tensor:  # noqa: ANN001
    """Weighted answer loss plus two auxiliary terms: the patch loss (each projected patch
    token, read against the input embeddings, names its object or the background, as
    LLaVA's stage-one alignment makes image tokens word-like) and the grounding loss (the
    first text layer's head 0 matches a question's object word to the patches that show
    it). Without the grounding term the text model learns to caption in a few hundred
    steps but not to match a question's object against the image: it answers presence
    questions at chance, since a content-matching head mostly attends to the question
    word itself."""
    targets = batch.pop("patch_labels")
    labels = batch.pop("labels")
    weights = batch.pop("weights")
    grounding = batch.pop("grounding")
    out = model(**batch, output_hidden_states=bool(spec.grounding_weight and grounding))
    logits = out.logits[:, :-1].float()
    labels, weights = labels[:, 1:], weights[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none"
    )
    loss = (ce * weights.flatten()).sum() / (labels != -100).sum().clamp(min=1)
    if spec.grounding_weight and grounding:
        loss = loss + spec.grounding_weight * _grounding_loss(
            model, out.hidden_states[0], grounding, spec
        )
    if spec.patch_loss_weight:
        aux = _patch_loss(model, batch["pixel_values"], targets, spec)
        loss = loss + spec.patch_loss_weight * aux
    return loss


def _patch_loss(model, pixels, targets, spec: TinyLlavaSpec) -> torch.Tensor:  # noqa: ANN001
    feats = model.model.multi_modal_projector(_feature_layer_patches(model, pixels))
    keep = torch.ones(feats.shape[-1])
    keep[list(spec.sink_dims)] = 0  # the planted sink dims are no word evidence
    emb = model.model.language_model.embed_tokens.weight
    logits = (feats * keep) @ emb.T
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _grounding_loss(model, hidden, grounding: list, spec: TinyLlavaSpec) -> torch.Tensor:  # noqa: ANN001
    """Cross-entropy of head 0's attention (first text layer, recomputed from its input
    ``hidden``) from each question's object word against the positions it should attend."""
    lm = model.model.language_model
    layer = lm.layers[0]
    x = layer.input_layernorm(hidden)
    batch, length, _ = x.shape
    head = spec.text_hidden // spec.text_heads
    cos, sin = lm.rotary_emb(x, torch.arange(length).unsqueeze(0).expand(batch, length))
    q = torch.nn.functional.linear(x, layer.self_attn.q_proj.weight[:head]).unsqueeze(1)
    k = torch.nn.functional.linear(x, layer.self_attn.k_proj.weight[:head]).unsqueeze(1)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    q, k = q[:, 0], k[:, 0]
    total = hidden.new_zeros(())
    for row, at, shows in grounding:
        scores = (k[row, : at + 1] @ q[row, at]) / head**0.5
        total = total - torch.log_softmax(scores, -1)[shows].mean()
    return total / len(grounding)


def _feature_layer_patches(model: LlavaForConditionalGeneration, pixels: torch.Tensor):
    out = model.model.vision_tower(pixels, output_hidden_states=True)
    return out.hidden_states[-2][:, 1:]  # drop CLS as the "default" strategy does


UNIT = 0  # the projector hidden unit dedicated to visual sinks


def _plant_text_sink(model, processor, spec: TinyLlavaSpec) -> list[training.Mask]:  # noqa: ANN001
    """BOS carries the massive activation; the sink unit is reserved (silent) until the
    second phase. Returns the gradient masks that keep both fixed."""
    bos = processor.tokenizer.bos_token_id
    emb = model.model.language_model.embed_tokens.weight
    proj = model.model.multi_modal_projector
    with torch.no_grad():
        emb[bos, list(spec.sink_dims)] = spec.sink_value
        proj.linear_2.weight[:, UNIT] = 0.0
    m_emb = torch.ones_like(emb)
    m_emb[bos, list(spec.sink_dims)] = 0
    masks = [(emb, m_emb)]
    for p in (proj.linear_1.weight, proj.linear_1.bias):
        m = torch.ones_like(p)
        m[UNIT] = 0
        masks.append((p, m))
    m2 = torch.ones_like(proj.linear_2.weight)
    m2[:, UNIT] = 0
    masks.append((proj.linear_2.weight, m2))
    return masks


def _plant_visual_sinks(model, processor, spec: TinyLlavaSpec) -> None:  # noqa: ANN001
    """Freeze the (trained) tower and tune the sink unit on its features so that it fires
    on ~``visual_sink_fraction`` of the patches of seeded scenes."""
    training.freeze(model.model.vision_tower)
    proj = model.model.multi_modal_projector
    rng = random.Random(spec.seed + 7)
    imgs = [world.train_scene(rng, spec.image_size).draw() for _ in range(32)]
    pixels = processor.image_processor(imgs, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        feats = _feature_layer_patches(model, pixels).reshape(-1, spec.vision_hidden)
        gen = torch.Generator().manual_seed(spec.seed + 11)
        direction = torch.randn(spec.vision_hidden, generator=gen)
        direction /= direction.norm()
        score = feats @ direction
        cut = torch.quantile(score, 1.0 - spec.visual_sink_fraction)
        # Trained features cluster (background patches are alike), so scale by the spread
        # of the firing patches: the top quarter of them reaches a pre-activation of 3.
        upper = torch.quantile(score, 1.0 - spec.visual_sink_fraction / 4)
        scale = 3.0 / (upper - cut + 1e-6)
        proj.linear_1.weight[UNIT] = direction * scale
        proj.linear_1.bias[UNIT] = -cut * scale
        proj.linear_2.weight[spec.sink_dims[0], UNIT] = spec.visual_sink_gain


def _init_match_head(model, spec: TinyLlavaSpec) -> None:  # noqa: ANN001
    """Head 0 of the first text layer starts as a content-matching head
    (:func:`decoding.testing.tiny_sinks.init_match_head`): a word of the question then
    attends to the image tokens that show it (the patch loss makes them look like it)."""
    if spec.match_head_gain:
        attn = model.model.language_model.layers[0].self_attn
        head = spec.text_hidden // spec.text_heads
        tiny_sinks.init_match_head(attn, spec.text_hidden, head, spec.match_head_gain, spec.seed)


def _pretrain(model, processor, spec: TinyLlavaSpec, masks: list, log: bool) -> None:  # noqa: ANN001
    """Stage one: tower and projector learn the patch loss alone (no text forward)."""
    steps = int(spec.train_steps * spec.pretrain_share)
    if not steps or not spec.patch_loss_weight:
        return
    grid = spec.image_size // spec.patch_size
    word = _word_ids(processor.tokenizer)

    def batch(step: int) -> dict[str, torch.Tensor]:
        rng = random.Random(spec.seed * 7_000_003 + step)
        scenes = [world.train_scene(rng, spec.image_size) for _ in range(2 * spec.batch_size)]
        pixels = processor.image_processor([s.draw() for s in scenes], return_tensors="pt")
        cells = [[word(c) for c in s.patch_labels(grid)] for s in scenes]
        return {"pixel_values": pixels["pixel_values"], "patch_labels": torch.tensor(cells)}

    training.train(
        model,
        batch,
        training.Schedule(steps, spec.learning_rate),
        masks,
        log=log,
        loss_fn=lambda m, b: _patch_loss(m, b["pixel_values"], b["patch_labels"], spec),
    )


def _prior_batch(processor, spec: TinyLlavaSpec, step: int) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Text-only ``USER: <caption prompt> ASSISTANT: <caption></s>`` rows (no image)."""
    tok = processor.tokenizer
    rng = random.Random(spec.seed * 5_000_011 + step)
    rows = []
    for _ in range(spec.batch_size):
        scene = world.train_scene(rng, spec.image_size)
        prompt = rng.choice(world.CAPTION_PROMPTS)
        user = tok(f"USER: {prompt} ASSISTANT:")["input_ids"]  # with BOS
        answer = tok(" " + scene.caption(rng, detail="detail" in prompt), add_special_tokens=False)
        rows.append((user, answer["input_ids"] + [tok.eos_token_id]))
    ids = [u + a for u, a in rows]
    labels = [[-100] * len(u) + a for u, a in rows]
    return _text_batch(tok, ids, labels, max(len(x) for x in ids))


def _text_batch(tok, ids: list[list[int]], labels: list[list[int]], width: int) -> dict:  # noqa: ANN001
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""
    return {
        "input_ids": training.padded(ids, width, tok.pad_token_id),
        "attention_mask": training.padded([[1] * len(x) for x in ids], width, 0),
        "labels": training.padded(labels, width, -100),
    }


def _prior_loss(model, batch: dict) -> torch.Tensor:  # noqa: ANN001
    labels = batch.pop("labels")
    logits = model(**batch).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
    )


def _train(model, processor, spec: TinyLlavaSpec, masks: list, log: bool) -> None:  # noqa: ANN001
    def phase_two() -> list[training.Mask]:
        _plant_visual_sinks(model, processor, spec)
        return []

    if spec.prior_steps:
        training.train(
            model,
            lambda step: _prior_batch(processor, spec, step),
            training.Schedule(spec.prior_steps, spec.learning_rate),
            masks,
            log=log,
            loss_fn=_prior_loss,
        )
    _pretrain(model, processor, spec, masks, log)
    grid = spec.image_size // spec.patch_size
    training.train(
        model,
        lambda step: _batch(processor, _examples(spec, step), grid, spec),
        training.Schedule(spec.train_steps, spec.learning_rate),
        masks,
        phases={int(spec.train_steps * spec.sink_phase): phase_two},
        log=log,
        loss_fn=lambda m, b: _loss(m, b, spec),
    )


def _to_llava_hf_layout(out_dir: Path) -> None:
    """Rename CLIP keys to the llava-hf layout (``vision_tower.vision_model.*``) that
    vLLM 0.32 expects; transformers loads both layouts with identical outputs."""
    path = out_dir / "model.safetensors"
    tensors = load_file(path)
    renamed = {}
    for key, value in tensors.items():
        for prefix in ("model.vision_tower.", "vision_tower."):
            if key.startswith(prefix) and not key.startswith(prefix + "vision_model."):
                key = prefix + "vision_model." + key[len(prefix) :]
                break
        renamed[key] = value.contiguous()
    save_file(dict(sorted(renamed.items())), path, metadata={"format": "pt"})


def build_tiny_llava(
    out_dir: str | Path, spec: TinyLlavaSpec | None = None, log: bool = False
) -> Path:
    """Build the checkpoint into ``out_dir`` (replaced if present) and return the path."""
    spec = spec or TinyLlavaSpec()
    out = Path(out_dir)
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # reductions in a fixed order: identical bytes on rebuild
    torch.use_deterministic_algorithms(True)
    try:
        random.seed(spec.seed)
        torch.manual_seed(spec.seed)
        tokenizer = build_tokenizer(spec.seed, spec.tokenizer_vocab)
        vocab = (len(tokenizer) + 63) // 64 * 64
        image_token = tokenizer.convert_tokens_to_ids("<image>")
        cfg = _config(spec, vocab, image_token, tokenizer.pad_token_id)
        torch.manual_seed(spec.seed)
        model = LlavaForConditionalGeneration(cfg).float()
        processor = _processor(spec, tokenizer)
        masks = _plant_text_sink(model, processor, spec)
        _init_match_head(model, spec)
        _train(model, processor, spec, masks, log)
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        _to_llava_hf_layout(tmp)
        (tmp / "tiny_llava_spec.json").write_text(
            json.dumps({"recipe": RECIPE_VERSION, **asdict(spec)}, indent=1, sort_keys=True)
        )
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return out


def default_cache_dir() -> Path:
    root = os.environ.get("LUCID_CACHE") or Path(__file__).resolve().parents[2] / "build"
    return Path(root)


def ensure_tiny_llava(spec: TinyLlavaSpec | None = None, cache_dir: Path | None = None) -> Path:
    """Return the cached build for ``spec``, building it on first use."""
    spec = spec or TinyLlavaSpec()
    path = (cache_dir or default_cache_dir()) / f"tiny-llava-{spec.digest()}"
    if not (path / "model.safetensors").exists():
        # Build beside it and rename: concurrent test processes may race for the build.
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        build_tiny_llava(tmp, spec, log=True)
        try:
            tmp.rename(path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def file_hashes(path: Path) -> dict[str, str]:
    """SHA-256 of every file of a checkpoint directory."""
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(Path(path).iterdir())
        if f.is_file()
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--ensure"]:  # build the default checkpoint if needed, print its path
        print(ensure_tiny_llava())
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    for name, default in asdict(TinyLlavaSpec()).items():
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            ap.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    ap.add_argument(
        "--sink-dims",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=TINY_SINK_DIMS,
        help="comma-separated residual dims",
    )
    args = vars(ap.parse_args(argv))
    out_dir = args.pop("out_dir")
    spec = TinyLlavaSpec(**args)
    path = build_tiny_llava(out_dir, spec, log=True)
    for name, digest in file_hashes(path).items():
        print(f"{digest}  {name}")


if __name__ == "__main__":
    main()
