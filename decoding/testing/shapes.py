"""Seeded coloured-shape scenes (one or two shapes on a plain background) with captions
and yes/no questions: the training data of the LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL
and Qwen3-VL test checkpoints (:mod:`decoding.testing.tiny_models`) and of their
tokenizers. The LLaVA-1.5 checkpoint trains on the richer world of
:mod:`decoding.testing.world` instead; these scenes stay as they are so the other
families' checkpoints rebuild byte-identically."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 40, 170),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """What was drawn: the objects (left to right) and the background."""

    things: tuple[Thing, ...]
    background: str

    def caption(self) -> str:
        parts = [f"a {t.phrase}" for t in self.things]
        body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"There is {body} on a {self.background} background."

    def has(self, colour: str | None, shape: str | None) -> bool:
        return any(
            (colour is None or t.colour == colour) and (shape is None or t.shape == shape)
            for t in self.things
        )


def random_scene(rng: random.Random, max_things: int = 2) -> Scene:
    n = rng.randint(1, max_things)
    things: list[Thing] = []
    while len(things) < n:
        thing = Thing(rng.choice(list(COLOURS)), rng.choice(SHAPES))
        if all(t.shape != thing.shape for t in things):
            things.append(thing)
    return Scene(tuple(things), rng.choice(list(BACKGROUNDS)))


def draw_scene(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Draw the scene; positions and sizes are jittered by ``rng``."""
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    slot = size // max(1, len(scene.things))
    for i, thing in enumerate(scene.things):
        r = rng.randint(size // 7, size // 4)
        cx = i * slot + slot // 2 + rng.randint(-slot // 8, slot // 8)
        cy = size // 2 + rng.randint(-size // 5, size // 5)
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = COLOURS[thing.colour]
        if thing.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif thing.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def yes_no(flag: bool) -> str:
    return "Yes." if flag else "No."


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Prompt/answer pairs about the scene: a caption, yes/no probes, colour and shape."""
    present = rng.choice(scene.things)
    absent_shape = rng.choice([s for s in SHAPES if not scene.has(None, s)] or list(SHAPES))
    absent_colour = rng.choice([c for c in COLOURS if not scene.has(c, None)])
    n = len(scene.things)
    count = "There is one shape." if n == 1 else f"There are {n} shapes."
    pairs = [
        ("Describe the image.", scene.caption()),
        ("Generate a short caption of this image.", scene.caption()),
        (f"Is there a {present.shape} in the image?", "Yes."),
        (f"Is there a {absent_shape} in the image?", yes_no(scene.has(None, absent_shape))),
        (f"Is there a {present.phrase} in the image?", "Yes."),
        (f"Is there a {absent_colour} {present.shape} in the image?", "No."),
        (f"What colour is the {present.shape}?", f"The {present.shape} is {present.colour}."),
        ("What is the background colour?", f"The background is {scene.background}."),
        ("How many shapes are there?", count),
    ]
    return pairs


def sample(seed: int, size: int = 112) -> tuple[Image.Image, Scene]:
    """One deterministic scene and its image for ``seed``."""
    rng = random.Random(seed)
    scene = random_scene(rng)
    return draw_scene(scene, size, rng), scene
