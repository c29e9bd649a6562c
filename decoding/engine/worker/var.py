"""VAR inside the engine: sinks at prefill, post-softmax redistribution in attention.

Kang, Kim, Kim, Hwang, "See What You Are Told: Visual Attention Sink in Large Multimodal
Models", ICLR 2025 (arXiv 2503.03321); official code ``seilk/VisAttnSink`` @ ``98e62d6``
(``src/logic/logic.py``). The maths is :mod:`decoding.cores.var`; this module applies it
to the rows of vLLM's batch that carry ``{"kind": "var", ...}`` engine settings (set by
the ``single`` runner from the declaration), exactly as the reference engine's
``VARState``.

Per step (:func:`forward`, a ``forward`` hook) a :class:`Plan` maps the VAR
rows of the batch to their tokens and positions (one read of the attention metadata).

* **Sinks.** For tokens of the prompt computed in this step, forward pre-hooks on the
  profile's decoder layers read the residual stream entering each layer (vLLM's Llama
  fuses the residual add into the next layer's norm, so it is ``hidden + residual``;
  layer 0 receives the embeddings) and store ``phi > tau`` per layer and position in the
  request's row state. Hooks exist only during steps that prefill a VAR request.
* **Edits.** After the stock attention kernel of each profile layer (:func:`attend`, a
  ``attention`` hook), the queries after the image (the prompt's text after the
  image at prefill, the new token when decoding) of all VAR rows get the exact
  partitioned-attention update of :func:`decoding.cores.var.partitioned_update`, in one
  padded float32 batch from the paged KV cache: two LSE-returning attention calls (all
  keys, non-sink image keys; :mod:`.lse` picks the platform's fused kernel) and a gather
  of the few sink keys give the masses that select image-centric rows and the change
  ``p * (m_S * o_T - sum_s a_s v_s)``; no probability matrix is materialised. Only the
  selected (token, head) outputs change; every other output value, and every row of
  other requests, is left as the kernel wrote it.

State lives in the request's :class:`~decoding.engine.worker.rows.Row`, created when the
request enters the batch, so sinks are never carried over to the next request in the
same slot (the official per-sample reset does not reset). The runner turns off prefix
cache reads for VAR requests, so the whole prompt passes through the probes; a gap in
the probed positions (which would mean missing sinks) is logged.

Deviations from the official code are those of the reference (paper meanings of ``p``
and ``rho``, per-request sinks, last layer not edited); with ``p = 0`` no attention
output is touched, so the answer is the plain one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from decoding.cores import var as var_core
from decoding.engine.families import family_for
from decoding.engine.worker import hooks
from decoding.engine.worker.attention import layer_index
from decoding.engine.worker.graphs import eager_step
from decoding.engine.worker.lse import lse_attention_for
from decoding.engine.worker.rows import STEP, Row
from decoding.wire import ATTENTION, FORWARD, VarSettings

KIND = VarSettings.kind
log = logging.getLogger(__name__)


# --- batched maths -----------------------------------------------------------------------


# --- per-request state -------------------------------------------------------------------


def _state(row: Row, device: torch.device) -> dict[str, Any]:
    """The row's VAR state, built on first sight of the request."""
    st = row.state
    if "sinks" not in st:
        cfg = row.config
        ids = torch.tensor(row.prompt, dtype=torch.long)
        image = ids == cfg.image_token_id
        positions = torch.nonzero(image).flatten()
        st["image"] = image.to(device)
        st["image_end"] = int(positions[-1]) if positions.numel() else -1
        st["layers"] = list(cfg.layers)
        st["sinks"] = torch.zeros(len(st["layers"]), len(row.prompt), dtype=torch.bool)
        st["sinks"] = st["sinks"].to(device)
        st["probed"] = 0  # prompt positions whose sinks are known, from 0
        st["warned"] = False
    return st


# --- the step plan -----------------------------------------------------------------------


@dataclass
class Probe:
    """Prompt tokens of one request computed in this step: their sinks are read."""

    row: Row
    tokens: tuple[int, int]  # [start, end) in the step's token order
    first: int  # position of the first one
    edit: int | None  # the request's index among the step's edited requests


@dataclass
class Edits:
    """The step's edited queries, padded to ``(R requests, Q queries)``, and their keys."""

    layers: dict[int, int]  # decoder layer -> index into ``sinks``
    block_ids: torch.Tensor  # (R, blocks) paged-cache block ids
    length: int  # L: longest key range
    tokens: torch.Tensor  # (R, Q) token index of each query (padding: a real index)
    bias: torch.Tensor  # (R, 1, Q, L) float: 0 for the keys a query sees, -inf elsewhere
    flat_rows: torch.Tensor  # real queries, as indices into the (R * Q) flattening
    flat_tokens: torch.Tensor  # ... and their token indices
    image: torch.Tensor  # (R, L) bool
    sinks: torch.Tensor  # (layers, R, L) bool, completed by the probes of this step
    p: torch.Tensor  # (R,) float32
    threshold: torch.Tensor  # (R,) float32: 1 - rho
    summ: torch.Tensor  # (R,) float32


@dataclass
class Plan:
    probes: dict[int, list[Probe]] = field(default_factory=dict)  # layer -> probes
    edits: Edits | None = None


#: The plan of the step being run (None outside VAR steps).
_CURRENT: Plan | None = None
_WARNED: list[bool] = []


def _metadata(layer_name: str) -> Any:
    from vllm.forward_context import get_forward_context

    meta = get_forward_context().attn_metadata
    if not isinstance(meta, dict):
        if meta and not _WARNED:
            _WARNED.append(True)
            log.warning("VAR is not applied in micro-batched (dual-batch overlap) steps")
        return None
    return meta.get(layer_name)


def decoder_layers(model: Any) -> Any:
    return family_for(model.config).decoder_layers(model)


def build_plan(rows: dict[int, Row], meta: Any, device: torch.device) -> Plan | None:
    """The step's probes and edits for the VAR ``rows`` (batch index -> row), from the
    step's attention metadata (``query_start_loc``, ``seq_lens``, ``block_table``)."""
    starts = meta.query_start_loc.tolist()
    lengths = meta.seq_lens.tolist()
    plan = Plan()
    probed: list[Probe] = []
    edited: list[tuple[int, Row, dict, int, int]] = []  # index, row, state, start, first
    for index in sorted(rows):
        if index + 1 >= len(starts):
            continue
        row = rows[index]
        start, end = starts[index], starts[index + 1]
        if end <= start:
            continue
        st = _state(row, device)
        first = lengths[index] - (end - start)
        edit = None
        if row.config.p > 0.0 and lengths[index] - 1 > st["image_end"]:
            edit = len(edited)
            edited.append((index, row, st, start, first))
        n_prompt = len(row.prompt)
        if first < n_prompt:
            _check_gap(st, first)
            stop = min(end, start + n_prompt - first)
            st["probed"] = max(st["probed"], first + (stop - start))
            probed.append(Probe(row, (start, stop), first, edit))
    for probe in probed:
        for layer in probe.row.state["layers"]:
            plan.probes.setdefault(layer, []).append(probe)
    if edited:
        plan.edits = _edits(meta, edited, lengths, device)
    if not plan.probes and plan.edits is None:
        return None
    return plan


def _check_gap(st: dict[str, Any], first: int) -> None:
    if first > st["probed"] and not st["warned"]:
        st["warned"] = True
        log.warning(
            "VAR: prompt positions %d..%d were not computed for this request (prefix cache "
            "read?); their sinks are unknown",
            st["probed"],
            first - 1,
        )


def _edits(
    meta: Any, edited: list[tuple[int, Row, dict, int, int]], lengths: list[int], device: Any
) -> Edits:
    n = len(edited)
    layers = sorted({layer for _, _, st, _, _ in edited for layer in st["layers"]})
    length = max(lengths[index] for index, *_ in edited)
    queries: list[list[tuple[int, int]]] = []  # per request: (token, position)
    for index, _row, st, start, first in edited:
        lo = max(first, st["image_end"] + 1)  # queries after the image only
        queries.append([(start + pos - first, pos) for pos in range(lo, lengths[index])])
    width = max(len(q) for q in queries)
    tokens = torch.zeros(n, width, dtype=torch.long)
    positions = torch.zeros(n, width, dtype=torch.long)
    flat_rows, flat_tokens = [], []
    for r, qs in enumerate(queries):
        tokens[r] = qs[0][0]  # padding repeats a real token; it is never written back
        for j, (tok, pos) in enumerate(qs):
            tokens[r, j], positions[r, j] = tok, pos
            flat_rows.append(r * width + j)
            flat_tokens.append(tok)
    key_pos = torch.arange(length)
    keep = key_pos[None, None, :] <= positions[:, :, None]
    bias = torch.zeros(n, 1, width, length).masked_fill_(~keep[:, None], float("-inf"))
    image = torch.zeros(n, length, dtype=torch.bool, device=device)
    sinks = torch.zeros(len(layers), n, length, dtype=torch.bool, device=device)
    slot = {layer: i for i, layer in enumerate(layers)}
    for r, (_, row, st, _, _) in enumerate(edited):
        plen = len(row.prompt)
        image[r, :plen] = st["image"]
        if st["layers"] == layers:
            sinks[:, r, :plen] = st["sinks"]
        else:
            for i, layer in enumerate(st["layers"]):
                sinks[slot[layer], r, :plen] = st["sinks"][i]
    table = meta.block_table
    index_t = torch.tensor([index for index, *_ in edited], device=table.device)

    def params(key: str, fn: Any = float) -> torch.Tensor:
        vals = [fn(getattr(row.config, key)) for _, row, *_ in edited]
        return torch.tensor(vals, dtype=torch.float32, device=device)

    return Edits(
        layers=slot,
        block_ids=table.index_select(0, index_t).long().clamp_(min=0),
        length=length,
        tokens=tokens.to(device),
        bias=bias.to(device),
        flat_rows=torch.tensor(flat_rows, dtype=torch.long, device=device),
        flat_tokens=torch.tensor(flat_tokens, dtype=torch.long, device=device),
        image=image,
        sinks=sinks,
        p=params("p"),
        threshold=params("rho", lambda rho: 1.0 - float(rho)),
        summ=params("summ"),
    )


# --- hooks -------------------------------------------------------------------------------


def _probe_hook(layer: int):  # noqa: ANN202
    def hook(module: Any, args: tuple) -> None:
        plan = _CURRENT
        if plan is None:
            return
        hidden, residual = args[1], args[2]
        for probe in plan.probes.get(layer, ()):
            a, b = probe.tokens
            x = hidden[a:b] if residual is None else hidden[a:b] + residual[a:b]
            cfg, st = probe.row.config, probe.row.state
            mask = var_core.sink_mask(x, list(cfg.dims), cfg.tau)
            st["sinks"][st["layers"].index(layer), probe.first : probe.first + (b - a)] = mask
            edits = plan.edits
            if probe.edit is not None and edits is not None and layer in edits.layers:
                edits.sinks[edits.layers[layer], probe.edit, probe.first : probe.first + b - a] = (
                    mask
                )

    return hook


@hooks.register(FORWARD, "var", order=10)
def forward(model: Any, run: Any, embeds: Any) -> Any:
    """``forward``: plan the step, probe the residual stream during prefill."""
    global _CURRENT
    rows = STEP.of_kind(KIND)
    if not rows:
        return run(embeds)
    layers = decoder_layers(model)
    meta = _metadata(layers[0].self_attn.attn.layer_name)
    if meta is None:
        return run(embeds)
    device = embeds.device if embeds is not None else meta.block_table.device
    plan = build_plan(rows, meta, device)
    if plan is None:
        return run(embeds)
    handles = [
        layers[i].register_forward_pre_hook(_probe_hook(i)) for i in plan.probes if i < len(layers)
    ]
    _CURRENT = plan
    try:
        if plan.probes:
            # Decoder-layer pre-hooks run only in the eager language model: compiled code
            # was traced without them.
            with eager_step():
                return run(embeds)
        return run(embeds)
    finally:
        _CURRENT = None
        for handle in handles:
            handle.remove()


@hooks.register(ATTENTION, "var", order=30)
def attend(
    impl: Any, layer: Any, query: torch.Tensor, kv_cache: torch.Tensor, meta: Any, out: Any
) -> None:
    """``attention``: VAR on the edited queries of this layer, in place."""
    plan = _CURRENT
    if plan is None or plan.edits is None:
        return
    e = plan.edits
    slot = e.layers.get(layer_index(layer))
    if slot is None:
        return
    key_cache, value_cache = impl.split_cache(kv_cache)
    n, width = e.tokens.shape
    heads, dim = query.shape[1], query.shape[2]
    kv_heads, block = key_cache.shape[1], key_cache.shape[2]
    group = heads // kv_heads

    ids = e.block_ids[:, : (e.length + block - 1) // block]

    def gather(cache: torch.Tensor) -> torch.Tensor:  # (R, kv_heads, L, D) float32
        part = cache.index_select(0, ids.flatten())
        part = part.view(n, -1, kv_heads, block, part.shape[-1]).transpose(1, 2)
        return part.reshape(n, kv_heads, -1, part.shape[-1])[:, :, : e.length].float()

    # Slots past a request's length are masked out, but they may hold anything (NaN
    # included) and must not reach the products.
    k = torch.nan_to_num(gather(key_cache), nan=0.0, posinf=0.0, neginf=0.0)
    v = torch.nan_to_num(gather(value_cache), nan=0.0, posinf=0.0, neginf=0.0)
    # Query head h reads KV head h // group (vLLM's and transformers' GQA layout): each KV
    # head carries its group's queries stacked along the query axis.
    q = query.index_select(0, e.tokens.flatten()).float().view(n, width, kv_heads, group, dim)
    q = q.permute(0, 2, 3, 1, 4).reshape(n, kv_heads, group * width, dim)
    bias = e.bias.repeat(1, 1, group, 1)
    delta, changed, full = var_core.partitioned_update(
        q, k, v, bias, float(impl.scale), e.image, e.sinks[slot], e.p, e.threshold, e.summ,
        attention=lse_attention_for(q.device),
    )  # fmt: skip
    # The edited rows' new output: the recomputed output over all keys plus the change.
    new = (full + delta).view(n, kv_heads, group, width, dim).reshape(n, heads, width, dim)
    changed = changed.view(n, kv_heads, group, width).reshape(n, heads, width)
    output = out.view(out.shape[0], heads, -1)
    current = output.index_select(0, e.tokens.flatten()).view(n, width, heads, dim)
    new = new.permute(0, 2, 1, 3)  # (R, Q, H, D)
    merged = torch.where(changed.permute(0, 2, 1)[..., None], new.to(output.dtype), current)
    output[e.flat_tokens] = merged.reshape(n * width, heads, dim)[e.flat_rows]
