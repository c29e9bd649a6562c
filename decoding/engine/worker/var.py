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
  partitioned-attention update of :func:`decoding.cores.var.apply_partition`, added to
  the kernel's output. Decoding requests (one query each) and prefilling ones are padded
  into separate batches; the keys of each batch come from one gather of its blocks of the
  paged KV cache (:mod:`.paged`), and the key partition (image, sink and target masks)
  is built once per step for every layer. The segment terms come from an LSE-returning
  attention kernel (:mod:`.lse` picks the platform's; no probability matrix), or on CPUs
  for decoding batches from one small score matrix shared by all segments. Only the
  selected (token, head) outputs change; every other output value, and every row of
  other requests, is left as the kernel wrote it. A decoding request whose layers hold
  no visual sink can never change and is left out.

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
from decoding.engine.worker.paged import gather_kv
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
    edit: tuple[int, int] | None  # (edit group, index in it) when its queries are edited


@dataclass
class Edits:
    """The step's edited queries, padded to ``(R requests, Q queries)``, and their keys."""

    layers: dict[int, int]  # decoder layer -> index into ``sinks``
    block_ids: torch.Tensor  # (R, blocks) paged-cache block ids
    seq_lens: torch.Tensor  # (R,) each request's own key range
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
    shared: bool = True  # sinks are final for the whole step (no probes): one partition
    parts: dict[int, var_core.Partition | None] = field(default_factory=dict)

    def partition(self, slot: int, group: int, kernel: bool) -> var_core.Partition | None:
        """Layer ``slot``'s key partition (queries repeated per KV-head ``group``; for the
        attention-kernel path or the shared-scores one), built on first use. Without
        probes in the step the sinks are final, so one batched partition serves every
        layer; with probes, layer ``slot``'s sinks are complete only once its pre-hook has
        run, so each layer gets its own."""
        if slot not in self.parts:
            bias = self.bias.repeat(1, 1, group, 1) if group > 1 else self.bias
            if self.shared:
                whole = var_core.partition(bias, self.image, self.sinks, kernel)
                for i in self.layers.values():
                    self.parts[i] = whole.layer(i) if whole is not None else None
            else:
                self.parts[slot] = var_core.partition(bias, self.image, self.sinks[slot], kernel)
        return self.parts[slot]


@dataclass
class Plan:
    probes: dict[int, list[Probe]] = field(default_factory=dict)  # layer -> probes
    edits: list[Edits] = field(default_factory=list)  # decoding and prefilling requests


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
    probed: list[tuple[Probe, int | None]] = []  # with the request's index in ``edited``
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
        if (
            row.config.p > 0.0
            and lengths[index] - 1 > st["image_end"]
            and _may_change(st, row, first)
        ):
            edit = len(edited)
            edited.append((index, row, st, start, first))
        n_prompt = len(row.prompt)
        if first < n_prompt:
            _check_gap(st, first)
            stop = min(end, start + n_prompt - first)
            st["probed"] = max(st["probed"], first + (stop - start))
            probed.append((Probe(row, (start, stop), first, None), edit))
    # Requests with one edited query (decoding) and those with more (prefill) are padded
    # separately: a decoding row padded to a prompt's width would multiply its work.
    groups: list[list[int]] = [[], []]
    for i, (index, _row, st, _start, first) in enumerate(edited):
        wide = lengths[index] - max(first, st["image_end"] + 1) > 1
        groups[wide].append(i)
    where: dict[int, tuple[int, int]] = {}
    for members in filter(None, groups):
        for r, i in enumerate(members):
            where[i] = (len(plan.edits), r)
        plan.edits.append(_edits(meta, [edited[i] for i in members], lengths, device))
    for probe, edit in probed:
        if edit is not None:
            probe.edit = where[edit]
            plan.edits[probe.edit[0]].shared = False  # its sinks complete during the step
        for layer in probe.row.state["layers"]:
            plan.probes.setdefault(layer, []).append(probe)
    if not plan.probes and not plan.edits:
        return None
    return plan


def _may_change(st: dict[str, Any], row: Row, first: int) -> bool:
    """False for a request past its prompt whose layers hold no visual sink: no row of it
    is ever selected (as the official ``HeadFork``), so it is left out of the edits."""
    if first < len(row.prompt):
        return True  # its sinks are (partly) read in this step
    if "visual" not in st:
        st["visual"] = bool((st["sinks"] & st["image"]).any())
    return st["visual"]


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
    own = [lengths[index] for index, *_ in edited]
    length = max(own)
    # Queries after the image only: positions lo .. own - 1 of each request, whose tokens
    # sit at start + position - first in the step's token order.
    lows = [max(first, st["image_end"] + 1) for _, _, st, _, first in edited]
    ints = torch.tensor(
        [lows, [o - lo for o, lo in zip(own, lows, strict=True)],
         [start - first for _, _, _, start, first in edited], own],
        dtype=torch.long,
    )  # fmt: skip
    low, count, offset, seq_lens = ints
    width = int(count.max())
    j = torch.arange(width)
    real = j[None, :] < count[:, None]  # (R, Q)
    # Padding repeats a request's last query; it is never written back.
    positions = low[:, None] + torch.minimum(j[None, :], count[:, None] - 1)
    tokens = positions + offset[:, None]
    flat_rows = torch.nonzero(real.flatten()).flatten()
    keep = torch.arange(length)[None, None, :] <= positions[:, :, None]
    bias = torch.zeros(n, 1, width, length).masked_fill_(~keep[:, None], float("-inf"))
    states = [st for _, _, st, _, _ in edited]
    image = _padded([st["image"] for st in states], length)
    if all(st["layers"] == layers for st in states):
        sinks = _padded([st["sinks"].T for st in states], length).permute(2, 0, 1)
    else:
        sinks = torch.zeros(len(layers), n, length, dtype=torch.bool, device=device)
        for r, st in enumerate(states):
            for i, layer in enumerate(st["layers"]):
                sinks[layers.index(layer), r, : st["sinks"].shape[1]] = st["sinks"][i]
    table = meta.block_table
    index_t = torch.tensor([index for index, *_ in edited], device=table.device)
    cfgs = [row.config for _, row, *_ in edited]
    params = torch.tensor(
        [[c.p for c in cfgs], [1.0 - c.rho for c in cfgs], [c.summ for c in cfgs]],
        dtype=torch.float32, device=device,
    )  # fmt: skip
    return Edits(
        layers={layer: i for i, layer in enumerate(layers)},
        block_ids=table.index_select(0, index_t).long().clamp_(min=0),
        seq_lens=seq_lens.to(device),
        length=length,
        tokens=tokens.to(device),
        bias=bias.to(device),
        flat_rows=flat_rows.to(device),
        flat_tokens=tokens.flatten()[flat_rows].to(device),
        image=image.to(device),
        sinks=sinks.contiguous().to(device),
        p=params[0],
        threshold=params[1],
        summ=params[2],
    )


def _padded(per_request: list[torch.Tensor], length: int) -> torch.Tensor:
    """Stack ``(prompt_len, ...)`` tensors into ``(R, length, ...)``, False-padded (or cut
    at ``length``: a prompt still being prefilled in chunks)."""
    stacked = torch.nn.utils.rnn.pad_sequence(per_request, batch_first=True)[:, :length]
    extra = length - stacked.shape[1]
    if extra > 0:
        pad = torch.zeros(stacked.shape[0], extra, *stacked.shape[2:], dtype=stacked.dtype,
                          device=stacked.device)  # fmt: skip
        stacked = torch.cat([stacked, pad], dim=1)
    return stacked


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
            if probe.edit is not None:
                group, r = probe.edit
                edits = plan.edits[group]
                if layer in edits.layers:
                    edits.sinks[edits.layers[layer], r, probe.first : probe.first + b - a] = mask

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
    if plan is None:
        return
    for e in plan.edits:
        slot = e.layers.get(layer_index(layer))
        if slot is not None:
            _edit(e, slot, impl, query, kv_cache, out)


def _edit(
    e: Edits, slot: int, impl: Any, query: torch.Tensor, kv_cache: torch.Tensor, out: Any
) -> None:
    n, width = e.tokens.shape
    heads, dim = query.shape[1], query.shape[2]
    kv_heads = kv_cache.shape[1]  # [blocks, kv_heads, block_size, ...] on both backends
    group = heads // kv_heads
    attention = lse_attention_for(query.device, group * width)
    part = e.partition(slot, group, kernel=attention != var_core.SHARED_SCORES)
    if part is None:  # no sinks in any edited request: nothing changes
        return
    output = out.view(out.shape[0], heads, -1)
    # Query head h reads KV head h // group (vLLM's and transformers' GQA layout): each KV
    # head carries its group's queries stacked along the query axis.
    q = query.index_select(0, e.tokens.flatten()).float().view(n, width, kv_heads, group, dim)
    q = q.permute(0, 2, 3, 1, 4).reshape(n, kv_heads, group * width, dim)

    def change(clean: bool) -> torch.Tensor:
        k, v = gather_kv(kv_cache, e.block_ids, e.seq_lens, e.length, impl.split_cache, clean)
        return var_core.apply_partition(
            q, k, v, part, float(impl.scale), e.p, e.threshold, e.summ, attention, with_out=False
        )[0]

    delta = change(clean=False)  # zero on the rows that are not selected
    if not bool(torch.isfinite(delta).all()):  # a non-finite value in a foreign slot
        delta = change(clean=True)
    # The kernel's output plus the change: every row that is not selected keeps exactly
    # what the kernel wrote.
    delta = delta.view(n, kv_heads, group, width, dim).permute(0, 3, 1, 2, 4)
    current = output.index_select(0, e.tokens.flatten())
    merged = current + delta.reshape(n * width, heads, dim).to(output.dtype)
    if e.flat_rows.numel() == n * width:  # no padding (decoding): a plain row copy
        output.index_copy_(0, e.flat_tokens, merged)
    else:
        output[e.flat_tokens] = merged[e.flat_rows]
