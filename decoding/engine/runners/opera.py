"""``opera``: OPERA's beam search, orchestrated here, every forward pass in the engine.

Like vLLM's own beam search (``entrypoints/generate/beam_search/online.py``), the search
runs in the API process and each step is a set of one-token engine requests that resubmit
the prompt plus a beam; the prefix cache keeps the prompt's KV, so a rollback is a
truncation followed by resubmission. The procedure is :mod:`.opera_search`; the
engine-side look-ahead probe and its in-band channel are
:mod:`decoding.engine.worker.opera`.

Request semantics:

* the answer is known only when the search ends (a rollback can rewrite any token), so a
  streamed request receives the whole answer as one chunk at the end;
* ``n`` (at most ``num_beams``) returns the ``n`` best finished hypotheses, best first;
* ``max_tokens`` bounds the answer; EOS and ``stop_token_ids`` end a hypothesis (they are
  the beam search's end-of-sequence tokens, ``ignore_eos`` drops EOS); ``stop`` strings
  cut the returned answers at their first occurrence;
* ``logprobs`` are the best hypothesis's per-token step scores (log-probability plus
  penalty), as in the reference engine; no alternatives are reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from vllm.exceptions import VLLMValidationError
from vllm.logprobs import FlatLogprobs, Logprob
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams

from decoding.engine.runner import Event, ExtraTokens, RunContext, StrategyFault, register_runner
from decoding.engine.runners.opera_search import Seq, Top, opera_search
from decoding.engine.runners.pairs import extend
from decoding.engine.worker import opera as probe_codec
from decoding.strategies.base import StrategyParams
from decoding.wire import ENGINE_KEY, OperaProbe


def image_spans(ids: list[int], image_token: int) -> list[list[int]]:
    """``[start, end)`` runs of the image placeholder in the prompt."""
    spans: list[list[int]] = []
    for i, tok in enumerate(ids):
        if tok != image_token:
            continue
        if spans and spans[-1][1] == i:
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return spans


class EngineOracle:
    """The search's engine requests for one answer; counts their extra forward tokens."""

    def __init__(
        self,
        ctx: RunContext,
        prompt: dict,
        request_id: str,
        probe_config: OperaProbe,
        kwargs: dict[str, Any],
    ) -> None:
        self.ctx, self.prompt, self.request_id = ctx, prompt, request_id
        self.candidates = probe_config.candidates
        self.extra = {ENGINE_KEY: probe_config.to_json()}
        self.stall = ctx.stall_token()
        self.kwargs = kwargs
        self.serial = 0

    def _params(self, logprobs: int, probe: bool) -> SamplingParams:
        return SamplingParams(
            max_tokens=1,
            temperature=0.0,
            logprobs=logprobs,
            flat_logprobs=True,  # plain lists: no Logprob object per returned entry
            skip_clone=True,  # built per request, never shared: no deep copy in vLLM
            detokenize=False,
            ignore_eos=True,
            output_kind=RequestOutputKind.FINAL_ONLY,
            extra_args=dict(self.extra) if probe else None,
        )

    async def _one(self, seq: Seq, sp: SamplingParams) -> RequestOutput:
        self.serial += 1
        final = None
        gen = self.ctx.engine.generate(
            extend(self.prompt, seq), sp, f"{self.request_id}-opera{self.serial}", **self.kwargs
        )
        try:
            async for out in gen:
                final = out
        finally:
            await gen.aclose()
        reason = final.outputs[0].finish_reason if final is not None and final.outputs else None
        if reason in (None, "abort", "error"):
            raise RuntimeError(f"OPERA step request for {self.request_id} did not complete")
        return final

    async def _all(self, jobs: list[tuple[Seq, SamplingParams]]) -> list[RequestOutput]:
        tasks = [asyncio.create_task(self._one(seq, sp)) for seq, sp in jobs]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            # On cancellation (client gone) or a failed request: abort the rest.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _count(self, outs: list[RequestOutput], kind: ExtraTokens) -> None:
        computed = sum(len(o.prompt_token_ids or []) - int(o.num_cached_tokens or 0) for o in outs)
        self.ctx.extra_tokens(kind, computed)

    async def probes(self, seqs: list[Seq], rollback: bool) -> dict[Seq, probe_codec.Probe]:
        jobs = [
            (s, self._params(probe_codec.logprobs_needed(self.candidates, len(s) - 1), True))
            for s in seqs
        ]
        outs = await self._all(jobs)
        self._count(outs, ExtraTokens.ROLLBACK if rollback else ExtraTokens.CANDIDATE)
        got = {}
        for seq, out in zip(seqs, outs, strict=True):
            o = out.outputs[0]
            if int(o.token_ids[0]) == self.stall:
                raise StrategyFault(self.ctx.name, "the engine did not probe a look-ahead")
            lps = _first_position(o.logprobs)
            got[seq] = probe_codec.decode(
                int(o.token_ids[0]), lps, self.candidates, probe_codec.fields_for(len(seq) - 1)
            )
        return got

    async def tops(self, seqs: list[Seq], counts: list[int], rollback: bool) -> list[Top]:
        want: dict[Seq, int] = {}
        for seq, count in zip(seqs, counts, strict=True):
            want[seq] = max(count, want.get(seq, 0))
        unique = list(want)
        outs = await self._all([(s, self._params(want[s], False)) for s in unique])
        if rollback:
            self._count(outs, ExtraTokens.ROLLBACK)
        got = {}
        for seq, out in zip(unique, outs, strict=True):
            lps = sorted(
                ((lp, i) for i, lp in _first_position(out.outputs[0].logprobs).items()),
                key=lambda p: (-p[0], p[1]),
            )[: want[seq]]
            got[seq] = Top([i for _, i in lps], [lp for lp, _ in lps])
        return [got[s] for s in seqs]


def _first_position(logprobs: Any) -> dict[int, float]:
    """``{token id: logprob}`` of the only sampled position."""
    if isinstance(logprobs, FlatLogprobs):
        a, b = logprobs.start_indices[0], logprobs.end_indices[0]
        return dict(zip(logprobs.token_ids[a:b], logprobs.logprobs[a:b], strict=True))
    return {int(i): float(lp.logprob) for i, lp in logprobs[0].items()}


def end_tokens(ctx: RunContext, sp: SamplingParams) -> set[int]:
    """The beam search's end-of-sequence tokens: EOS (tokenizer and generation config)
    unless ``ignore_eos``, plus ``stop_token_ids``."""
    stop = {int(t) for t in sp.stop_token_ids or []}
    if not sp.ignore_eos:
        tokenizer = ctx.engine.tokenizer
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            stop.add(int(tokenizer.eos_token_id))
        eos = ctx.engine.model_config.try_get_generation_config().get("eos_token_id")
        if eos is not None:
            stop.update([eos] if isinstance(eos, int) else eos)
    return stop


def _cut_at_stop(
    tokens: list[int], steps: list[float], sp: SamplingParams, tokenizer: Any
) -> tuple[list[int], list[float], str | None]:
    """Shortest prefix whose text contains a stop string (and that string), if any."""
    if not sp.stop or tokenizer is None:
        return tokens, steps, None
    for i in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:i], skip_special_tokens=sp.skip_special_tokens)
        hit = next((s for s in sp.stop if s in text), None)
        if hit is not None:
            return tokens[:i], steps[:i], hit
    return tokens, steps, None


def _completion(
    index: int,
    tokens: list[int],
    steps: list[float],
    stop: set[int],
    sp: SamplingParams,
    tokenizer: Any,
) -> CompletionOutput:
    tokens, steps, stop_str = _cut_at_stop(tokens, steps, sp, tokenizer)
    text = ""
    if tokenizer is not None:
        text = tokenizer.decode(tokens, skip_special_tokens=sp.skip_special_tokens)
        if stop_str is not None and not sp.include_stop_str_in_output:
            text = text[: text.find(stop_str)]
    finish, reason = "length", None
    if stop_str is not None:
        finish, reason = "stop", stop_str
    elif tokens and tokens[-1] in stop:
        finish, reason = "stop", tokens[-1]
    logprobs = None
    if sp.logprobs is not None:
        logprobs = [
            {tok: Logprob(step, 1, tokenizer.decode([tok]) if tokenizer is not None else None)}
            for tok, step in zip(tokens, steps, strict=True)
        ]
    return CompletionOutput(
        index=index,
        text=text,
        token_ids=tokens,
        cumulative_logprob=float(sum(steps)),
        logprobs=logprobs,
        finish_reason=finish,
        stop_reason=reason,
    )


def best_hypotheses(state: Any, n: int) -> list[tuple[list[int], list[float]]]:
    """The ``n`` best finished hypotheses, best first (running beams fill any gap); the
    first is :meth:`decoding.cores.beam.BeamState.best`."""
    order = sorted(range(state.num_beams), key=lambda i: -float(state.finished_scores[i]))
    done = [(state.finished[i], state.finished_steps[i]) for i in order if state.finished_flags[i]]
    running = list(zip(state.running, state.running_steps, strict=True))
    return [(list(t), list(s)) for t, s in [*done, *running][:n]]


@register_runner("opera")
async def run(
    ctx: RunContext,
    prompt: Any,
    sampling_params: SamplingParams,
    request_id: str,
    params: StrategyParams,
    **kwargs: Any,
) -> AsyncGenerator[RequestOutput, None]:
    p: Any = params
    sp = sampling_params
    config = ctx.engine.model_config
    vocab = config.get_vocab_size()
    ids = list(prompt["prompt_token_ids"])
    max_new = sp.max_tokens or max(1, config.max_model_len - len(ids))
    if sp.n > p.num_beams:
        raise VLLMValidationError(
            f"strategy 'opera' returns at most num_beams={p.num_beams} answers, got n={sp.n}",
            parameter="n",
            value=sp.n,
        )
    need = probe_codec.logprobs_needed(p.num_candidates, max_new - 1)
    limit = config.max_logprobs if config.max_logprobs >= 0 else vocab
    if (p.alpha != 0.0 or p.rollback) and need > min(limit, vocab):
        raise VLLMValidationError(
            f"strategy 'opera' returns each look-ahead's attention over the answer as "
            f"{need} log-probabilities for max_tokens={max_new}, more than this server "
            f"allows ({min(limit, vocab)}: --max-logprobs and the vocabulary); lower "
            f"max_tokens",
            parameter="max_tokens",
            value=max_new,
        )
    probe = OperaProbe(
        strategy=ctx.name,
        layer=int(config.hf_text_config.num_hidden_layers) - 1,
        prompt_len=len(ids),
        image=tuple((a, b) for a, b in image_spans(ids, ctx.image_token())),
        candidates=p.num_candidates,
    )
    stop = end_tokens(ctx, sp)
    oracle = EngineOracle(ctx, prompt, request_id, probe, kwargs)
    result = await opera_search(
        oracle, p, stop, max_new, vocab, on_rollback=lambda: ctx.event(Event.ROLLBACK)
    )
    tokenizer = ctx.engine.tokenizer
    outputs = [
        _completion(i, tokens, steps, stop, sp, tokenizer)
        for i, (tokens, steps) in enumerate(best_hypotheses(result.state, sp.n))
    ]
    yield RequestOutput(
        request_id=request_id,
        prompt=prompt.get("prompt"),
        prompt_token_ids=ids,
        prompt_logprobs=None,
        outputs=outputs,
        finished=True,
    )
