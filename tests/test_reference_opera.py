"""OPERA's candidate scoring in the reference against an independent full-sequence
computation (no KV cache, attentions straight from ``transformers``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from decoding.reference import reference_generate
from decoding.reference.attention import lucid_attention
from decoding.reference.inputs import encode
from decoding.reference.opera import _candidate_scores
from decoding.strategies import resolve
from decoding.testing import synthetic


@pytest.fixture(scope="module")
def tiny(tiny_llava_dir: Path):  # noqa: ANN201
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(
        tiny_llava_dir, attn_implementation="eager"
    ).eval()
    return model, AutoProcessor.from_pretrained(tiny_llava_dir)


def _independent(model, enc, tokens, cand, prompt_len, image_pos, scale):  # noqa: ANN001, ANN202
    """phi, location and image mass of ``cand`` after ``tokens``, from one full forward."""
    ids = torch.cat([enc.input_ids, torch.tensor([tokens + [cand]])], dim=1)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=enc.pixel_values, output_attentions=True)
        att = out.attentions[-1][0]
    rows = att.max(dim=0).values[prompt_len:].double().numpy()  # generated rows + candidate
    rows = rows / rows.sum(-1, keepdims=True)
    w = rows[:, prompt_len:]
    t = w.shape[0]
    s = [1e-7 * np.prod([scale * w[i, j] for i in range(j, t)]) for j in range(t)]
    return max(s), int(np.argmax(s)), float(rows[-1, image_pos].sum())


@pytest.mark.parametrize("generated", [3, 9])  # the caption of scene 0 has 10 tokens
def test_candidate_penalty_matches_full_forward(tiny, generated: int) -> None:  # noqa: ANN001
    model, processor = tiny
    image, prompt = synthetic.sample(0)[0], "Describe the image."
    params = resolve({"strategy": "opera"}).params
    answer = reference_generate(model, processor, image, prompt, None, max_new_tokens=20)
    tokens = answer.token_ids[:generated]
    assert len(tokens) == generated
    enc = encode(model, processor, image, prompt)
    with torch.no_grad():
        with lucid_attention(model):
            out = model(
                input_ids=torch.cat([enc.input_ids, torch.tensor([tokens])], dim=1),
                pixel_values=enc.pixel_values,
                use_cache=True,
                output_attentions=True,
            )
            last = out.attentions[-1][0].float().max(dim=0).values  # (T, T)
            plen = enc.length
            # the row of generated token i is the query row at position plen + i, as the
            # engine records it when that token is fed
            rows = [last[plen + i : plen + i + 1, : plen + i + 1] for i in range(generated)]
            cache = out.past_key_values
            cands = torch.topk(out.logits[0, -1], 5).indices[None]
            image_mask = torch.zeros(plen)
            image_mask[enc.image_positions] = 1.0
            penalty, loc = _candidate_scores(model, cache, cands, rows, plen, image_mask, params)
    pos = enc.image_positions.numpy()
    for c in range(5):
        phi, where, mass = _independent(model, enc, tokens, int(cands[0, c]), plen, pos, 50.0)
        if generated + 1 <= 10:
            assert float(penalty[0, c]) == pytest.approx(mass, rel=1e-4)
        else:
            assert float(penalty[0, c]) == pytest.approx(-phi, rel=1e-3)
        assert int(loc[0, c]) == where
