"""``avc``: the contrast request keeps only the blind image tokens (the over-attended ones).

The contrast request carries the same image under its own multimodal hash and the AVC
settings; the engine (:mod:`decoding.engine.worker.avc`) finds the blind tokens from the
clean prefill attention of the last prompt token and masks the other image embeddings
before the contrast KV is written. It is always prefilled in full (never from the prefix
cache), because the mask is computed from that pass."""

from __future__ import annotations

from typing import Any

from decoding.engine.runners import contrast_inputs as ci
from decoding.engine.runners.pairs import Contrast, register_contrastive


def masked_input(prompt: dict, params: dict[str, Any], hf_config: Any) -> Contrast:
    gamma, lamb, mask = float(params["gamma"]), float(params["lamb"]), str(params["mask"])
    engine = {
        "avc": {
            "gamma": gamma,
            "lamb": lamb,
            "mask": mask,
            # The query is the last token of the ORIGINAL prompt, also after restarts.
            "query": len(prompt["prompt_token_ids"]) - 1,
            "image_token": int(hf_config.image_token_index),
        }
    }
    tagged = ci.with_items(prompt, ci.image_items(prompt), f"avc:{gamma}:{lamb}:{mask}")
    return Contrast(tagged, engine=engine, full_prefill=True)


register_contrastive("avc", masked_input)
