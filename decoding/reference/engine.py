"""The reference engine: every strategy on a plain ``transformers`` LLaVA checkpoint.

One request at a time (batch 1), a plain Python loop, eager attention everywhere
(:mod:`decoding.reference.attention`): slow and simple, so that it can be trusted as the
oracle the served paths are compared with token for token, and as the batch-1 "official
way" baseline of the benchmarks.

* ``none``: one branch; greedy = argmax of the logits, sampling = temperature/top-p and
  one draw from a ``torch.Generator`` seeded with ``seed``.
* ``vcd`` / ``avc`` / ``damro``: two branches with SEPARATE KV caches (the clean prompt
  and the contrast input), both advanced with the chosen token every step; the step
  scores are :func:`decoding.cores.contrastive.contrast_logits`. This is correct where
  VCD's official loop before commit ``c637c85`` (2024-07-16) was not: it re-copied the
  clean branch's cache into the contrast branch every step, so from the second token on
  the contrast logits equalled the clean ones. With ``alpha = 0`` the contrast branch is
  not run (it cannot change the scores).
* ``var``: one branch whose attention probabilities are edited in the profile's layers.
* ``opera``: beam search, see :mod:`decoding.reference.opera`.

Parity contract with the served path (per step): the chosen token; the log-probability
of that token under the distribution it was drawn from (the contrasted, masked and warped
one); and that distribution's top-two margin, so near-ties (margin ~ 0) can be excused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from decoding.cores import avc as avc_core
from decoding.cores import damro as damro_core
from decoding.cores import var as var_core
from decoding.cores.contrastive import Choice, choose, contrast_logits, forced_choice
from decoding.profiles import ModelProfile, profile_for
from decoding.reference.attention import decoder_attention_modules, lucid_attention
from decoding.reference.families import reference_family
from decoding.reference.inputs import (
    PromptInputs,
    encode,
    encoder_outputs,
    eos_ids,
    forward_kwargs,
    repeat_encoding,
)
from decoding.strategies import Decoding, resolve
from decoding.strategies.base import Family, Strategy
from decoding.strategies.contrast import BlindTokens, OutlierTokens, PixelContrast


@dataclass
class ReferenceResult:
    """Output of one reference run."""

    strategy: str
    params: dict[str, Any]
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    #: Per generated token: log-probability under the distribution it was chosen from.
    logprobs: list[float]
    #: Per generated token: top-two log-probability margin of that distribution.
    margins: list[float]
    finish_reason: str  # "stop" (EOS) or "length"
    #: Strategy diagnostics (blind tokens, outliers, sinks, rollbacks, ...).
    info: dict[str, Any] = field(default_factory=dict)


class Branch:
    """One KV cache and the input that started it: token ids and the image encoding
    the forward splices into them (None for a text-only prompt)."""

    def __init__(self, model: Any, inputs: PromptInputs, encoded: Any) -> None:
        self.model = model
        self.inputs = inputs
        self.encoded = encoded
        self.cache: Any = None

    def prefill(self, output_attentions: bool = False) -> tuple[torch.Tensor, Any]:
        out = self.model(
            input_ids=self.inputs.input_ids,
            use_cache=True,
            output_attentions=output_attentions,
            **forward_kwargs(self.inputs, self.encoded),
        )
        self.cache = out.past_key_values
        return out.logits[0, -1].float(), out

    def step(self, token: int) -> torch.Tensor:
        ids = torch.tensor([[token]], device=self.inputs.input_ids.device)
        out = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[0, -1].float()


def _decoding(decoding: Any) -> Decoding:
    return decoding if isinstance(decoding, Decoding) else resolve(decoding)


def _clean(model: Any, inputs: PromptInputs) -> Any:
    return None if inputs.pixel_values is None else encoder_outputs(model, inputs)


def _with_rows(encoded: Any, rows: torch.Tensor, edit: Any) -> Any:
    """``encoded`` with ``edit(features, rows)`` applied to the concatenated features
    of every output (the spliced ones and Qwen3-VL's deepstack levels)."""
    out = repeat_encoding(encoded, 1)
    sizes = [int(f.shape[0]) for f in encoded.pooler_output]

    def apply(parts: Any, deep: bool) -> tuple[torch.Tensor, ...]:
        flat = edit(torch.cat(list(parts), dim=0), rows, deep)
        return tuple(torch.split(flat, sizes))

    out.pooler_output = apply(encoded.pooler_output, False)
    deep = getattr(encoded, "deepstack_features", None)
    if deep:
        out.deepstack_features = [apply(level, True) for level in deep]
    return out


# --- contrast inputs -------------------------------------------------------------------


def _pixel_contrast(model: Any, inputs: PromptInputs, form: PixelContrast, params: Any) -> Any:
    """The image encoding of each image's pixels transformed (VCD: diffusion noise), in
    the family's pixel layout."""
    fam = inputs.family

    def transform(px: torch.Tensor) -> torch.Tensor:
        return form.transform(px, params)

    images = fam.per_image(inputs.pixel_values, inputs.vision)
    pixels = fam.join([fam.model.map_pixels(px, transform, model.config) for px in images])
    return encoder_outputs(model, inputs, pixels)


def avc_image_attention(
    attentions: tuple[torch.Tensor, ...], positions: torch.Tensor
) -> torch.Tensor:
    """``(layers, image_tokens)``: head-mean attention of the last prompt token."""
    return torch.stack([a[0, :, -1, positions].float().mean(dim=0) for a in attentions])


def _avc_contrast(encoded: Any, prefill_out: Any, inputs: PromptInputs, params: Any, info: dict):  # noqa: ANN202
    """The clean encoding with every non-blind image token's features replaced (zeros
    or ones), which the forward splices as the masked embeddings; deepstack features
    of those tokens are zeroed (``decoding.families.QWEN3_VL`` deviations)."""
    attn = avc_image_attention(prefill_out.attentions, inputs.image_positions)
    blind = avc_core.blind_tokens(attn, params.gamma, params.lamb)
    info["avc_layers"] = avc_core.select_layers(attn.double().sum(-1), params.gamma).tolist()
    info["avc_blind"] = torch.nonzero(blind).flatten().tolist()
    order = torch.arange(blind.numel(), device=blind.device)

    def edit(feats: torch.Tensor, rows: torch.Tensor, deep: bool) -> torch.Tensor:
        if deep:
            out = feats.clone()
            out[~blind] = 0.0
            return out
        return avc_core.mask_image_embeddings(feats, rows, blind, params.mask)

    return _with_rows(encoded, order, edit)


def vision_qk(
    model: Any, pixel_values: torch.Tensor, feature_layer: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q``/``k`` projections ``(tokens, C)`` of the feature layer of the vision tower
    (forward hooks on ``q_proj``/``k_proj``, as the official DAMRO code)."""
    tower = model.model.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    if feature_layer is None:
        feature_layer = model.config.vision_feature_layer
    idx = damro_core.feature_layer_index(feature_layer, len(layers))
    attn = layers[idx].self_attn
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("q", o)),
        attn.k_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("k", o)),
    ]
    try:
        model.model.vision_tower(pixel_values, output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    return seen["q"][0], seen["k"][0]


def _damro_contrast(
    model: Any,
    inputs: PromptInputs,
    encoded: Any,
    top_k: int,
    profile: ModelProfile,
    info: dict,
) -> tuple[PromptInputs, Any]:
    """The prompt with each image's run shortened to its ``top_k`` [CLS]-outlier tokens,
    in descending score order, and their features (one image at a time, as the served
    engine scores each image item)."""
    ids = inputs.input_ids[0]
    runs = image_runs(inputs.image_positions)
    pixels = inputs.family.per_image(inputs.pixel_values, inputs.vision)
    parts, feats, end, chosen = [], [], 0, []
    for (first, last), px, f in zip(runs, pixels, encoded.pooler_output, strict=True):
        q, k = vision_qk(model, inputs.family.cls_pixels(px), profile.vision_feature_layer)
        outliers = damro_core.top_outliers(damro_core.cls_patch_attention(q, k), top_k)
        chosen.append(outliers.tolist())
        image = torch.full((len(outliers),), inputs.image_token_id, dtype=ids.dtype)
        parts += [ids[end:first], image.to(ids.device)]
        feats.append(f[outliers])
        end = last + 1
    info["damro_outliers"] = chosen[0] if len(chosen) == 1 else chosen
    short = torch.cat([*parts, ids[end:]]).unsqueeze(0)
    out = repeat_encoding(encoded, 1)
    out.pooler_output = tuple(feats)
    return inputs.with_ids(short), out


def image_runs(positions: torch.Tensor) -> list[tuple[int, int]]:
    """``[first, last]`` of each contiguous run of image positions (one per image)."""
    pos = positions.tolist()
    runs: list[tuple[int, int]] = []
    for p in pos:
        if runs and p == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    return runs


# --- VAR -------------------------------------------------------------------------------


class VARState:
    """Per-request VAR state: sinks per layer from the prefill, and the attention edits."""

    def __init__(self, model: Any, inputs: PromptInputs, params: Any, profile: ModelProfile):
        self.params = params
        self.tau = params.tau if params.tau is not None else profile.sink_tau
        self.dims = profile.sink_dims
        self.layers = [
            i for i in profile.var_layer_set() if i < len(decoder_attention_modules(model))
        ]
        self.prompt_len = inputs.length
        self.image = torch.zeros(inputs.length, dtype=torch.bool, device=inputs.input_ids.device)
        self.image[inputs.image_positions] = True
        self.image_end = int(inputs.image_positions[-1]) if inputs.image_positions.numel() else -1
        self.sinks: dict[int, torch.Tensor] = {}
        self.edited_rows = 0
        self._handles: list[Any] = []
        decoder = inputs.family.decoder_layers(model)
        for i in self.layers:
            self._handles.append(
                decoder[i].register_forward_pre_hook(self._probe(i), with_kwargs=True)
            )
            decoder_attention_modules(model)[i]._lucid_edit = self._edit(i)

    def _probe(self, layer: int):  # noqa: ANN202
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] == self.prompt_len and layer not in self.sinks:
                self.sinks[layer] = var_core.sink_mask(hidden[0], self.dims, self.tau)

        return hook

    def _edit(self, layer: int):  # noqa: ANN202
        def edit(probs: torch.Tensor, module: Any) -> torch.Tensor:
            sinks = self.sinks.get(layer)
            if sinks is None or self.params.p == 0.0:
                return probs
            keys, queries = probs.shape[-1], probs.shape[-2]
            pad = keys - self.prompt_len
            sink_k = torch.nn.functional.pad(sinks, (0, pad))
            image_k = torch.nn.functional.pad(self.image, (0, pad))
            rows = var_core.select_rows(
                probs, image_k, sink_k & image_k, self.params.rho, self.params.summ
            )
            qpos = torch.arange(keys - queries, keys, device=probs.device)
            rows = rows & (qpos > self.image_end)  # prefill: text after the image only
            self.edited_rows += int(rows.sum())
            return var_core.redistribute(probs, rows, sink_k, image_k, self.params.p)

        return edit

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def summary(self) -> dict[str, Any]:
        return {
            "var_tau": self.tau,
            "var_layers": self.layers,
            "var_sinks": {i: torch.nonzero(s).flatten().tolist() for i, s in self.sinks.items()},
            "var_edited_rows": self.edited_rows,
        }


# --- the loop --------------------------------------------------------------------------


@torch.no_grad()
def reference_generate(
    model: Any,
    processor: Any,
    image: Any,
    prompt: str,
    decoding: Any = None,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    profile: ModelProfile | None = None,
    forced_tokens: list[int] | None = None,
    ignore_eos: bool = False,
) -> ReferenceResult:
    """Generate one answer with ``decoding`` (a raw ``decoding`` dict, ``None`` for
    ``none``, or a resolved :class:`~decoding.strategies.Decoding`).

    ``temperature == 0`` is greedy; otherwise sampling with ``top_p`` from a generator
    seeded with ``seed`` (0 if None). Generation stops at EOS or ``max_new_tokens``;
    with ``ignore_eos`` (vLLM's sampling parameter of that name) only at the latter.
    ``forced_tokens`` imposes the answer (teacher forcing, not for ``opera``): the result
    then reports each imposed token's log-probability under the reference distribution.
    Sampling options a strategy rejects at admission raise
    :class:`~decoding.strategies.DecodingParamError` here too.
    """
    dec = _decoding(decoding)
    name, params = dec.name, dec.params
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    # The same sampling checks as at admission (OPERA does not sample).
    dec.strategy.check_request(params, {"temperature": temperature, "top_p": top_p})
    if dec.strategy.needs_image and image is None:
        raise ValueError(f"strategy {name!r} needs an image")
    undefined = reference_family(model.config).model.undefined
    if name in undefined:
        raise ValueError(f"strategy {name!r} is not available on this model: {undefined[name]}")
    profile = profile or profile_for(model.config)
    inputs = encode(model, processor, image, prompt, profile.image_token_id)
    stop = set() if ignore_eos else eos_ids(model, processor)
    info: dict[str, Any] = {}
    if dec.strategy.family == Family.BEAM_SEARCH:
        from decoding.reference.opera import opera_generate

        with lucid_attention(model):
            tokens, logprobs, margins, finish, info = opera_generate(
                model, inputs, params, stop, max_new_tokens
            )
    else:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
        with lucid_attention(model):
            tokens, logprobs, margins, finish = _decode(
                model,
                inputs,
                dec.strategy,
                params,
                profile,
                stop,
                max_new_tokens,
                temperature,
                top_p,
                generator,
                info,
                forced_tokens,
            )
    return ReferenceResult(
        strategy=name,
        params=params.model_dump(),
        prompt_ids=inputs.input_ids[0].tolist(),
        token_ids=tokens,
        text=processor.tokenizer.decode(tokens, skip_special_tokens=True),
        logprobs=logprobs,
        margins=margins,
        finish_reason=finish,
        info=info,
    )


def _decode(
    model: Any,
    inputs: PromptInputs,
    strategy: type[Strategy],
    params: Any,
    profile: ModelProfile,
    stop: set[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator,
    info: dict,
    forced: list[int] | None = None,
) -> tuple[list[int], list[float], list[float], str]:
    encoded = _clean(model, inputs)
    clean = Branch(model, inputs, encoded)
    # The edit is chosen by the strategy's family and its own parameters, not by the
    # served path's engine settings: the reference stays an independent oracle.
    edits = strategy.family == Family.ATTENTION_EDIT
    var_state = VARState(model, inputs, params, profile) if edits else None
    form = strategy.contrast if strategy.family == Family.CONTRASTIVE else None
    try:
        logits, out = clean.prefill(output_attentions=isinstance(form, BlindTokens))
        contrast: Branch | None = None
        alpha = params.alpha if form is not None else 0.0
        c_inputs, c_encoded = inputs, encoded
        if isinstance(form, BlindTokens):  # blind tokens are reported even when alpha is 0
            c_encoded = _avc_contrast(encoded, out, inputs, params, info)
        elif isinstance(form, OutlierTokens):
            top_k = form.count(params)
            c_inputs, c_encoded = _damro_contrast(model, inputs, encoded, top_k, profile, info)
        elif isinstance(form, PixelContrast) and alpha != 0.0:
            c_encoded = _pixel_contrast(model, inputs, form, params)
        del out
        c_logits = None
        if alpha != 0.0:
            contrast = Branch(model, c_inputs, c_encoded)
            c_logits, _ = contrast.prefill()
        tokens: list[int] = []
        logprobs: list[float] = []
        margins: list[float] = []
        finish = "length"
        if forced is not None:
            max_new_tokens = min(max_new_tokens, len(forced))
        for step in range(max_new_tokens):
            if contrast is not None:
                scores = contrast_logits(logits, c_logits, alpha, params.beta)
            elif form is not None:
                scores = contrast_logits(logits, logits, 0.0, params.beta)
            else:
                scores = logits
            if forced is not None:
                choice: Choice = forced_choice(scores, forced[step], temperature, top_p)
            else:
                choice = choose(scores, temperature, top_p, generator)
            tokens.append(choice.token)
            logprobs.append(choice.logprob)
            margins.append(choice.margin)
            if choice.token in stop:
                finish = "stop"
                break
            if len(tokens) == max_new_tokens:
                break
            logits = clean.step(choice.token)
            if contrast is not None:
                c_logits = contrast.step(choice.token)
        if var_state is not None:
            info.update(var_state.summary())
        return tokens, logprobs, margins, finish
    finally:
        if var_state is not None:
            var_state.close()
