"""OPERA in the reference engine: beam search with candidate penalty and rollback.

Per step (``t`` tokens generated, ``k`` beams sharing one batched KV cache):

1. The beams' logits give full-vocabulary log-probabilities and each beam's top
   ``num_candidates`` tokens (by raw logit).
2. If the penalty or rollback is on, the candidates run one batched look-ahead forward on
   a copy of the cache (``k * num_candidates`` rows); their last-layer attention row (max
   over heads) completes each beam's window of generated-token rows, and
   :mod:`decoding.cores.opera` gives the over-trust score, its location and the image
   bonus. Candidate score = log-probability + penalty; other tokens are excluded.
3. Rollback (if on): the locations are recorded; when the rule fires, the beam state,
   attention rows and location history saved at the target position are restored, the KV
   cache is rebuilt by re-running the prompt plus the kept tokens (as the official code
   does), and that position is re-decided over the full vocabulary without penalty,
   excluding the (beam, token) pairs chosen there before.
4. :func:`decoding.cores.beam.beam_step` advances the beams with ``transformers`` 5
   semantics; the cache, rows and histories follow the chosen source beams.

With ``alpha = 0`` and ``rollback = False`` no look-ahead runs and this is beam search
restricted to each beam's top ``num_candidates`` tokens; it equals
``generate(num_beams=k)`` whenever no beam needs more than ``num_candidates`` of its own
continuations in a step, which ``num_candidates >= k + 1`` guarantees (k non-EOS + EOS).
``num_beams = 1`` is greedy decoding over the candidate scores.

The reported per-token log-probabilities are the best hypothesis's step scores
(log-probability + penalty); margins are not defined for beam search (NaN).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from decoding.cores import opera as core
from decoding.cores.beam import BeamState, beam_step
from decoding.reference.inputs import PromptInputs, encoder_outputs, forward_kwargs


def _rows_matrix(rows: list[torch.Tensor], k: int, width: int) -> torch.Tensor:
    """Stack generated-token rows ``(k, len_i)`` into ``(k, t, width)`` (zero-padded)."""
    if not rows:
        return torch.zeros(k, 0, width)
    padded = [torch.nn.functional.pad(r, (0, width - r.shape[-1])) for r in rows]
    return torch.stack(padded, dim=1)


def _candidate_scores(
    model: Any,
    cache: Any,
    cands: torch.Tensor,
    rows: list[torch.Tensor],
    prompt_len: int,
    image_mask: torch.Tensor,
    params: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Penalty ``(k, N)`` and location ``(k, N)`` of every candidate."""
    k, n = cands.shape
    look = copy.deepcopy(cache)
    look.batch_repeat_interleave(n)
    out = model(
        input_ids=cands.reshape(k * n, 1),
        past_key_values=look,
        use_cache=True,
        output_attentions=True,
    )
    cand_row = out.attentions[-1][:, :, -1, :].float().max(dim=1).values  # (k*n, width)
    width = cand_row.shape[-1]
    t = width - prompt_len - 1
    cand_row = cand_row.reshape(k, n, 1, width)
    past = _rows_matrix(rows, k, width).to(cand_row.device)  # (k, t, width)
    square = torch.cat([past.unsqueeze(1).expand(k, n, t, width), cand_row], dim=2)
    square = core.normalize_rows(square)
    window = square[..., prompt_len:]  # rows are the generated tokens: (k, n, t+1, t+1)
    phi, loc = core.overtrust_scores(window, params.scale_factor)
    img = torch.nn.functional.pad(image_mask, (0, width - image_mask.shape[0])).to(square.device)
    mass = (square[:, :, -1, :] * img).sum(-1)
    penalty = core.candidate_penalty(phi, mass, t + 1, params.alpha)
    return penalty, loc


def _restart(
    model: Any, inputs: PromptInputs, encoded: Any, beams: list[list[int]]
) -> tuple[Any, torch.Tensor]:
    """Fresh KV cache for ``beams`` (prompt + their tokens) and their next-token logits."""
    k = len(beams)
    ids = inputs.input_ids.expand(k, -1)
    extra = len(beams[0]) if beams else 0
    if extra:
        ids = torch.cat([ids, torch.tensor(beams, device=ids.device)], dim=1)
    kwargs = forward_kwargs(inputs, encoded, batch=k, extra_tokens=extra)
    out = model(input_ids=ids, use_cache=True, **kwargs)
    return out.past_key_values, out.logits[:, -1].float()


def opera_generate(
    model: Any, inputs: PromptInputs, params: Any, stop: set[int], max_new_tokens: int
) -> tuple[list[int], list[float], list[float], str, dict[str, Any]]:
    k, n = params.num_beams, params.num_candidates
    encoded = None if inputs.pixel_values is None else encoder_outputs(model, inputs)
    prompt_len = inputs.length
    image_mask = torch.zeros(prompt_len, dtype=torch.float32)
    image_mask[inputs.image_positions.cpu()] = 1.0
    use_attn = params.alpha != 0.0 or params.rollback

    cache, logits = _restart(model, inputs, encoded, [[]])
    cache.batch_repeat_interleave(k)
    logits = logits.expand(k, -1)
    state = BeamState.start(k)
    rows: list[torch.Tensor] = []
    retro = core.Retrospection(k, params.threshold, n, params.window) if params.rollback else None
    snaps: dict[int, dict[str, Any]] = {}
    rollbacks: list[dict[str, int]] = []
    t = 0
    while True:
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        cands = torch.topk(logits, min(n, logits.shape[-1]), dim=-1).indices
        scores = torch.full_like(logprobs, float("-inf"))
        pick = logprobs.gather(1, cands.cpu())
        loc = None
        if use_attn:
            penalty, loc = _candidate_scores(
                model, cache, cands, rows, prompt_len, image_mask, params
            )
            pick = (pick.double() + penalty.cpu()).float()
        scores.scatter_(1, cands.cpu(), pick)
        if retro is not None:
            r = retro.record(loc)
            snaps[t] = {"state": state.clone(), "rows": list(rows), "hist": retro.snapshot()}
            for old in [s for s in snaps if s < t - params.window - 1]:
                del snaps[old]
            pos = retro.target(r, t + 1)
            if pos is not None and pos in snaps:
                rollbacks.append({"from": t, "to": pos, "location": r})
                snap = snaps[pos]
                for later in [s for s in snaps if s > pos]:
                    del snaps[later]
                state = snap["state"].clone()
                rows = list(snap["rows"])
                retro.restore(snap["hist"])
                excluded = retro.reject(pos, snap.get("decision", []))
                cache, logits = _restart(model, inputs, encoded, state.running)
                scores = torch.log_softmax(logits.float(), dim=-1).cpu()
                for b, tok in excluded:
                    scores[b, tok] = float("-inf")
                t = pos
        state, src, toks = beam_step(state, scores, stop, max_new_tokens)
        if retro is not None:
            snaps[t]["decision"] = list(zip(src, toks, strict=True))
            retro.reorder(src)
        t += 1
        if state.done:
            break
        order = torch.tensor(src, device=logits.device)
        cache.reorder_cache(order)
        rows = [r[order.to(r.device)] for r in rows]
        out = model(
            input_ids=torch.tensor(toks, device=logits.device)[:, None],
            past_key_values=cache,
            use_cache=True,
            output_attentions=use_attn,
        )
        cache = out.past_key_values
        logits = out.logits[:, -1].float()
        if use_attn:
            rows.append(out.attentions[-1][:, :, -1, :].float().max(dim=1).values)
    tokens, steps = state.best()
    finish = "stop" if tokens and tokens[-1] in stop else "length"
    info = {"opera_rollbacks": rollbacks, "opera_steps": t}
    return tokens, steps, [float("nan")] * len(tokens), finish, info
