"""Measure a checkpoint in the synthetic world: grounding and hallucination rates.

Greedy answers of a ``transformers`` LLaVA-style model (the reference path) on held-out
scenes of :mod:`decoding.testing.world`:

- grounding: accuracy on unambiguous presence questions, i.e. about an object that is
  present, or about an absent class that is no missing partner of the scene;
- hallucination: on scenes whose prior partner is absent, the share of captions that
  mention it, and the share of "Is there a <partner>?" questions answered yes;
- a strategy's effect there: captions it cleans of the partner, and those it adds it to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from decoding.testing import world

CAPTION_PROMPT = "Describe the image."
_WORD_TO_CLASS = {w: c.name for c in world.CLASSES for w in c.synonyms}


def mentioned(caption: str) -> set[str]:
    """Classes a caption of this world names (by any synonym)."""
    words = re.findall(r"[a-z]+", caption.lower())
    return {_WORD_TO_CLASS[w] for w in words if w in _WORD_TO_CLASS}


def yes(answer: str) -> bool:
    return answer.strip().lower().startswith("yes")


def _encode(processor: Any, images: list, prompt: str) -> dict:
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
        add_generation_prompt=True,
    )
    return processor(
        images=images, text=[text] * len(images), return_tensors="pt", add_special_tokens=False
    )


def greedy(model: Any, processor: Any, images: list, prompt: str, max_new_tokens: int) -> list[str]:
    """Greedy answers to one prompt about each image (one batch: equal prompt lengths)."""
    if not images:
        return []
    enc = _encode(processor, images, prompt)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    tok = processor.tokenizer
    return [
        tok.decode(row, skip_special_tokens=True) for row in out[:, enc["input_ids"].shape[1] :]
    ]


def _presence(model: Any, processor: Any, items: list[tuple[Any, str]]) -> list[bool]:
    """Greedy yes/no to "Is there a <name>?" for (image, name) items, batched per name."""
    out: dict[int, bool] = {}
    for name in sorted({n for _, n in items}):
        idx = [i for i, (_, n) in enumerate(items) if n == name]
        answers = greedy(
            model, processor, [items[i][0] for i in idx], world.presence_question(name), 1
        )
        out.update({i: yes(a) for i, a in zip(idx, answers, strict=True)})
    return [out[i] for i in range(len(items))]


@dataclass(frozen=True)
class LabRates:
    presence_accuracy: float
    presence_n: int
    caption_hallucination: float  # captions naming an absent prior partner
    pope_hallucination: float  # "yes" to an absent prior partner
    conflict_n: int
    caption_recall: float  # present objects named, on the conflict scenes

    def as_dict(self) -> dict[str, float]:
        return self.__dict__.copy()


def measure(model: Any, processor: Any, scenes: int = 40, conflicts: int = 40) -> LabRates:
    """Greedy grounding and hallucination rates on held-out scenes."""
    items, truths = [], []
    for _, scene in world.heldout_scenes(scenes, first=10_000):
        img = scene.draw()
        bait = set(scene.missing_partners)
        absent = [c.name for c in world.CLASSES if not scene.has(c.name) and c.name not in bait]
        for name, truth in [(n, True) for n in scene.names] + [(n, False) for n in absent[:2]]:
            items.append((img, name))
            truths.append(truth)
    said = _presence(model, processor, items)
    right = sum(a == t for a, t in zip(said, truths, strict=True))
    found = [s for _, s in world.conflict_scenes(conflicts)]
    images = [s.draw() for s in found]
    captions = greedy(model, processor, images, CAPTION_PROMPT, 24)
    cap_h = recall = gt = 0
    for scene, caption in zip(found, captions, strict=True):
        names = mentioned(caption)
        cap_h += bool(names & set(scene.missing_partners))
        recall += len(names & set(scene.names))
        gt += len(scene.names)
    baits = _presence(
        model, processor, [(i, s.missing_partners[0]) for i, s in zip(images, found, strict=True)]
    )
    n = len(found)
    return LabRates(right / len(truths), len(truths), cap_h / n, sum(baits) / n, n, recall / gt)


@dataclass(frozen=True)
class StrategyEffect:
    """A strategy's captions against greedy ``none`` ones, per conflict scene."""

    removed: int  # scenes where ``none`` names the absent partner and the strategy not
    added: int  # the reverse
    hallucination: tuple[float, float]  # share of captions naming it: none, strategy
    any_absent: tuple[float, float]  # share naming any absent object (CHAIR_s)
    recall: tuple[float, float]  # present objects named: none, strategy
    n: int


def strategy_effect(
    model: Any, processor: Any, decoding: dict, conflicts: int = 40, max_new_tokens: int = 24
) -> StrategyEffect:
    """Reference-engine captions (``CAPTION_PROMPT``) of the first ``conflicts`` held-out
    scenes that lack a prior partner, with and without ``decoding``."""
    from decoding.reference.engine import reference_generate

    found = [s for _, s in world.conflict_scenes(conflicts)]
    hall: dict[str, list[bool]] = {"none": [], "with": []}
    absent = {"none": 0, "with": 0}
    named = {"none": 0, "with": 0}
    for scene in found:
        image = scene.draw()
        for key, dec in (("none", None), ("with", decoding)):
            text = reference_generate(
                model, processor, image, CAPTION_PROMPT, dec, max_new_tokens=max_new_tokens
            ).text
            names = mentioned(text)
            hall[key].append(bool(names & set(scene.missing_partners)))
            absent[key] += bool(names - set(scene.names))
            named[key] += len(names & set(scene.names))
    pairs = list(zip(hall["none"], hall["with"], strict=True))
    n, gt = len(found), sum(len(s.names) for s in found)
    return StrategyEffect(
        removed=sum(a and not b for a, b in pairs),
        added=sum(b and not a for a, b in pairs),
        hallucination=(sum(hall["none"]) / n, sum(hall["with"]) / n),
        any_absent=(absent["none"] / n, absent["with"] / n),
        recall=(named["none"] / gt, named["with"] / gt),
        n=n,
    )


def derive_sink_dims(
    model: Any, processor: Any, layers: list[int], scenes: int = 8, ratio: float = 3.0
) -> list[int]:
    """Massive-activation dimensions found from forward passes, as for a real model.

    VAR (Kang et al., ICLR 2025, §3.1) takes ``D_sink`` from the residual stream:
    dimensions where some token's ``|x_d| / RMS(x)`` is far above every other
    dimension's (Sun et al., "Massive activations in LLMs", 2024). Per dimension, the
    largest such ratio over all tokens of caption prompts on held-out scenes, at the
    inputs of ``layers``; kept are dimensions scoring over ``ratio`` times the median.
    """
    best = None
    for _, scene in world.heldout_scenes(scenes):
        enc = _encode(processor, [scene.draw()], CAPTION_PROMPT)
        with torch.no_grad():
            hidden = model(**enc, output_hidden_states=True).hidden_states
        for layer in layers:
            x = hidden[layer][0].float()
            rms = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
            score = (x.abs() / rms).max(0).values
            best = score if best is None else torch.maximum(best, score)
    median = float(best.median())
    return sorted(int(d) for d in torch.nonzero(best > ratio * median).flatten())
