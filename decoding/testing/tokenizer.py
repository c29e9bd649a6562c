"""A small byte-level BPE tokenizer trained locally and deterministically, and the
LLaVA-1.5 chat template, for the tiny test checkpoint (no model hub needed)."""

from __future__ import annotations

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from decoding.testing import world

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

#: The llava-hf 1.5 conversation format: ``USER: <image>\n{prompt} ASSISTANT:``. Accepts
#: string content and OpenAI-style lists of parts (images first, as llava-hf does), and
#: an optional system message written before the first turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% elif message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<image>\n{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _corpus(seed: int, n_scenes: int = 3000) -> list[str]:
    rng = random.Random(seed)
    lines = [
        "A chat between a curious user and an artificial intelligence assistant.",
        "USER: ASSISTANT: Please answer this question with one word.",
        "Please describe this image in detail. What is in the picture? yes no Yes No",
    ]
    for _ in range(n_scenes):
        scene = world.train_scene(rng)
        for q, a in world.questions(scene, rng):
            lines.append(f"USER: {q} ASSISTANT: {a}")
    return lines


def build_tokenizer(seed: int, vocab_size: int) -> PreTrainedTokenizerFast:
    """Train the BPE on a seeded corpus of :mod:`decoding.testing.world` conversations;
    the same seed gives the same files."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=2048,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
