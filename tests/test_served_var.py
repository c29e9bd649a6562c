"""``var`` served inside vLLM: parity with the reference engine, isolation, parameters.

The probe cases are held-out scenes of the synthetic world whose prior partner is
absent, where VAR at its defaults changes a measured share of greedy answers. Every
parity check also compares, per generated token, the served log-probability and top-two
margin with the reference's, to a tolerance far below VAR's own effect on them, and
checks that the effect is there (reference VAR versus served ``none``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import openai
import pytest
import torch

from decoding.cores import var as var_core
from decoding.engine.runners import single as single_runner
from decoding.testing import parity
from decoding.wire import ENGINE_KEY, VarSettings, decode_engine

MAX_TOKENS = 32
VAR = {"strategy": "var"}
NONE = {"strategy": "none"}
#: Served and reference log-probabilities and margins of the same token agree to this
#: (nats): the kernels differ by ~1e-5 on the tiny checkpoint, VAR moves margins by 1e-3
#: to 1e-1.
LOGPROB_TOL = 2e-4
CASES = parity.cases(16)


@dataclass
class Answer:
    token_ids: list[int]
    logprobs: list[float]
    #: Top-two log-probability margin of each step.
    margins: list[float]


def _answer(resp: Any) -> Answer:
    content = resp.choices[0].logprobs.content
    return Answer(
        [int(t.token.split(":", 1)[1]) for t in content],
        [t.logprob for t in content],
        [t.top_logprobs[0].logprob - t.top_logprobs[1].logprob for t in content],
    )


def _of(ref: Any) -> Answer:
    return Answer(list(ref.token_ids), list(ref.logprobs), list(ref.margins))


def _request(served: Any, case: parity.Case, decoding: dict) -> dict[str, Any]:
    return parity.chat_request(served.model, case, decoding, MAX_TOKENS, top_logprobs=2)


def ask(served: Any, case: parity.Case, decoding: dict) -> Answer:
    client = served.client()
    return _answer(client.chat.completions.create(**_request(served, case, decoding)))


def ask_together(served: Any, jobs: list[tuple[parity.Case, dict]]) -> list[Answer]:
    """All ``jobs`` in flight at once."""

    async def main() -> list[Answer]:
        client = openai.AsyncOpenAI(base_url=served.base_url, api_key="test", max_retries=0)
        async with client:
            resps = await asyncio.gather(
                *(client.chat.completions.create(**_request(served, c, d)) for c, d in jobs)
            )
        return [_answer(r) for r in resps]

    return asyncio.run(main())


def gap(a: Answer, b: Answer) -> float:
    """Largest log-probability or margin difference over the common prefix of tokens."""
    diffs = [0.0]
    for t, u, lp_a, lp_b, m_a, m_b in zip(
        a.token_ids, b.token_ids, a.logprobs, b.logprobs, a.margins, b.margins, strict=False
    ):
        if t != u:
            break
        diffs += [abs(lp_a - lp_b), abs(m_a - m_b)]
    return max(diffs)


def check_parity(
    answers: list[Answer], refs: list[Any], label: str, cases: list[parity.Case] | None = None
) -> list[parity.Verdict]:
    cases = CASES if cases is None else cases
    verdicts = [
        parity.compare(c, a.token_ids, r) for c, a, r in zip(cases, answers, refs, strict=True)
    ]
    failures, ties = parity.judge(verdicts)
    print(f"VAR parity ({label}): {len(cases)} cases, {len(ties)} ties {parity.describe(ties)}")
    assert not failures, parity.describe(failures)
    for case, answer, ref, verdict in zip(cases, answers, refs, verdicts, strict=True):
        if verdict.equal:
            diff = gap(answer, _of(ref))
            assert diff < LOGPROB_TOL, (label, case, diff)
    return ties


@pytest.fixture(scope="module")
def refs(tiny_llava_dir) -> list[Any]:  # noqa: ANN001
    """The reference engine's VAR answers."""
    return [parity.reference(tiny_llava_dir, c, VAR, MAX_TOKENS) for c in CASES]


@pytest.fixture(scope="module")
def plain(served) -> list[Answer]:  # noqa: ANN001
    """The served ``none`` answers, one request at a time."""
    return [ask(served, c, NONE) for c in CASES]


#: Least numbers of the 16 probes on which the reference VAR edits attention rows (those
#: whose image holds visual sinks) and moves log-probabilities or margins by more than
#: 10 x LOGPROB_TOL. Measured on the recipe-5 tiny checkpoint: 10 and 5.
MIN_EDITED, MIN_MOVED = 8, 4


def test_reference_var_has_an_effect(refs, plain) -> None:  # noqa: ANN001
    # Precondition of the parity tests: VAR edits rows and moves log-probabilities and
    # margins far more than the served-versus-reference tolerance, on a measured share.
    edited = [var.info["var_edited_rows"] > 0 for var in refs]
    moved = [gap(_of(var), none) for var, none in zip(refs, plain, strict=True)]
    assert sum(edited) >= MIN_EDITED, edited
    assert sum(m > 10 * LOGPROB_TOL for m in moved) >= MIN_MOVED, moved


#: Least share of the probe answers VAR should change at its defaults, as on a real model;
#: the recipe-5 tiny checkpoint changes 0 of 16 (measured), hence the xfail below.
MIN_CHANGED = 0.1


@pytest.mark.xfail(
    strict=True,
    reason="recipe-5 lab checkpoint: VAR edits rows on 10 of the 16 probes and moves "
    "log-probabilities by 1e-3 to 0.16 nats, but changes 0 of 16 answers (measured)",
)
def test_defaults_change_a_share_of_answers(refs, plain) -> None:  # noqa: ANN001
    changed = [list(r.token_ids) != p.token_ids for r, p in zip(refs, plain, strict=True)]
    print(f"var: {sum(changed)}/{len(changed)} greedy answers changed")
    assert sum(changed) >= MIN_CHANGED * len(changed), changed


def test_var_parity_one_at_a_time(served, refs) -> None:  # noqa: ANN001
    answers = [ask(served, c, VAR) for c in CASES]
    check_parity(answers, refs, "one at a time")


def test_var_parity_in_flight_with_none(served, refs, plain) -> None:  # noqa: ANN001
    jobs = [job for c in CASES for job in ((c, VAR), (c, NONE))]
    answers = ask_together(served, jobs)
    check_parity(answers[0::2], refs, "16 in flight with 16 none")
    # Requests without VAR in the same batches are untouched.
    assert [a.token_ids for a in answers[1::2]] == [a.token_ids for a in plain]
    for mixed, alone in zip(answers[1::2], plain, strict=True):
        assert gap(mixed, alone) < 1e-4


def test_var_with_p_zero_is_none(served, plain) -> None:  # noqa: ANN001
    for case, alone in zip(CASES[:8], plain[:8], strict=True):
        got = ask(served, case, {"strategy": "var", "p": 0.0})
        assert got.token_ids == alone.token_ids
        assert got == alone  # no attention output was touched


def _stale_reference(monkeypatch, model_dir, case, sinks: dict[int, list[int]]):  # noqa: ANN001, ANN202
    """The reference answer for ``case`` computed with ``sinks`` instead of its own."""
    from decoding.reference import engine

    def probe(self, layer: int):  # noqa: ANN001, ANN202
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            if layer not in self.sinks:
                mask = torch.zeros(self.prompt_len, dtype=torch.bool)
                mask[sinks[layer]] = True
                self.sinks[layer] = mask

        return hook

    with monkeypatch.context() as m:
        m.setattr(engine.VARState, "_probe", probe)
        return parity.reference(model_dir, case, VAR, MAX_TOKENS)


def test_each_image_gets_its_own_sinks(served, refs, tiny_llava_dir, monkeypatch) -> None:  # noqa: ANN001
    # Two images with the same prompt, back to back through the same batch slot: the
    # first pair of probes with visual sinks on which the second answer would be
    # measurably different with the first's sinks (the precondition).
    pair = None
    sinky = [i for i, r in enumerate(refs) if r.info["var_edited_rows"] > 0]
    for a, b in ((a, b) for a in sinky for b in sinky if b > a):
        if CASES[a].prompt != CASES[b].prompt:
            continue
        sinks = refs[a].info["var_sinks"]
        if sinks != refs[b].info["var_sinks"]:
            stale = _stale_reference(monkeypatch, tiny_llava_dir, CASES[b], sinks)
            if gap(_of(stale), _of(refs[b])) > 10 * LOGPROB_TOL:
                pair = a, b
                break
    assert pair, "no two probes with the same prompt whose sinks matter"
    a, b = pair
    ref_a, ref_b = refs[a], refs[b]
    got_a, got_b = ask(served, CASES[a], VAR), ask(served, CASES[b], VAR)
    for got, ref in ((got_a, ref_a), (got_b, ref_b)):
        assert got.token_ids == ref.token_ids
        assert gap(got, _of(ref)) < LOGPROB_TOL


@pytest.mark.parametrize(
    ("decoding", "param"),
    [
        ({"strategy": "var", "p": 1.5}, "decoding.p"),
        ({"strategy": "var", "p": -0.1}, "decoding.p"),
        ({"strategy": "var", "rho": 2}, "decoding.rho"),
        ({"strategy": "var", "tau": 0}, "decoding.tau"),
        ({"strategy": "var", "summ": "high"}, "decoding.summ"),
        ({"strategy": "var", "alpha": 1.0}, "decoding.alpha"),
    ],
)
def test_bad_var_parameters_are_400(served, decoding: dict, param: str) -> None:  # noqa: ANN001
    with pytest.raises(openai.BadRequestError) as exc:
        served.client().chat.completions.create(
            model=served.model,
            messages=CASES[0].messages(),
            max_tokens=2,
            extra_body={"decoding": decoding},
        )
    assert exc.value.status_code == 400
    assert exc.value.body["param"] == param


def test_var_without_image_is_400(served) -> None:  # noqa: ANN001
    with pytest.raises(openai.BadRequestError) as exc:
        served.client().chat.completions.create(
            model=served.model,
            messages=[{"role": "user", "content": "Describe the image."}],
            max_tokens=2,
            extra_body={"decoding": VAR},
        )
    assert exc.value.body["param"] == "decoding.strategy"


# --- units -------------------------------------------------------------------------------


def test_runner_request_settings(tiny_llava_dir) -> None:  # noqa: ANN001
    from transformers import AutoConfig
    from vllm.sampling_params import SamplingParams

    from decoding.profiles import profile_for
    from decoding.strategies import get_strategy

    var = get_strategy("var")
    profile = profile_for(AutoConfig.from_pretrained(tiny_llava_dir))
    settings = var.engine_settings(var.Params(), profile, 4)
    assert settings == VarSettings(
        strategy="var", p=0.4, rho=0.5, summ=0.2, tau=6.0, dims=(17, 93), layers=(1, 2),
        image_token_id=4,
    )  # fmt: skip
    assert var.engine_settings(var.Params(tau=3.0), profile, 4).tau == 3.0
    # The last decoder layer is never edited: layers past the model's are dropped.
    assert var.engine_settings(var.Params(), profile, 2).layers == (1,)
    sp = SamplingParams(max_tokens=4, extra_args={"user_key": 1})
    prompt = {"prompt_token_ids": [1, 2], "cache_salt": "tenant"}
    new_prompt, new_sp = single_runner.engine_request(prompt, sp, settings, private_kv=True)
    # Sinks need the whole prompt computed; VAR's KV must never serve other requests.
    assert new_sp.skip_reading_prefix_cache is True
    assert new_prompt["cache_salt"] == f"tenant:{single_runner.SALT}"
    assert single_runner.engine_request({"prompt_token_ids": [1]}, sp, settings, True)[0][
        "cache_salt"
    ]
    assert new_sp.extra_args["user_key"] == 1
    assert decode_engine(new_sp.extra_args[ENGINE_KEY]) == settings
    # The caller's objects are not modified.
    assert sp.extra_args == {"user_key": 1} and prompt["cache_salt"] == "tenant"


def _var_config(p: float = 0.4, rho: float = 0.5, summ: float = 0.2) -> VarSettings:
    return VarSettings(
        strategy="var", p=p, rho=rho, summ=summ, tau=6.0, dims=(1, 5), layers=(1, 2),
        image_token_id=9,
    )  # fmt: skip


def test_worker_step_on_a_paged_cache() -> None:
    """Probes and edits of one mixed step (GQA, paged cache, prefill and decode rows)
    against the core maths applied per request, head and query."""
    from types import SimpleNamespace

    from decoding.engine.worker import var as worker
    from decoding.engine.worker.rows import Row

    gen = torch.Generator().manual_seed(1)
    heads, kv_heads, dim, block, hidden = 4, 2, 8, 4, 64
    # (prompt, generated so far, config): a decode row, a prefill row, a p = 0 row and a
    # decode row without visual sinks.
    specs = [
        ([1, 2] + [9] * 7 + [3, 4, 5], 3, _var_config()),
        ([1] + [9] * 6 + [6, 7, 8], 0, _var_config(p=0.8, rho=0.2, summ=0.1)),
        ([1] + [9] * 6 + [6, 7], 1, _var_config(p=0.0)),
        ([1, 9, 9, 9, 2], 2, _var_config(p=1.0, rho=0.0, summ=0.0)),
    ]
    rows = {i: Row(cfg, prompt, [0] * done) for i, (prompt, done, cfg) in enumerate(specs)}
    seq = [len(prompt) + done for prompt, done, _ in specs]
    n_query = [1 if done else len(prompt) for prompt, done, _ in specs]
    starts = [0]
    for n in n_query:
        starts.append(starts[-1] + n)
    # Paged cache in the FlashAttention layout [blocks, kv_heads, block, 2 * head_dim] (each
    # token's key and value side by side): scattered blocks; every slot no request owns
    # holds NaN.
    n_blocks = 24
    order = torch.randperm(n_blocks, generator=gen).tolist()
    table = torch.zeros(len(specs), 6, dtype=torch.int32)
    cache = torch.full((n_blocks, kv_heads, block, 2 * dim), float("nan"))
    keys, values = [], []
    for r, length in enumerate(seq):
        need = -(-length // block)
        table[r, :need] = torch.tensor([order.pop() for _ in range(need)])
        k, v = torch.randn(2, length, kv_heads, dim, generator=gen)
        keys.append(k)
        values.append(v)
        for pos in range(length):
            b, o = int(table[r, pos // block]), pos % block
            cache[b, :, o] = torch.cat([k[pos], v[pos]], dim=-1)
    meta = SimpleNamespace(
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq, dtype=torch.int32),
        block_table=table,
    )
    # Decode rows: sinks known from their prefill.
    known = {0: [0, 3, 5, 11], 2: [0, 2], 3: [0]}
    for r, positions in known.items():
        st = worker._state(rows[r], torch.device("cpu"))
        st["sinks"][:, positions] = True
        st["probed"] = len(rows[r].prompt)
    plan = worker.build_plan(rows, meta, torch.device("cpu"))
    assert plan is not None and len(plan.edits) == 2  # decoding rows, the prefill row
    assert sorted(plan.probes) == [1, 2] and len(plan.probes[1]) == 1  # the prefill row
    # p = 0 is never edited, nor a decoding request without visual sinks (row 3).
    assert [e.tokens.shape for e in plan.edits] == [(1, 1), (1, 3)]
    assert [e.shared for e in plan.edits] == [True, False]
    # The prefill row's residual stream: massive activations at positions 0, 2 and 4.
    total = starts[-1]
    hidden_states = torch.randn(total, hidden, generator=gen)
    residual = torch.randn(total, hidden, generator=gen)
    for pos in (0, 2, 4):
        hidden_states[starts[1] + pos, 5] = 40.0
    query = torch.randn(total, heads, dim, generator=gen)
    # What the stock kernel wrote: plain causal attention of each token over its request.
    out = torch.empty(total, heads, dim)
    for r in range(len(specs)):
        for tok in range(starts[r], starts[r + 1]):
            pos = seq[r] - (starts[r + 1] - tok)
            for h in range(heads):
                kv = h // (heads // kv_heads)
                probs = torch.softmax(query[tok, h] @ keys[r][: pos + 1, kv].T * dim**-0.5, -1)
                out[tok, h] = probs @ values[r][: pos + 1, kv]
    before = out.clone()

    class Impl:
        scale = dim**-0.5

        def split_cache(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return kv.split(dim, dim=-1)

    layer = SimpleNamespace(layer_name="language_model.model.layers.1.self_attn.attn")
    worker._CURRENT = plan
    try:
        worker._probe_hook(1)(None, (None, hidden_states, residual))
        worker.attend(Impl(), layer, query, cache, meta, out)
    finally:
        worker._CURRENT = None
    residual_in = (hidden_states + residual)[starts[1] : starts[2]]
    want_sinks = var_core.sink_mask(residual_in, [1, 5], 6.0)
    assert torch.nonzero(want_sinks).flatten().tolist() == [0, 2, 4]
    assert torch.equal(rows[1].state["sinks"][0], want_sinks)
    known[1] = [0, 2, 4]

    edited = 0
    for r, (prompt, _, cfg) in enumerate(specs):
        image_end = max(i for i, t in enumerate(prompt) if t == 9)
        image = torch.tensor([t == 9 for t in prompt] + [False] * (seq[r] - len(prompt)))
        sinks = torch.zeros(seq[r], dtype=torch.bool)
        sinks[known[r]] = True
        for tok in range(starts[r], starts[r + 1]):
            pos = seq[r] - (starts[r + 1] - tok)
            for h in range(heads):
                got, old = out[tok, h], before[tok, h]
                if cfg.p == 0.0 or pos <= image_end:
                    assert torch.equal(got, old)
                    continue
                k = keys[r][: pos + 1, h // (heads // kv_heads)]
                v = values[r][: pos + 1, h // (heads // kv_heads)]
                probs = torch.softmax(query[tok, h] @ k.T * Impl.scale, dim=-1)
                img, snk = image[: pos + 1], sinks[: pos + 1]
                sel = var_core.select_rows(probs, img, snk & img, cfg.rho, cfg.summ)
                if not bool(sel) or not bool((probs * (img & ~snk)).sum() > 0):
                    assert torch.equal(got, old)
                    continue
                edited += 1
                new = var_core.redistribute(probs, sel, snk, img, cfg.p) @ v
                torch.testing.assert_close(got, new, rtol=1e-5, atol=1e-5)
    assert edited >= 4


@pytest.mark.parametrize("isa", ["vec", "vec16"])
def test_cpu_cache_reads_back_what_the_kernel_wrote(isa: str) -> None:
    """The CPU backend's cache layout as the attention hooks read it (keys are stored
    transposed within a block)."""
    from types import SimpleNamespace

    import vllm._custom_ops as ops

    from decoding.engine.worker.attention import LucidCPUAttentionImpl

    blocks, kv_heads, block, dim = 3, 2, 16, 32
    kv_cache = torch.zeros(blocks, kv_heads, block, 2 * dim)
    key_cache, value_cache = kv_cache.view(blocks, kv_heads, 2 * block, dim).chunk(2, dim=2)
    keys, values = torch.randn(2, 20, kv_heads, dim)
    slots = torch.arange(20) + block  # from block 1 on
    ops.cpu_attn_reshape_and_cache(keys, values, key_cache, value_cache, slots, isa)
    impl = SimpleNamespace(_lucid_isa=isa)
    k, v = LucidCPUAttentionImpl.split_cache(impl, kv_cache)  # (blocks, kv_heads, block, dim)
    for t in range(20):
        b, o = divmod(t + block, block)
        assert torch.equal(k[b, :, o], keys[t]) and torch.equal(v[b, :, o], values[t])


def test_gpu_deployments_keep_compilation_and_say_how_steps_run(monkeypatch, llava_family) -> None:  # noqa: ANN001
    from decoding.engine import frontend

    monkeypatch.setattr(frontend, "is_cpu", lambda: False)
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    args = frontend.make_parser("test").parse_args(["--model", "m"])
    notes = frontend.configure_strategies(args, ["none", "var"])
    assert not args.enforce_eager and frontend._cudagraph_mode(args) is None
    assert any(n.startswith("VLLM_USE_V2_MODEL_RUNNER=0") for n in notes), notes
    summary = frontend.execution_summary(args, ["none", "var"])
    assert summary["compiled"] and "V1" in summary["model_runner"]
    assert any("skip_compiled" in mode for mode in summary["steps"].values())
    assert "FULL" in summary["steps"]["plain"]
