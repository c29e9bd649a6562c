"""Served-versus-reference parity: cases, the reference oracle, and the tie-aware verdict.

A served answer equals the reference when the token ids are identical. Kernels differ
numerically (vLLM's paged attention versus ``transformers`` eager), so a divergence is
excused only when, at the first differing step, the reference's top-two log-probability
margin is below :data:`TIE_TOLERANCE` (the two best tokens were a numerical tie there);
such ties are reported and must stay rare (:data:`MAX_TIE_RATE`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decoding.testing import synthetic, world

#: A first divergence with a reference top-two margin below this (nats) is a numerical tie.
TIE_TOLERANCE = 1e-3
#: Ties must stay under this fraction of the cases.
MAX_TIE_RATE = 0.1

#: Prompts of the probe cases; ``{partner}`` is the scene's absent prior partner.
PROMPTS = (
    "Describe the image.",
    "Is there a {partner} in the image?",
    "Describe the image in detail.",
    "What is in the picture?",
)


@dataclass(frozen=True)
class Case:
    """Held-out scene ``seed`` of the synthetic world and a prompt."""

    seed: int
    prompt: str
    #: Images in the request: scenes ``seed``, ``seed + 1000``, ``seed + 2000``, ...
    images: int = 1

    def _scene(self, seed: int) -> Any:
        return synthetic.heldout(seed)[0]

    @property
    def image(self) -> Any:
        """The request's scene, or its list of scenes when it has several."""
        if self.images == 1:
            return self._scene(self.seed)
        return [self._scene(self.seed + 1000 * i) for i in range(self.images)]

    def messages(self) -> list[dict]:
        if self.images == 1:
            return synthetic.chat_messages(self.image, self.prompt)
        parts = [{"type": "image_url", "image_url": {"url": synthetic.data_url(im)}}
                 for im in self.image]  # fmt: skip
        return [{"role": "user", "content": [*parts, {"type": "text", "text": self.prompt}]}]


def chat_request(
    model: str, case: Case, decoding: dict, max_tokens: int, ignore_eos: bool = False, **kw: Any
) -> dict:
    """Keyword arguments of ``chat.completions.create`` for ``case``: greedy, with per-token
    log-probabilities whose tokens read ``token_id:N`` (see :func:`token_ids`); with
    ``ignore_eos`` the answer runs to ``max_tokens``."""
    extra = {"return_tokens_as_token_ids": True, "decoding": decoding}
    if ignore_eos:
        extra["ignore_eos"] = True
    return {
        "model": model,
        "messages": case.messages(),
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "logprobs": True,
        "extra_body": extra,
        **kw,
    }


def token_ids(choice: Any) -> list[int]:
    """Token ids of a choice answered to :func:`chat_request`."""
    return [int(t.token.split(":", 1)[1]) for t in choice.logprobs.content]


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the Prometheus samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cases(n: int = 16, first_seed: int = 300) -> list[Case]:
    """``n`` probe cases where strategies matter: held-out scenes from ``first_seed`` on
    whose prior partner is absent (the model's hallucination bait), with captions and
    presence questions about that partner."""
    out: list[Case] = []
    index = first_seed
    while len(out) < n:
        scene = world.heldout_scene(index)
        if scene.missing_partners:
            prompt = PROMPTS[len(out) % len(PROMPTS)]
            out.append(Case(index, prompt.format(partner=scene.missing_partners[0])))
        index += 1
    return out


@functools.lru_cache(maxsize=2)
def load_reference(model_dir: str) -> tuple[Any, Any]:
    from decoding.reference.cli import load

    return load(model_dir, dtype="float32")


def reference(model_dir: str | Path, case: Case, decoding: dict, max_tokens: int, **kw: Any):
    """The reference engine's answer for ``case`` (``kw``: temperature, top_p, seed,
    forced_tokens, ignore_eos)."""
    from decoding.reference.engine import reference_generate

    model, processor = load_reference(str(model_dir))
    return reference_generate(
        model, processor, case.image, case.prompt, decoding, max_new_tokens=max_tokens, **kw
    )


@dataclass(frozen=True)
class Verdict:
    case: Case
    equal: bool
    #: First differing step (None when equal).
    step: int | None = None
    margin: float | None = None

    @property
    def tie(self) -> bool:
        return not self.equal and self.margin is not None and self.margin < TIE_TOLERANCE


def compare(case: Case, served: list[int], ref: Any) -> Verdict:
    """Compare served token ids with a :class:`~decoding.reference.engine.ReferenceResult`."""
    expected = list(ref.token_ids)
    if served == expected:
        return Verdict(case, True)
    step = next(
        (i for i, (a, b) in enumerate(zip(served, expected, strict=False)) if a != b),
        min(len(served), len(expected)),
    )
    margin = ref.margins[step] if step < len(ref.margins) else None
    if margin is not None and math.isnan(margin):
        margin = None
    return Verdict(case, False, step, margin)


def judge(verdicts: list[Verdict]) -> tuple[list[Verdict], list[Verdict]]:
    """Returns (failures, ties). Failures: divergences that are not ties, plus every tie
    if ties reach :data:`MAX_TIE_RATE` of the cases."""
    ties = [v for v in verdicts if v.tie]
    bad = [v for v in verdicts if not v.equal and not v.tie]
    if verdicts and len(ties) / len(verdicts) >= MAX_TIE_RATE:
        bad += ties
    return bad, ties


def describe(verdicts: list[Verdict]) -> str:
    return "; ".join(
        f"seed {v.case.seed} {v.case.prompt!r}: step {v.step} margin {v.margin}"
        for v in verdicts
        if not v.equal
    )
