"""Prompt construction and input embeddings, exactly as the server builds them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def chat_prompt(processor: Any, prompt: str, with_image: bool = True) -> str:
    """The llava chat-template text of one user turn (image first), with the
    generation prompt: ``USER: <image>\\n{prompt} ASSISTANT:`` for LLaVA-1.5."""
    content: list[dict[str, str]] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": prompt})
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )


@dataclass
class PromptInputs:
    """Token ids ``(1, T)`` (image tokens expanded), pixel values or None, and the
    sequence positions of the image tokens."""

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    image_positions: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])


def encode(
    model: Any, processor: Any, image: Any, prompt: str, image_token_id: int | None = None
) -> PromptInputs:
    """Token ids, pixels and image positions; ``image_token_id`` defaults to the config's
    (the reference passes the model profile's)."""
    token = model.config.image_token_id if image_token_id is None else image_token_id
    text = chat_prompt(processor, prompt, with_image=image is not None)
    # vLLM's chat endpoint tokenizes the templated text without adding special tokens
    # (``add_special_tokens`` defaults to false there): BOS is present only if the chat
    # template writes it. The reference sees exactly the served token ids.
    kw = {"text": text, "return_tensors": "pt", "add_special_tokens": False}
    enc = processor(**kw) if image is None else processor(images=image, **kw)
    ids = enc["input_ids"].to(model.device)
    pixels = enc.get("pixel_values")
    if pixels is not None:
        pixels = pixels.to(model.device, model.dtype)
    positions = torch.nonzero(ids[0] == token).flatten()
    return PromptInputs(input_ids=ids, pixel_values=pixels, image_positions=positions)


def image_features(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image features ``(image_tokens, hidden)`` of one image, as LLaVA splices
    them into the prompt (feature layer and select strategy from the config)."""
    cfg = model.config
    out = model.model.get_image_features(
        pixel_values=pixel_values,
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        return_dict=True,
    )
    return torch.cat(list(out.pooler_output), dim=0)


def splice(model: Any, input_ids: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """Input embeddings ``(1, T, hidden)`` with the image-token rows replaced, in order, by
    ``features`` (as ``LlavaModel.forward`` does)."""
    embeds = model.get_input_embeddings()(input_ids)
    if features is None:
        return embeds
    mask = (input_ids == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    return embeds.masked_scatter(mask, features.to(embeds.dtype))


def eos_ids(model: Any, processor: Any) -> set[int]:
    ids: set[int] = set()
    for source in (model.generation_config.eos_token_id, processor.tokenizer.eos_token_id):
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else list(source))
    return ids
