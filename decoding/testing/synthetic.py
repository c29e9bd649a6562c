"""Seeded scenes of the synthetic world (:mod:`decoding.testing.world`) as images and
OpenAI chat messages. They train the tiny test checkpoint and feed end-to-end tests of
the server and the evaluators, so that answers depend on the image and the prompt."""

from __future__ import annotations

import base64
import io
import random

from PIL import Image

from decoding.testing import world
from decoding.testing.world import Scene

__all__ = ["Scene", "chat_messages", "data_url", "heldout", "sample"]


def sample(seed: int, size: int = 112) -> tuple[Image.Image, Scene]:
    """One deterministic scene of the training distribution and its image for ``seed``
    (a seed stream the training itself never draws from)."""
    scene = world.train_scene(random.Random(seed), size)
    return scene.draw(), scene


def heldout(index: int, size: int = 112) -> tuple[Image.Image, Scene]:
    """Held-out scene ``index`` (pairs often broken) and its image."""
    scene = world.heldout_scene(index, size)
    return scene.draw(), scene


def data_url(img: Image.Image) -> str:
    """The image as a PNG ``data:`` URL, as OpenAI chat requests carry it."""
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_messages(img: Image.Image, prompt: str) -> list[dict]:
    """One user turn with the image and the prompt (OpenAI chat format)."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(img)}},
                {"type": "text", "text": prompt},
            ],
        }
    ]
