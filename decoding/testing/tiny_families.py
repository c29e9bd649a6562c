"""Family-specific parts of the tiny test checkpoints (:mod:`decoding.testing.tiny_models`):
the build knobs, the locally trained tokenizers with each family's special tokens and
chat template, and each family's ``transformers`` config and processor.

The Qwen-style tokenizers (Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision) are byte-level BPEs
trained on a seeded corpus, with a ChatML template that accepts string content and
OpenAI-style lists of parts (images first, then text), so ``transformers`` and vLLM's
chat endpoint render the same prompt. LLaVA-NeXT uses the llava-1.5 tokenizer of
:mod:`decoding.testing.tokenizer` unchanged.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from decoding.testing import world

#: Bumped whenever a recipe (here, in tiny_models, tiny_train or tiny_sinks) changes the files it
#: writes, so cached builds are not reused.
RECIPE_VERSION = 3
#: Qwen2.5-VL normalises with the CLIP mean and standard deviation.
CLIP_NORM = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
#: anyres resolutions (LLaVA-NeXT, OneVision): 1x1, 1x2, 2x1 and 2x2 tiles of 112 px.
GRID_PINPOINTS = [[112, 112], [112, 224], [224, 112], [224, 224]]


@dataclass(frozen=True)
class TinySpec:
    """Knobs of one tiny checkpoint (defaults per family: ``tiny_models.DEFAULT_SPECS``)."""

    seed: int = 0
    image_size: int = 112  # training scenes are image_size x image_size
    vision_hidden: int = 64
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4  # head_dim 32
    text_kv_heads: int = 2
    text_intermediate: int = 384
    tokenizer_vocab: int = 1024
    learning_rate: float = 3e-3
    batch_size: int = 16
    # Phase 0 (tiny_train): text-only caption conversations, the language prior.
    prior_steps: int = 100
    # Phase 1: tower and projector learn the patch loss alone, on 2 * batch_size images.
    pretrain_steps: int = 300
    # Phase 2: conversations; after sink_phase of it the tower freezes, the sinks plant.
    train_steps: int = 300
    sink_phase: float = 0.6
    turns: int = 4  # questions per training image (one image encoding, several answers)
    presence_turns: int = 2  # of them yes/no presence questions (one balanced per class)
    partner_question_rate: float = 0.0  # extra presence turns asking a missing partner
    presence_weight: float = 3.0  # loss weight of the presence answers' tokens
    patch_loss_weight: float = 1.0
    grounding_weight: float = 1.0
    match_head_gain: float = 8.0  # start of a content-matching head (0: plain init)
    sink_dims: tuple[int, ...] = (17, 93)
    sink_value: float = 6.0  # first-token value in each sink dim
    visual_sink_fraction: float = 0.08  # share of image tokens the sink unit fires on
    visual_sink_gain: float = 20.0
    visual_sink_sharpness: float = 12.0  # cap on the unit's slope per score std

    def digest(self, family: str) -> str:
        blob = json.dumps(
            {"recipe": RECIPE_VERSION, "family": family, **asdict(self)}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# -- tokenizers ------------------------------------------------------------------------

#: Special tokens of the Qwen2-VL / Qwen2.5-VL / Qwen3-VL vocabulary, in id order.
QWEN_SPECIALS = tuple(
    "<|endoftext|> <|im_start|> <|im_end|> <|vision_start|> <|vision_end|> <|vision_pad|> "
    "<|image_pad|> <|video_pad|>".split()
)
#: LLaVA-OneVision keeps the Qwen2 specials and adds llava-hf's placeholders.
ONEVISION_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")

QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
ONEVISION_IMAGE = "<image>\n"


def chatml_template(image_text: str) -> str:
    """A ChatML conversation, ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn,
    with ``image_text`` written once per image part before the message's text (the
    Qwen2-VL and llava-hf OneVision layout). No default system message is added."""
    parts_text = (
        "{% for part in message['content'] %}{% if part['type'] == 'text' %}"
        "{{ part['text'] }}{% endif %}{% endfor %}"
    )
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] in ('image', 'image_url') %}" + image_text + "{% endif %}"
        "{% endfor %}" + parts_text + "{% endif %}<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def _corpus(seed: int, n_scenes: int = 3000) -> list[str]:
    rng = random.Random(seed)
    lines = [
        "system\nYou are a helpful assistant.\nuser\nassistant\n",
        "Please answer this question with one word. Describe this image in detail.",
        "What is in the picture? yes no Yes No",
    ]
    for _ in range(n_scenes):
        scene = world.train_scene(rng)
        for q, a in world.questions(scene, rng):
            lines.append(f"user\n{q}\nassistant\n{a}\n")
    return lines


def chatml_tokenizer(
    seed: int,
    vocab_size: int,
    specials: tuple[str, ...],
    image_text: str,
    roles: dict[str, str],
) -> tf.PreTrainedTokenizerFast:
    """Train the BPE on a seeded corpus (same seed, same files). ``roles`` maps the
    tokenizer's named special attributes (``image_token``, ...) to special tokens.
    There is no BOS, as in Qwen2: the template's first token is ``<|im_start|>``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=dict(roles),
        model_max_length=2048,
        padding_side="left",
    )
    fast.chat_template = chatml_template(image_text)
    return fast


def qwen_tokenizer(seed: int, vocab_size: int) -> tf.PreTrainedTokenizerFast:
    """The Qwen2-VL-style tokenizer shared by the Qwen2.5-VL and Qwen3-VL checkpoints."""
    roles = {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    }
    return chatml_tokenizer(seed, vocab_size, QWEN_SPECIALS, QWEN_IMAGE, roles)


def onevision_tokenizer(seed: int, vocab_size: int) -> tf.PreTrainedTokenizerFast:
    """Qwen2 ChatML with llava-hf's ``<image>`` / ``<video>`` placeholders."""
    roles = {"image_token": "<image>", "video_token": "<video>"}
    return chatml_tokenizer(seed, vocab_size, ONEVISION_SPECIALS, ONEVISION_IMAGE, roles)


# -- image-token layouts ---------------------------------------------------------------


def raster_cells(grid: int) -> Callable[[int], list[int | None]]:
    """One token per cell of a ``grid`` x ``grid`` image, row-major (LLaVA-1.5; Qwen's
    2x2-merged tokens of a 112 px scene resized to 6x6 merged patches)."""

    def cells(n: int) -> list[int | None]:
        if n != grid * grid:
            raise ValueError(f"{n} image tokens, expected {grid * grid}")
        return list(range(n))

    return cells


def anyres_cells(grid: int) -> Callable[[int], list[int | None]]:
    """anyres (LLaVA-NeXT, OneVision) for a one-tile image: the base image's cells, then
    the tile's rows, each followed by ``image_newline`` (no cell)."""

    def cells(n: int) -> list[int | None]:
        if n != 2 * grid * grid + grid:
            raise ValueError(f"{n} image tokens, expected {2 * grid * grid + grid}")
        tile = [c for r in range(grid) for c in [*range(r * grid, (r + 1) * grid), None]]
        return [*range(grid * grid), *tile]

    return cells


# -- configs and processors ----------------------------------------------------------


def _ids(tok: Any, *names: str) -> list[int]:
    return [tok.convert_tokens_to_ids(n) for n in names]


def _vocab(tok: Any) -> int:
    return (len(tok) + 63) // 64 * 64


def _text(spec: TinySpec, tok: Any, **extra: Any) -> dict[str, Any]:
    """Text-model fields common to all families (Llama, Qwen2, Qwen3 alike)."""
    fields = dict(
        vocab_size=_vocab(tok),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        bos_token_id=None,  # Qwen has none; the LLaVA-NeXT text config sets its own
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    return {**fields, **extra}


# -- LLaVA-NeXT: CLIP + Llama, anyres ---------------------------------------------------


def _tower(spec: TinySpec) -> dict[str, Any]:
    """The CLIP/SigLIP tower shape both LLaVA-NeXT and OneVision use (14 px patches)."""
    return {
        "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_hidden * 4,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "image_size": spec.image_size,
        "patch_size": 14,
    }


def next_config(spec: TinySpec, tok: Any) -> tf.PreTrainedConfig:
    vision = tf.CLIPVisionConfig(
        **_tower(spec), projection_dim=spec.vision_hidden, hidden_act="quick_gelu"
    )
    text = tf.LlamaConfig(**_text(spec, tok, bos_token_id=1, eos_token_id=2))
    return tf.LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(spec.image_size // 14) ** 2,
        tie_word_embeddings=False,
    )


def next_processor(spec: TinySpec, tok: Any) -> tf.ProcessorMixin:
    images = tf.LlavaNextImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    return tf.LlavaNextProcessor(
        image_processor=images,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS
        chat_template=tok.chat_template,
        image_token="<image>",
    )


def vision_model_layout(key: str) -> str:
    """llava-hf names the CLIP/SigLIP tower ``vision_tower.vision_model.*``; vLLM 0.32
    loads only that, while ``transformers`` saves ``vision_tower.*`` (and loads both)."""
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        return "vision_tower.vision_model." + key[len("vision_tower.") :]
    return key


# -- LLaVA-OneVision: SigLIP + Qwen2, anyres_max_9 --------------------------------------


def ov_config(spec: TinySpec, tok: Any) -> tf.PreTrainedConfig:
    vision = tf.SiglipVisionConfig(**_tower(spec), vision_use_head=False)
    text = tf.Qwen2Config(**_text(spec, tok, eos_token_id=tok.eos_token_id))
    image, video = _ids(tok, "<image>", "<video>")
    return tf.LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image,
        video_token_index=video,
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_aspect_ratio="anyres_max_9",
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",  # SigLIP has no CLS token
        tie_word_embeddings=False,
    )


def ov_processor(spec: TinySpec, tok: Any) -> tf.ProcessorMixin:
    size = {"height": spec.image_size, "width": spec.image_size}
    return tf.LlavaOnevisionProcessor(
        image_processor=tf.LlavaOnevisionImageProcessor(
            size=size, image_grid_pinpoints=GRID_PINPOINTS
        ),
        video_processor=tf.LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tok,
        num_image_tokens=(spec.image_size // 14) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=tok.chat_template,
    )


# -- Qwen2.5-VL and Qwen3-VL ------------------------------------------------------------


def _qwen_ids(tok: Any) -> dict[str, Any]:
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    tokens = _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    return {**dict(zip(names, tokens, strict=True)), "tie_word_embeddings": False}


def _qwen_vision(spec: TinySpec, **extra: Any) -> dict[str, Any]:
    fields = dict(
        depth=spec.vision_layers,
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_heads=spec.vision_heads,
        out_hidden_size=spec.text_hidden,
    )
    return {**fields, **extra}


def q25_config(spec: TinySpec, tok: Any) -> tf.PreTrainedConfig:
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}
    text = _text(spec, tok, rope_parameters=rope, eos_token_id=tok.eos_token_id)
    # Windows of 112 px = 4x4 merged tokens; blocks 1 and 3 attend over the whole image.
    vision = _qwen_vision(spec, patch_size=14, window_size=112, fullatt_block_indexes=[1, 3])
    return tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_qwen_ids(tok))


def q3_config(spec: TinySpec, tok: Any) -> tf.PreTrainedConfig:
    rope = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [6, 5, 5],
        "mrope_interleaved": True,
    }
    text = _text(spec, tok, rope_parameters=rope, head_dim=spec.text_hidden // spec.text_heads)
    # An 8x8 position table, interpolated to each image's grid; deepstack features of
    # ViT blocks 1 and 2 are added after text layers 0 and 1.
    vision = _qwen_vision(
        spec, patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[1, 2]
    )
    cfg = tf.Qwen3VLConfig(text_config=text, vision_config=vision, **_qwen_ids(tok))
    cfg.text_config.eos_token_id = tok.eos_token_id
    return cfg


def qwen_processor(
    cls: type, video_cls: type, patch: int, mean_std: tuple[list[float], list[float]]
) -> Callable[[TinySpec, Any], tf.ProcessorMixin]:
    # 36..64 language-model tokens per image (one per 2x2 patches): small images are
    # enlarged, so a 112x112 scene gives a 6x6 token grid.
    factor = patch * 2
    size = {"shortest_edge": factor * factor * 36, "longest_edge": factor * factor * 64}
    norm = {"patch_size": patch, "image_mean": mean_std[0], "image_std": mean_std[1]}

    def make(spec: TinySpec, tok: Any) -> tf.ProcessorMixin:
        images = tf.Qwen2VLImageProcessor(size=size, **norm)
        video = video_cls(size=size, **norm)
        return cls(
            image_processor=images,
            video_processor=video,
            tokenizer=tok,
            chat_template=tok.chat_template,
        )

    return make
