"""The API-side half of contrastive decoding (VCD, DAMRO, AVC): one request pair per answer.

For each answer the runner submits the *main* request (the user's input) and the
*contrast* request (the strategy's contrast input, built by the strategy module), tagged
with one ``pair`` id in the engine settings; inside the engine
(:mod:`decoding.engine.worker.contrast`) both rows get the contrasted scores and vLLM's
sampler draws the same token for both. The runner streams the main request's output to
the serving layer in the form it asked for (delta, cumulative or final only).

When the engine could not co-schedule the pair, both requests emit the stall token
(the image placeholder id). The runner then cuts the answer before the stall, aborts
both requests and starts a new pair from the prompt plus the tokens decided so far
(the prefix cache makes that a short prefill); ``lucid:cd_uncoupled_steps_total`` counts
these restarts. ``n > 1`` runs ``n`` pairs side by side.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams

from decoding.engine.runner import Event, ExtraTokens, RunContext, StrategyFault, register_runner
from decoding.engine.runners.contrast_inputs import Contrast, build
from decoding.strategies.base import StrategyParams
from decoding.wire import ENGINE_KEY, PairSettings

#: Restarts in a row without a decided token before the pair is taken as not coupled by
#: the engine (a missing hook stalls every step; a scheduling stall clears on restart).
MAX_IDLE_RESTARTS = 8


def extend(prompt: dict, tokens: Sequence[int]) -> dict:
    """The same multimodal input with ``tokens`` appended to its prompt (the prefix cache
    then reuses the prompt's KV)."""
    if not tokens:
        return prompt
    out = dict(prompt)
    out["prompt_token_ids"] = [*prompt["prompt_token_ids"], *tokens]
    out.pop("prompt", None)
    return out


def _cut(o: CompletionOutput, at: int, stall_text: str) -> CompletionOutput:
    """The part of a delta before its first stall token."""
    text = o.text.split(stall_text)[0] if stall_text else o.text
    logprobs = o.logprobs[:at] if o.logprobs is not None else None
    return dataclasses.replace(
        o,
        token_ids=list(o.token_ids)[:at],
        text=text,
        logprobs=logprobs,
        finish_reason=None,
        stop_reason=None,
    )


class _Answer:
    """One of the ``n`` answers: runs pairs until the main request finishes unstalled."""

    def __init__(
        self,
        ctx: RunContext,
        prompt: dict,
        contrast: Contrast | None,
        sp: SamplingParams,
        request_id: str,
        index: int,
        seed: int | None,
        params: StrategyParams,
        stall: int,
        stall_text: str,
        kwargs: dict[str, Any],
    ) -> None:
        self.ctx, self.prompt, self.contrast, self.sp = ctx, prompt, contrast, sp
        self.request_id, self.index, self.seed, self.params = request_id, index, seed, params
        self.stall, self.stall_text, self.kwargs = stall, stall_text, kwargs
        self.tokens: list[int] = []

    def _params(self, attempt: int, role: str) -> SamplingParams:
        sp = self.sp.clone()
        sp.n = 1
        sp.output_kind = RequestOutputKind.DELTA
        sp.max_tokens = sp.max_tokens - len(self.tokens) if sp.max_tokens else None
        sp.min_tokens = max(0, sp.min_tokens - len(self.tokens))
        # The seed depends on the tokens already decided, not on the attempt: a pair that
        # restarts before its first token (the usual case: the two requests reached the
        # engine in different steps) replays exactly the stream it would have drawn.
        done = len(self.tokens)
        sp.seed = None if self.seed is None else (self.seed + 1_000_003 * done) % 2**63
        pair = f"{self.request_id}/{self.index}/{attempt}"
        if role != "contrast":
            p = self.params
            cfg = PairSettings(self.ctx.name, pair, role, p.alpha, p.beta)  # type: ignore[attr-defined, arg-type]
        else:
            assert self.contrast is not None
            cfg = PairSettings(
                self.ctx.name, pair, "contrast", contrast=self.contrast.engine,
                blind=self.contrast.blind,
            )  # fmt: skip
            if self.contrast.full_prefill:
                sp.skip_reading_prefix_cache = True
        sp.extra_args = {**(sp.extra_args or {}), ENGINE_KEY: cfg.to_json()}
        if role == "contrast":
            # Same sampler inputs as main (it must draw the same token); one token of
            # slack so that it never finishes first; no text, logprobs or stop strings.
            sp.max_tokens = None if sp.max_tokens is None else sp.max_tokens + 1
            sp.logprobs = None
            sp.stop = []
            sp.detokenize = False
            sp.output_kind = RequestOutputKind.FINAL_ONLY
        return sp

    async def run(self) -> AsyncGenerator[tuple[CompletionOutput, bool], None]:
        engine, attempt, idle = self.ctx.engine, 0, 0
        while True:
            suffix = f"{self.index}.{attempt}"
            helper = None
            if self.contrast is not None:
                con = engine.generate(
                    extend(self.contrast.prompt, self.tokens),
                    self._params(attempt, "contrast"),
                    f"{self.request_id}-contrast{suffix}",
                    **self.kwargs,
                )
                helper = asyncio.create_task(_drain(con))
                self.ctx.extra_tokens(
                    ExtraTokens.CONTRAST_PREFILL,
                    len(self.contrast.prompt["prompt_token_ids"]) + len(self.tokens),
                )
            role = "main" if self.contrast is not None else "solo"
            gen = engine.generate(
                extend(self.prompt, self.tokens),
                self._params(attempt, role),
                f"{self.request_id}-main{suffix}",
                **self.kwargs,
            )
            stalled, decided = False, len(self.tokens)
            try:
                async for out in gen:
                    o = out.outputs[0]
                    ids = list(o.token_ids)
                    if self.stall in ids:
                        o, stalled = _cut(o, ids.index(self.stall), self.stall_text), True
                    self.tokens += list(o.token_ids)
                    if helper is not None and o.token_ids:
                        self.ctx.extra_tokens(ExtraTokens.CONTRAST_DECODE, len(o.token_ids))
                    finished = out.finished and not stalled
                    if o.token_ids or finished:
                        yield o, finished
                    if stalled or out.finished:
                        break
            finally:
                await gen.aclose()
                if helper is not None:
                    helper.cancel()
                    await asyncio.gather(helper, return_exceptions=True)
            if not stalled:
                return
            self.ctx.event(Event.UNCOUPLED_STEP)
            idle = 0 if len(self.tokens) > decided else idle + 1
            if idle >= MAX_IDLE_RESTARTS:
                raise StrategyFault(
                    self.ctx.name, f"the contrastive pair stalled {idle} times without a token"
                )
            attempt += 1
            if self.sp.max_tokens and len(self.tokens) >= self.sp.max_tokens:
                return


async def _drain(gen: AsyncGenerator[RequestOutput, None]) -> None:
    try:
        async for _ in gen:
            pass
    finally:
        await gen.aclose()


@register_runner("pair")
async def run_contrastive(
    ctx: RunContext,
    prompt: dict,
    sp: SamplingParams,
    request_id: str,
    params: StrategyParams,
    **kwargs: Any,
) -> AsyncGenerator[RequestOutput, None]:
    """Serve one contrastive request; yields like ``EngineClient.generate``."""
    stall = ctx.stall_token()
    tokenizer = ctx.engine.tokenizer
    stall_text = "" if sp.skip_special_tokens or tokenizer is None else tokenizer.decode([stall])
    form = ctx.strategy.contrast
    assert form is not None, f"contrastive strategy {ctx.name!r} declares no contrast input"
    hf = ctx.engine.model_config.hf_config
    contrast = build(form, prompt, params, ctx.family(), hf) if params.alpha != 0 else None  # type: ignore[attr-defined]
    seed = sp.seed
    if seed is None and sp.temperature > 0:
        # Both requests of a pair must draw the same token: they share one seed.
        seed = random.getrandbits(62)
    answers = [
        _Answer(
            ctx,
            prompt,
            contrast,
            sp,
            request_id,
            i,
            None if seed is None else seed + i,
            params,
            stall,
            stall_text,
            kwargs,
        )
        for i in range(sp.n)
    ]
    async for out in _merge(answers, sp, request_id, prompt):
        yield out


async def _merge(
    answers: list[_Answer], sp: SamplingParams, request_id: str, prompt: dict
) -> AsyncGenerator[RequestOutput, None]:
    """Interleave the answers' deltas into RequestOutputs of the caller's kind."""
    queue: asyncio.Queue[tuple[int, CompletionOutput | None, bool, BaseException | None]]
    queue = asyncio.Queue()

    async def pump(answer: _Answer) -> None:
        try:
            async for o, done in answer.run():
                await queue.put((answer.index, o, done, None))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            await queue.put((answer.index, None, True, exc))
            raise
        else:
            await queue.put((answer.index, None, True, None))

    tasks = [asyncio.create_task(pump(a)) for a in answers]
    totals = [_Total(a.index) for a in answers]
    closed = [False] * len(answers)
    try:
        while not all(closed):
            index, o, done, exc = await queue.get()
            if exc is not None:
                raise exc
            if o is None:
                if closed[index]:
                    continue
                # Ended without a final delta (token budget spent on restarts).
                o = CompletionOutput(index, "", [], None, None, finish_reason="length")
            closed[index] = closed[index] or done or o.finish_reason is not None
            totals[index].add(o)
            finished = all(closed)
            if sp.output_kind == RequestOutputKind.DELTA:
                yield _output(request_id, prompt, [dataclasses.replace(o, index=index)], finished)
            elif sp.output_kind == RequestOutputKind.CUMULATIVE:
                yield _output(request_id, prompt, [totals[index].output()], finished)
        if sp.output_kind == RequestOutputKind.FINAL_ONLY:
            yield _output(request_id, prompt, [t.output() for t in totals], True)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Total:
    """Accumulates one answer's deltas (across restarts)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.last: CompletionOutput | None = None
        self.tokens: list[int] = []
        self.text = ""
        self.logprobs: list | None = None

    def add(self, o: CompletionOutput) -> None:
        self.tokens += list(o.token_ids)
        self.text += o.text
        if o.logprobs is not None:
            self.logprobs = [*(self.logprobs or []), *o.logprobs]
        self.last = o

    def output(self) -> CompletionOutput:
        assert self.last is not None
        cumulative = None
        if self.logprobs is not None:
            cumulative = sum(
                float(step[t].logprob) for step, t in zip(self.logprobs, self.tokens, strict=False)
            )
        return dataclasses.replace(
            self.last,
            index=self.index,
            token_ids=list(self.tokens),
            text=self.text,
            logprobs=self.logprobs,
            cumulative_logprob=cumulative,
        )


def _output(
    request_id: str, prompt: dict, outputs: list[CompletionOutput], finished: bool
) -> RequestOutput:
    return RequestOutput(
        request_id=request_id,
        prompt=prompt.get("prompt"),
        prompt_token_ids=list(prompt["prompt_token_ids"]),
        prompt_logprobs=None,
        outputs=outputs,
        finished=finished,
    )
