"""OPERA's engine-side probe: a look-ahead's last-layer attention row, returned in-band.

OPERA (Huang et al., CVPR 2024, arXiv 2311.17911; ``shikiw/OPERA`` @ ``61426efe``,
``opera_beam_search``) scores each candidate token by the attention row of that candidate
in the LAST decoder layer, max over heads (``:3382-3409``). The API-side search
(:mod:`decoding.engine.runners.opera_search`) sends each look-ahead as its own one-token
request ``prompt + beam + [candidate]`` flagged ``{"kind": "opera", ...}``; for such a row,
in the step that computes its last token,

* the attention hook recomputes that token's probabilities in float32 from the paged KV
  cache (query already rotated by the stock layer), takes the max over heads and reduces
  the row to the partition OPERA reads: one value per generated position (the answer so
  far and the candidate), the total on the image tokens, and the total on the other
  prompt tokens. Normalising the partition gives the reference's row normalisation;
* the logits hook replaces the row's logits by :func:`encode`, which carries both that
  partition and the row's real next-token candidates (top ``num_candidates`` log-
  probabilities: the continuation's own distribution, so a chosen candidate is never
  re-run). The runner asks for exactly as many log-probabilities as there are finite
  entries and decodes them with :func:`decode`.

Returning the data as log-probabilities keeps it in vLLM's own output path: it works with
the engine in another process, needs no files or extra RPCs, and dies with the request
when it is aborted. The cost is ``--max-logprobs`` large enough for the longest answer
(set by :func:`decoding.engine.frontend.configure_strategies`) and answers no longer than
the vocabulary allows (checked by the runner).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.engine.worker import hooks
from decoding.engine.worker.rows import STEP
from decoding.wire import ATTENTION, LOGITS, OperaProbe

KIND = OperaProbe.kind
#: Logit of the anchor slot: above every log-probability, so it is the greedy token.
ANCHOR = 1.0
#: Floor of an encoded attention value (a zero would drop out of the returned top-k).
TINY = 1e-30


#: Elements of the float32 keys gathered at once (rows are processed in chunks).
GATHER_BUDGET = 1 << 25


@hooks.register(ATTENTION, "opera", order=20)
def probe(impl: Any, layer: Any, query: torch.Tensor, kv_cache: Any, meta: Any, out: Any):
    rows = STEP.of_kind(KIND)
    if not rows:
        return
    from decoding.engine.worker.attention import layer_index

    index_of_layer = layer_index(layer)
    starts = meta.query_start_loc.tolist()
    lengths = meta.seq_lens.tolist()
    due = []
    for index, row in rows.items():
        if row.config.layer != index_of_layer or index + 1 >= len(starts):
            continue
        start, end, seq_len = starts[index], starts[index + 1], lengths[index]
        # Only the step that computes the request's last token (its single sample).
        if end > start and seq_len == len(row.prompt):
            due.append((index, row, end - 1, seq_len))
    if not due:
        return
    key_cache, _ = impl.split_cache(kv_cache)
    per_row = key_cache.shape[1] * key_cache.shape[3] * max(d[3] for d in due)
    size = max(1, GATHER_BUDGET // per_row)
    for first in range(0, len(due), size):
        chunk = due[first : first + size]
        probs = max_over_heads(impl, key_cache, meta, query, chunk)
        for (_, row, _, _), state in zip(chunk, partitions(probs, chunk), strict=True):
            row.state[KIND] = state


def max_over_heads(
    impl: Any, key_cache: torch.Tensor, meta: Any, query: torch.Tensor, due: list[tuple]
) -> torch.Tensor:
    """``(rows, max length)``: each due row's last-token attention probabilities (float32,
    recomputed from the paged keys), max over heads; zero past a row's length. Keys are
    read as :func:`decoding.engine.worker.attention.gather_kv` reads them (``(blocks,
    kv_heads, block_size, head_dim)``), for all rows at once."""
    device = query.device
    lengths = torch.tensor([d[3] for d in due], device=device)
    longest = int(lengths.max())
    kv_heads, block, dim = key_cache.shape[1], key_cache.shape[2], key_cache.shape[3]
    blocks = -(-longest // block)
    table = meta.block_table[torch.tensor([d[0] for d in due], device=device), :blocks]
    k = key_cache.index_select(0, table.reshape(-1).long())
    k = k.view(len(due), blocks, kv_heads, block, dim).transpose(1, 2)
    k = k.reshape(len(due), kv_heads, blocks * block, dim)[:, :, :longest].float()
    q = query[torch.tensor([d[2] for d in due], device=device)].float()
    q = q.view(len(due), kv_heads, -1, dim)  # query head j reads kv head j // group (GQA)
    scores = torch.einsum("rkgd,rkld->rkgl", q, k) * impl.scale
    past = torch.arange(longest, device=device)[None, :] >= lengths[:, None]
    scores.masked_fill_(past[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1).amax(dim=(1, 2))


def partitions(probs: torch.Tensor, due: list[tuple]) -> list[torch.Tensor]:
    """Per row, ``[row[prompt_len:length]..., image total, other prompt total]``."""
    image = torch.zeros_like(probs, dtype=torch.bool)
    prompt = torch.zeros_like(probs, dtype=torch.bool)
    for r, (_, row, _, _) in enumerate(due):
        prompt[r, : row.config.prompt_len] = True
        for a, b in row.config.image:
            image[r, a:b] = True
    image_total = (probs * image).sum(dim=1, keepdim=True)
    other_total = (probs * (prompt & ~image)).sum(dim=1, keepdim=True)
    return [
        torch.cat([probs[r, row.config.prompt_len : length], image_total[r], other_total[r]])
        for r, (_, row, _, length) in enumerate(due)
    ]


def encode(real: torch.Tensor, data: list[torch.Tensor], candidates: int) -> torch.Tensor:
    """Logits rows whose log-softmax carries each ``real`` row's top ``candidates``
    log-probabilities (at their own token ids) and that row's values ``data[r]`` (> 0).

    Finite entries of a row, from the top: the anchor (:data:`ANCHOR`, at the smallest id
    outside the candidates; greedy sampling picks it), the candidates at their
    log-probabilities, then ``log(data / sum(data)) - c`` at the next free ids in
    increasing order, ``c`` putting them strictly below every candidate (normalised, each
    value is <= 1). The shift cancels when the runner renormalises. A row whose
    vocabulary cannot hold its data is returned unchanged (the runner refuses such
    answers beforehand).
    """
    lp = torch.log_softmax(real.float(), dim=-1)
    top = torch.topk(lp, candidates, dim=-1)
    x = torch.full_like(lp, float("-inf")).scatter_(1, top.indices, top.values)
    free = torch.ones_like(lp, dtype=torch.bool).scatter_(1, top.indices, False)
    rank = free.cumsum(dim=1) - 1  # rank of each free id among the free ids
    sizes = torch.tensor([d.numel() for d in data], device=lp.device)
    padded = torch.nn.utils.rnn.pad_sequence(
        [d.float().to(lp.device) for d in data], batch_first=True
    )
    shift = ANCHOR - top.values.min(dim=-1, keepdim=True).values
    logs = torch.log((padded / padded.sum(dim=1, keepdim=True)).clamp_min(TINY)) - shift
    vals = torch.cat([torch.full_like(shift, ANCHOR), logs], dim=1)
    take = free & (rank <= sizes[:, None])
    x = torch.where(take, vals.gather(1, rank.clamp(0, vals.shape[1] - 1)), x)
    fits = free.sum(dim=1) > sizes
    return torch.where(fits[:, None], x, real.float())


@hooks.register(LOGITS, "opera", order=20)
def encode_rows(model: Any, logits: torch.Tensor) -> torch.Tensor:
    rows = STEP.of_kind(KIND)
    if not rows:
        return logits
    groups: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for index, row in rows.items():
        data = row.state.pop(KIND, None)
        if data is not None and index < logits.shape[0]:
            groups.setdefault(row.config.candidates, []).append((index, data))
    if not groups:
        return logits
    # Half-precision logits could not hold the encoded values.
    out = logits if logits.dtype == torch.float32 else logits.float()
    for candidates, items in groups.items():
        index = torch.tensor([i for i, _ in items], device=out.device)
        out[index] = encode(out[index], [d for _, d in items], candidates)
    return out


@dataclass
class Probe:
    """What one look-ahead returns: the continuation's candidates and the attention row."""

    #: Top ``num_candidates`` token ids of the continuation and their log-probabilities.
    ids: list[int]
    logprobs: list[float]
    #: The last token's row over the generated positions, normalised over the whole row.
    row: torch.Tensor
    #: Its normalised attention mass on the image tokens.
    image_mass: float


def decode(sampled: int, logprobs: dict[int, float], candidates: int, fields: int) -> Probe:
    """Invert :func:`encode` from the returned log-probabilities (``{id: logprob}``, all
    finite entries) and the sampled token (the anchor). ``fields`` = generated positions
    + 2."""
    if len(logprobs) != 1 + candidates + fields or sampled not in logprobs:
        raise RuntimeError(
            f"OPERA probe: expected {1 + candidates + fields} entries with the anchor, got "
            f"{len(logprobs)}"
        )
    anchor = logprobs[sampled]
    order = sorted((i for i in logprobs if i != sampled), key=lambda i: -logprobs[i])
    ids = order[:candidates]
    taken = set(ids)
    slots: list[int] = []
    token = 0
    while len(slots) < 1 + fields:
        if token not in taken:
            slots.append(token)
        token += 1
    if slots[0] != sampled or set(slots[1:]) != set(order[candidates:]):
        raise RuntimeError("OPERA probe: returned slots do not match the encoding")
    vals = torch.tensor([logprobs[s] for s in slots[1:]], dtype=torch.float64)
    part = torch.exp(vals - vals.max())
    part = part / part.sum()
    return Probe(
        ids=ids,
        logprobs=[logprobs[i] - anchor + ANCHOR for i in ids],
        row=part[:-2],
        image_mass=float(part[-2]),
    )


def fields_for(generated: int) -> int:
    """Partition size of a look-ahead after ``generated`` tokens (plus the candidate)."""
    return generated + 1 + 2


def logprobs_needed(candidates: int, generated: int) -> int:
    return 1 + candidates + fields_for(generated)
