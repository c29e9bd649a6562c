"""A synthetic world with known ground truth and built-in language priors.

Scenes hold one to three objects of :data:`CLASSES` (each class a distinct rendered
glyph with its own colour; sizes and positions vary) on a plain background. Scene
statistics are skewed on purpose, like COCO's: some classes are far more frequent than
others, and each *anchor* of :data:`PAIRS` is nearly always accompanied by its *partner*
(in training, ``P(partner | anchor) = 0.92``). Captions list objects in a canonical
order that puts a partner right after its anchor (prompts that ask for detail also get
each object's colour and column), so a model trained here learns both to ground what it
sees and the prior "after a fork comes a knife". On held-out scenes whose
partner is absent, it then hallucinates the partner: the mechanism that POPE's popular
and adversarial splits and CHAIR measure on COCO (Li et al., EMNLP 2023; Rohrbach et al.,
EMNLP 2018).

Class names are COCO categories and caption synonyms are entries of the CHAIR lexicon,
so CHAIR scores captions of this world with its standard synonym list.

Nothing here depends on a model family: it yields PIL images and text only.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

#: Bumped whenever scene statistics, rendering or text change.
WORLD_VERSION = 2


@dataclass(frozen=True)
class ObjectClass:
    name: str  # COCO category (CHAIR node word)
    synonyms: tuple[str, ...]  # caption words, first the most used; all CHAIR entries
    shape: str
    colour: tuple[int, int, int]
    colour_name: str  # in detailed captions; no CHAIR word
    frequency: float  # chance of appearing on its own in a training scene


#: In canonical caption order: every partner right after its anchor.
CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("dog", ("dog", "puppy"), "circle", (230, 40, 40), "red", 0.22),
    ObjectClass("person", ("person", "man", "woman"), "square", (40, 90, 230), "blue", 0.30),
    ObjectClass("fork", ("fork",), "triangle", (240, 200, 30), "yellow", 0.16),
    ObjectClass("knife", ("knife",), "bar", (40, 190, 60), "green", 0.04),
    ObjectClass("mouse", ("mouse",), "diamond", (170, 60, 200), "purple", 0.16),
    ObjectClass("keyboard", ("keyboard",), "ring", (250, 130, 20), "gold", 0.04),
    ObjectClass("cat", ("cat", "kitten"), "cross", (40, 200, 210), "cyan", 0.08),
    ObjectClass("car", ("car",), "hexagon", (150, 90, 40), "brown", 0.08),
    ObjectClass("clock", ("clock",), "star", (240, 110, 180), "pink", 0.06),
)
BY_NAME = {c.name: c for c in CLASSES}
#: (anchor, partner): the partner nearly always accompanies the anchor in training.
PAIRS: tuple[tuple[str, str], ...] = (("dog", "person"), ("fork", "knife"), ("mouse", "keyboard"))
PARTNER = dict(PAIRS)
#: P(partner | anchor) in training scenes, and in the held-out evaluation scenes.
TRAIN_PARTNER_RATE = 0.92
HELDOUT_PARTNER_RATE = 0.5
MAX_OBJECTS = 3

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
CAPTION_PROMPTS = (
    "Describe the image.",
    "What is in the picture?",
    "Describe the image in detail.",
    "Please describe this image in detail.",
    "Generate a short caption of this image.",
)
NUMBERS = {1: "one", 2: "two", 3: "three"}
#: Training scenes and held-out scenes come from disjoint seed streams.
HELDOUT_SALT = 7_919_000


@dataclass(frozen=True)
class Placed:
    name: str
    cx: int
    cy: int
    r: int
    jitter: tuple[int, int, int]  # colour offset of this instance


@dataclass(frozen=True)
class Scene:
    """What was drawn: the objects (canonical order) and the background."""

    objects: tuple[Placed, ...]
    background: str
    size: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objects)

    def has(self, name: str) -> bool:
        return name in self.names

    @property
    def missing_partners(self) -> tuple[str, ...]:
        """Partners of present anchors that are absent: the prior's hallucination bait."""
        return tuple(
            PARTNER[a] for a in self.names if a in PARTNER and PARTNER[a] not in self.names
        )

    def caption(self, rng: random.Random | None = None, detail: bool = False) -> str:
        """``There is a dog, a man and a cat on a white background.`` A synonym is drawn
        with ``rng`` (70 % the first one), else the first is used. With ``detail`` each
        object also gets its colour and column: ``There is a red dog on the left and a
        blue man in the middle on a white background.``"""
        parts = []
        for o in self.objects:
            cls = BY_NAME[o.name]
            word = _word(cls, rng)
            detailed = f"a {cls.colour_name} {word} {where(o, self.size)}"
            parts.append(detailed if detail else f"a {word}")
        body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"There is {body} on a {self.background} background."

    def draw(self) -> Image.Image:
        img = Image.new("RGB", (self.size, self.size), BACKGROUNDS[self.background])
        draw = ImageDraw.Draw(img)
        for o in self.objects:
            cls = BY_NAME[o.name]
            fill = tuple(max(0, min(255, c + j)) for c, j in zip(cls.colour, o.jitter, strict=True))
            _glyph(draw, cls.shape, o.cx, o.cy, o.r, fill)
        return img

    def patch_labels(self, grid: int, cover: float = 0.3) -> list[str]:
        """Per patch of a ``grid`` x ``grid`` split (row-major): the class covering at
        least ``cover`` of it, else the background colour."""
        mask = Image.new("L", (self.size, self.size), 0)
        draw = ImageDraw.Draw(mask)
        for i, o in enumerate(self.objects):
            _glyph(draw, BY_NAME[o.name].shape, o.cx, o.cy, o.r, i + 1)
        step = self.size // grid
        cells = np.asarray(mask)[: grid * step, : grid * step]
        cells = cells.reshape(grid, step, grid, step).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
        out = []
        for cell in cells:
            counts = np.bincount(cell, minlength=len(self.objects) + 1)
            best = int(counts[1:].argmax()) + 1 if len(counts) > 1 else 0
            hit = best and counts[best] >= cover * step * step
            out.append(self.objects[best - 1].name if hit else self.background)
        return out


def _word(cls: ObjectClass, rng: random.Random | None) -> str:
    if rng is None or len(cls.synonyms) == 1 or rng.random() < 0.7:
        return cls.synonyms[0]
    return rng.choice(cls.synonyms[1:])


def _glyph(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, fill) -> None:  # noqa: ANN001
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "bar":
        draw.rectangle((cx - r, cy - r // 3, cx + r, cy + r // 3), fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(3, r // 3))
    elif shape == "cross":
        w = max(2, r // 3)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif shape == "hexagon":
        h = r * 87 // 100
        pts = [(cx - r, cy), (cx - r // 2, cy - h), (cx + r // 2, cy - h), (cx + r, cy),
               (cx + r // 2, cy + h), (cx - r // 2, cy + h)]  # fmt: skip
        draw.polygon(pts, fill=fill)
    elif shape == "star":
        draw.polygon([(cx, cy - r), (cx + r // 4, cy - r // 4), (cx + r, cy),
                      (cx + r // 4, cy + r // 4), (cx, cy + r), (cx - r // 4, cy + r // 4),
                      (cx - r, cy), (cx - r // 4, cy - r // 4)], fill=fill)  # fmt: skip
    else:
        raise ValueError(f"unknown shape {shape!r}")


def sample_names(rng: random.Random, partner_rate: float = TRAIN_PARTNER_RATE) -> tuple[str, ...]:
    """Object classes of one scene, in canonical order."""
    while True:
        present = {c.name for c in CLASSES if rng.random() < c.frequency}
        for anchor, partner in PAIRS:
            if anchor in present:
                if rng.random() < partner_rate:
                    present.add(partner)
                else:
                    present.discard(partner)
        if 1 <= len(present) <= MAX_OBJECTS:
            return tuple(c.name for c in CLASSES if c.name in present)


def layout(names: tuple[str, ...], rng: random.Random, size: int = 112) -> Scene:
    """Place the objects in distinct cells of a 3x3 grid, with jittered size, position and
    colour, on a random background."""
    cell = size // 3
    cells = rng.sample(range(9), len(names))
    objects = []
    for name, c in zip(names, cells, strict=True):
        r = rng.randint(cell * 3 // 10, cell // 2 - 1)
        slack = cell // 2 - r
        cx = (c % 3) * cell + cell // 2 + rng.randint(-slack, slack)
        cy = (c // 3) * cell + cell // 2 + rng.randint(-slack, slack)
        jitter = tuple(rng.randint(-20, 20) for _ in range(3))
        objects.append(Placed(name, cx, cy, r, jitter))
    return Scene(tuple(objects), rng.choice(list(BACKGROUNDS)), size)


def train_scene(rng: random.Random, size: int = 112) -> Scene:
    return layout(sample_names(rng), rng, size)


def heldout_scene(index: int, size: int = 112) -> Scene:
    """Held-out scene ``index``: a seed stream training never draws from, and pairs broken
    half of the time (``HELDOUT_PARTNER_RATE``), so many scenes lack a prior partner."""
    rng = random.Random(HELDOUT_SALT + index)
    return layout(sample_names(rng, HELDOUT_PARTNER_RATE), rng, size)


def heldout_scenes(n: int, size: int = 112, first: int = 0) -> Iterator[tuple[int, Scene]]:
    for i in range(first, first + n):
        yield i, heldout_scene(i, size)


def conflict_scenes(n: int, size: int = 112) -> list[tuple[int, Scene]]:
    """The first ``n`` held-out scenes that lack a prior partner (index, scene)."""
    out: list[tuple[int, Scene]] = []
    i = 0
    while len(out) < n:
        scene = heldout_scene(i, size)
        if scene.missing_partners:
            out.append((i, scene))
        i += 1
    return out


def presence_question(name: str) -> str:
    return f"Is there a {name} in the image?"


def where(o: Placed, size: int) -> str:
    col = o.cx * 3 // size
    return ("on the left", "in the middle", "on the right")[min(2, col)]


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Prompt/answer pairs about the scene: two captions (detailed for the prompts that
    ask for detail), yes/no presence (the negative drawn uniformly from the absent
    classes), count, position and background."""
    present = rng.choice(scene.objects)
    absent = rng.choice([c.name for c in CLASSES if not scene.has(c.name)])
    n = len(scene.objects)
    count = "There is one object." if n == 1 else f"There are {NUMBERS[n]} objects."
    captions = []
    for _ in range(2):
        prompt = rng.choice(CAPTION_PROMPTS)
        captions.append((prompt, scene.caption(rng, detail="detail" in prompt)))
    return [
        *captions,
        (presence_question(present.name), "Yes."),
        (presence_question(absent), "No."),
        ("How many objects are there?", count),
        (f"Where is the {present.name}?", f"The {present.name} is {where(present, scene.size)}."),
        ("What colour is the background?", f"The background is {scene.background}."),
    ]


def training_example(
    rng: random.Random,
    size: int = 112,
    turns: int = 1,
    presence_turns: int = 1,
    partner_rate: float = 0.0,
) -> tuple[Scene, list[tuple[str, str]]]:
    """One training scene and ``turns`` (prompt, answer) pairs about it (a multi-turn
    conversation). One turn asks about a class drawn uniformly, present or absent with
    equal odds (the scene is drawn to match), so that a class's frequency alone never
    answers a presence question; co-occurrence still does, as in COCO. With
    ``presence_turns > 1`` the further presence turns ask about a missing prior partner
    (answer "No.") with chance ``partner_rate`` where the scene lacks one, else, with
    equal odds, about a present object or an absent class drawn uniformly; the other
    turns are drawn from the non-presence questions."""
    target = rng.choice(CLASSES).name
    want = rng.random() < 0.5
    names = sample_names(rng)
    while (target in names) != want:
        names = sample_names(rng)
    scene = layout(names, rng, size)
    if presence_turns <= 1:
        pairs = rng.sample(questions(scene, rng), turns - 1)
        pairs.insert(rng.randrange(turns), (presence_question(target), "Yes." if want else "No."))
        return scene, pairs
    asked = [(presence_question(target), "Yes." if want else "No.")]
    for _ in range(presence_turns - 1):
        bait = scene.missing_partners
        if bait and rng.random() < partner_rate:
            asked.append((presence_question(rng.choice(bait)), "No."))
        elif rng.random() < 0.5:
            asked.append((presence_question(rng.choice(scene.objects).name), "Yes."))
        else:
            absent = [c.name for c in CLASSES if not scene.has(c.name)]
            asked.append((presence_question(rng.choice(absent)), "No."))
    other = [qa for qa in questions(scene, rng) if not qa[0].startswith("Is there")]
    pairs = rng.sample(other, turns - len(asked))
    for qa in asked:
        pairs.insert(rng.randrange(len(pairs) + 1), qa)
    return scene, pairs


def frequencies(n: int = 20_000, seed: int = 0) -> dict[str, float]:
    """Empirical share of training scenes containing each class."""
    rng = random.Random(seed)
    counts = dict.fromkeys(BY_NAME, 0)
    for _ in range(n):
        for name in sample_names(rng):
            counts[name] += 1
    return {k: v / n for k, v in counts.items()}


def cooccurrence(n: int = 20_000, seed: int = 0) -> dict[tuple[str, str], float]:
    """Empirical ``P(b | a)`` over training scenes, for every ordered pair of classes."""
    rng = random.Random(seed)
    single = dict.fromkeys(BY_NAME, 0)
    joint: dict[tuple[str, str], int] = {}
    for _ in range(n):
        names = sample_names(rng)
        for a in names:
            single[a] += 1
            for b in names:
                if a != b:
                    joint[a, b] = joint.get((a, b), 0) + 1
    return {
        (a, b): joint.get((a, b), 0) / max(1, single[a]) for a in BY_NAME for b in BY_NAME if a != b
    }
