"""Prompt construction and model inputs, exactly as the server builds them, on every
model family.

The reference runs every forward as ``model(input_ids=..., mm_encoder_outputs=...)``:
the image encoder runs once (:func:`encoder_outputs`), strategies edit its output
(masked rows for AVC, selected rows for DAMRO, features of noised pixels for VCD), and
``transformers`` splices the features into the placeholders itself, computing M-RoPE
positions (Qwen) and adding deepstack features (Qwen3-VL) as it does for plain
generation. Per-family differences (which processor outputs the encoder and the forward
take, how pixels split per image) are in :mod:`decoding.reference.families`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from decoding.reference.families import ReferenceFamily, reference_family


def chat_prompt(processor: Any, prompt: str, with_image: bool | int = True) -> str:
    """The chat-template text of one user turn (images first; ``with_image`` may be a
    count), with the generation prompt: ``USER: <image>\\n{prompt} ASSISTANT:`` for
    LLaVA-1.5."""
    content: list[dict[str, str]] = [{"type": "image"}] * int(with_image)
    content.append({"type": "text", "text": prompt})
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )


@dataclass
class PromptInputs:
    """Token ids ``(1, T)`` (image tokens expanded), pixel values or None, the sequence
    positions of the image tokens, and the other processor outputs: those the image
    encoder takes (``vision``) and those the forward needs at prefill (``text``)."""

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    image_positions: torch.Tensor
    family: ReferenceFamily
    image_token_id: int
    vision: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    def with_ids(self, input_ids: torch.Tensor) -> PromptInputs:
        """The same image inputs with other token ids (DAMRO's shortened image run)."""
        ids = input_ids.to(self.input_ids.device)
        text = dict(self.text)
        if "mm_token_type_ids" in text:
            text["mm_token_type_ids"] = (ids == self.image_token_id).to(
                text["mm_token_type_ids"].dtype
            )
        positions = torch.nonzero(ids[0] == self.image_token_id).flatten()
        return replace(self, input_ids=ids, image_positions=positions, text=text)


def encode(
    model: Any, processor: Any, image: Any, prompt: str, image_token_id: int | None = None
) -> PromptInputs:
    """Token ids, pixels and image positions of ``image`` (a PIL image, a list of them,
    or None); ``image_token_id`` defaults to the config's (the reference passes the
    model profile's)."""
    family = reference_family(model.config)
    token = family.model.image_token(model.config) if image_token_id is None else image_token_id
    count = 0 if image is None else len(image) if isinstance(image, list) else 1
    text = chat_prompt(processor, prompt, with_image=count)
    # vLLM's chat endpoint tokenizes the templated text without adding special tokens
    # (``add_special_tokens`` defaults to false there): BOS is present only if the chat
    # template writes it. The reference sees exactly the served token ids.
    kw: dict[str, Any] = {"text": text, "return_tensors": "pt", "add_special_tokens": False}
    if image is not None and family.token_types:
        kw["return_mm_token_type_ids"] = True
    enc = processor(**kw) if image is None else processor(images=image, **kw)
    ids = enc["input_ids"].to(model.device)
    pixels = enc.get("pixel_values")
    if pixels is not None:
        pixels = pixels.to(model.device, model.dtype)
    positions = torch.nonzero(ids[0] == token).flatten()
    pick = lambda keys: {k: enc[k].to(model.device) for k in keys if k in enc}  # noqa: E731
    return PromptInputs(
        input_ids=ids,
        pixel_values=pixels,
        image_positions=positions,
        family=family,
        image_token_id=int(token),
        vision=pick(family.vision_keys) if pixels is not None else {},
        text=pick(family.forward_keys) if pixels is not None else {},
    )


def encoder_outputs(model: Any, inputs: PromptInputs, pixel_values: torch.Tensor | None = None):  # noqa: ANN201
    """The image encoder's output for ``inputs`` (or other pixels in the same layout):
    ``pooler_output`` holds one ``(tokens, hidden)`` tensor per image, as the forward
    splices them (Qwen3-VL: ``deepstack_features`` too)."""
    pixels = inputs.pixel_values if pixel_values is None else pixel_values
    out = inputs.family.encode_images(model, pixels, inputs.vision)
    out.pooler_output = tuple(out.pooler_output)
    return out


def image_features(model: Any, inputs: PromptInputs) -> torch.Tensor:
    """Projected image features ``(image_tokens, hidden)`` of the prompt's images, in
    placeholder order."""
    return torch.cat(list(encoder_outputs(model, inputs).pooler_output), dim=0)


def forward_kwargs(
    inputs: PromptInputs, encoded: Any, batch: int = 1, extra_tokens: int = 0
) -> dict[str, Any]:
    """Keyword arguments of a prefill forward of ``inputs`` with image encoding
    ``encoded`` (None: a text-only prompt), repeated for ``batch`` sequences that
    continue the prompt by ``extra_tokens`` text tokens each."""
    if encoded is None:
        return {}
    if batch > 1:
        encoded = repeat_encoding(encoded, batch)
    text = {}
    for key, value in inputs.text.items():
        if key == "mm_token_type_ids":  # per token: the continuation is text
            value = torch.nn.functional.pad(value, (0, extra_tokens))
            value = value.expand(batch, -1)
        elif batch > 1:
            value = value.repeat(batch, *([1] * (value.dim() - 1)))
        text[key] = value
    return {"mm_encoder_outputs": {"image": encoded}, **text}


def repeat_encoding(encoded: Any, batch: int) -> Any:
    out = type(encoded)(**{k: v for k, v in encoded.items()})
    out.pooler_output = tuple(encoded.pooler_output) * batch
    deep = getattr(encoded, "deepstack_features", None)
    if deep:
        out.deepstack_features = [tuple(level) * batch for level in deep]
    return out


def eos_ids(model: Any, processor: Any) -> set[int]:
    ids: set[int] = set()
    for source in (model.generation_config.eos_token_id, processor.tokenizer.eos_token_id):
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else list(source))
    return ids
