"""AVC's contrast prefill inside the engine: find the blind image tokens, mask the rest.

A step that prefills an AVC contrast request runs the language model twice. Pass one is
the ordinary forward; meanwhile the attention hook records, for each flagged request and
every decoder layer, the head-mean attention of the original prompt's last token over the
image tokens (probabilities recomputed in float32 from the paged KV cache). The blind
tokens follow from :func:`decoding.cores.avc.blind_tokens`; pass two runs the step again
with the other image embeddings of those requests zeroed (or set to one) and overwrites
their KV, so the contrast sequence holds exactly the masked input the reference builds.
Other requests in the step recompute identical values. Decode steps are untouched.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from vllm.forward_context import get_forward_context

from decoding.cores import avc as avc_core
from decoding.engine.families import family_for
from decoding.engine.worker import hooks
from decoding.engine.worker.attention import gather_kv, layer_index, row_span
from decoding.engine.worker.graphs import eager_step
from decoding.engine.worker.rows import STEP, Row
from decoding.wire import ATTENTION, FORWARD, BlindMask, PairSettings

#: row -> per-layer image attention, filled during pass one only.
_CAPTURE: dict[int, dict[int, torch.Tensor]] = {}
log = logging.getLogger(__name__)


def _metadata() -> Any:
    meta = get_forward_context().attn_metadata
    if isinstance(meta, dict):
        meta = next(iter(meta.values()), None)
    if isinstance(meta, list):  # one dict per micro-batch (ubatching)
        meta = next(iter(meta[0].values()), None)
    return meta


def _blind(row: Row) -> BlindMask:
    blind = row.config.blind
    assert blind is not None, "an AVC contrast row carries its mask settings"
    return blind


def _image_positions(row: Row) -> torch.Tensor:
    """Image-token positions of the prompt (computed once per request: the attention
    hook asks for them in every layer)."""
    if "avc_image" not in row.state:
        cfg = _blind(row)
        prompt = torch.tensor(row.prompt[: cfg.query + 1])
        row.state["avc_image"] = torch.nonzero(prompt == cfg.image_token).flatten()
    return row.state["avc_image"]


def _pending(meta: Any) -> dict[int, Row]:
    """AVC contrast rows whose image tokens are computed in this step."""
    out = {}
    for index, row in STEP.of_kind(PairSettings.kind).items():
        if row.config.contrast != "blind_mask" or index + 1 >= len(meta.query_start_loc):
            continue
        start, end, seq_len = row_span(meta, index)
        first = seq_len - (end - start)  # position of the step's first token
        query = _blind(row).query
        # The mask is computed in the step that computes the query (the last prompt
        # token); a prompt the scheduler splits (e.g. an image deferred for encoder-cache
        # budget) is handled when that step comes.
        if first <= query < seq_len:
            out[index] = row
    return out


@hooks.register(FORWARD, "blind_mask", order=20)
def two_pass(model: Any, run: Any, embeds: torch.Tensor | None) -> Any:
    meta = _metadata()
    pending = _pending(meta) if meta is not None and embeds is not None else {}
    if not pending:
        return run(embeds)
    # Two passes in one step: the language model runs eagerly (compiled code and CUDA
    # graphs assume one pass), and pass two reads the masked embeddings from the same
    # buffer as pass one.
    with eager_step():
        return _two_pass(model, run, embeds, pending, meta)


def _two_pass(
    model: Any, run: Any, embeds: torch.Tensor, pending: dict[int, Row], meta: Any
) -> Any:
    # Inputs the family adds besides the embeddings (Qwen3-VL's deepstack features) are
    # consumed by pass one; pass two gets them back, masked like the embeddings.
    extra = family_for(model.config).extra_inputs
    saved = extra.save(model, embeds.shape[0]) if extra is not None else None
    masked_rows: list[torch.Tensor] = []
    _CAPTURE.clear()
    _CAPTURE.update({index: {} for index in pending})
    try:
        run(embeds)
    finally:
        captured = dict(_CAPTURE)
        _CAPTURE.clear()
    masked = embeds.clone()
    for index, row in pending.items():
        cfg = _blind(row)
        layers = captured[index]
        attn = torch.stack([layers[k] for k in sorted(layers)])
        blind = avc_core.blind_tokens(attn, cfg.gamma, cfg.lamb)
        start, end, seq_len = row_span(meta, index)
        first = seq_len - (end - start)
        image = _image_positions(row)
        if int(image.min()) < first:
            # Part of the image was computed in an earlier step (a prefill split inside
            # the image): its KV is already written unmasked.
            log.warning("AVC contrast image split across steps: contrast left unmasked")
            continue
        positions = image - first + start
        masked = avc_core.mask_image_embeddings(masked, positions, blind, cfg.mask)
        masked_rows.append(positions[~blind.to(positions.device)])
        row.state["avc_blind"] = torch.nonzero(blind).flatten().tolist()
    embeds.copy_(masked)
    if extra is not None:
        rows = torch.cat(masked_rows) if masked_rows else torch.zeros(0, dtype=torch.long)
        extra.restore(model, saved, rows.to(embeds.device))
    return run(embeds)


@hooks.register(ATTENTION, "blind_mask", order=10)
def capture(impl: Any, layer: Any, query: torch.Tensor, kv_cache: Any, meta: Any, out: Any):
    if not _CAPTURE:
        return
    key_cache, value_cache = impl.split_cache(kv_cache)
    for index in _CAPTURE:
        row = STEP.rows[index]
        start, end, seq_len = row_span(meta, index)
        q_pos = _blind(row).query
        q = query[start + q_pos - (seq_len - (end - start))].float()  # (heads, dim)
        k, _ = gather_kv(key_cache, value_cache, meta, index, q_pos + 1)
        k = k.float().repeat_interleave(q.shape[0] // k.shape[0], dim=0)  # GQA
        probs = torch.softmax(torch.einsum("hd,hld->hl", q, k) * impl.scale, dim=-1)
        image = _image_positions(row)
        _CAPTURE[index][layer_index(layer)] = probs[:, image].mean(dim=0)
