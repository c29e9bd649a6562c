"""Locally trained byte-level BPE tokenizers and chat templates for the tiny test
checkpoints of the Qwen-style families (Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision).

Each tokenizer carries its family's special tokens and a ChatML-style template that
accepts string content and OpenAI-style lists of parts (images first, then text), so
``transformers`` and vLLM's chat endpoint render the same prompt. The LLaVA-NeXT
checkpoint uses the llava-1.5 tokenizer of :mod:`decoding.testing.tokenizer` unchanged.
"""

from __future__ import annotations

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from decoding.testing import synthetic

#: Special tokens of the Qwen2-VL / Qwen2.5-VL / Qwen3-VL vocabulary, in id order.
QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
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
        scene = synthetic.random_scene(rng)
        for q, a in synthetic.questions(scene, rng):
            lines.append(f"user\n{q}\nassistant\n{a}\n")
    return lines


def chatml_tokenizer(
    seed: int,
    vocab_size: int,
    specials: tuple[str, ...],
    image_text: str,
    roles: dict[str, str],
) -> PreTrainedTokenizerFast:
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
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=dict(roles),
        model_max_length=2048,
        padding_side="left",
    )
    fast.chat_template = chatml_template(image_text)
    return fast


def qwen_tokenizer(seed: int, vocab_size: int) -> PreTrainedTokenizerFast:
    """The Qwen2-VL-style tokenizer shared by the Qwen2.5-VL and Qwen3-VL checkpoints."""
    roles = {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    }
    return chatml_tokenizer(seed, vocab_size, QWEN_SPECIALS, QWEN_IMAGE, roles)


def onevision_tokenizer(seed: int, vocab_size: int) -> PreTrainedTokenizerFast:
    """Qwen2 ChatML with llava-hf's ``<image>`` / ``<video>`` placeholders."""
    roles = {"image_token": "<image>", "video_token": "<video>"}
    return chatml_tokenizer(seed, vocab_size, ONEVISION_SPECIALS, ONEVISION_IMAGE, roles)
