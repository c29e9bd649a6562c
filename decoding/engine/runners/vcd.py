"""``vcd``: the contrast request sees the image with diffusion noise (reference contract:
:func:`decoding.cores.vcd.add_diffusion_noise` on the normalised pixels, seeded by
``noise_seed``)."""

from __future__ import annotations

from typing import Any

from decoding.cores import vcd as vcd_core
from decoding.engine.runners import contrast_inputs as ci
from decoding.engine.runners.pairs import Contrast, register_contrastive


def noised_input(prompt: dict, params: dict[str, Any], hf_config: Any) -> Contrast:
    step, seed = int(params["noise_step"]), int(params["noise_seed"])
    items = []
    for item in ci.image_items(prompt):
        pixels = item["pixel_values"].data
        noised = vcd_core.add_diffusion_noise(pixels.unsqueeze(0).float(), step, seed)[0]
        items.append(ci.replace_field(item, "pixel_values", noised.to(pixels.dtype)))
    return Contrast(ci.with_items(prompt, items, f"vcd:{step}:{seed}"))


register_contrastive("vcd", noised_input)
