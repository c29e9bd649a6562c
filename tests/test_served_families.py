"""Every strategy on every model family: a real server per family (all strategies on)
on the family's tiny checkpoint, parity with the reference engine over HTTP, one at a
time and mixed with plain requests, or the documented 400 where the method is undefined.

LLaVA-1.5 has its own, larger suites (``test_served_*``); this module covers the other
four families with the same contract: greedy tokens equal (numerical ties excused, as
:mod:`decoding.testing.parity` defines them) and, where tokens are equal, the served
log-probability of each chosen token within :data:`LOGPROB_TOLERANCE` of the reference.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from decoding.families import family_named
from decoding.strategies.registry import available as registered
from decoding.testing import parity, synthetic, world
from server.process import start_server, stop_server

pytestmark = pytest.mark.server

FAMILIES = ("qwen2.5-vl", "llava-next", "llava-onevision", "qwen3-vl")
MAX_TOKENS = 12
#: Served vs reference log-probability of the same chosen token (nats).
LOGPROB_TOLERANCE = 1e-4  # measured: at most ~3e-6 on CPU float32
#: Every family's checkpoint is trained on the lab world: the cases are held-out scenes
#: whose prior partner is absent (where strategies matter), as for LLaVA-1.5.
CASES = parity.cases(4, first_seed=700)
WORST: list[float] = []  # served-vs-reference log-probability differences seen


@pytest.fixture(scope="module", params=FAMILIES)
def family_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from decoding.testing.tiny_models import ensure_tiny

    name = request.param
    path = ensure_tiny(name)
    log = tmp_path_factory.mktemp(f"server-{name}") / "server.log"
    srv = start_server(path, log, ["--max-request-bytes", str(4 * 1024 * 1024)])
    yield name, path, srv
    stop_server(srv)


#: A strategy "acts" on a case when it changes the answer or moves a chosen token's
#: log-probability by more than this (nats): well beyond the parity tolerance, so a
#: strategy the engine dropped fails the parity tests on that case.
ACTS = 10 * LOGPROB_TOLERANCE
SEARCH = parity.cases(16, first_seed=700)


@pytest.fixture(scope="module")
def acting(family_server) -> dict[str, list[parity.Case]]:  # noqa: ANN001
    """Per strategy, up to two cases (picked from the checkpoint's own answers) on which
    the reference shows the strategy acting; OPERA's scores are beam scores, so only a
    changed answer counts for it."""
    name, path, _ = family_server
    plain = {c.seed: parity.reference(path, c, {"strategy": "none"}, MAX_TOKENS) for c in SEARCH}
    found: dict[str, list[parity.Case]] = {}
    for strategy in _available(name):
        if strategy == "none":
            continue
        found[strategy] = []
        for case in SEARCH:
            ref = parity.reference(path, case, {"strategy": strategy}, MAX_TOKENS)
            base = plain[case.seed]
            moved = ref.token_ids != base.token_ids
            if not moved and strategy != "opera":
                pairs = zip(ref.logprobs, base.logprobs, strict=True)
                moved = max(abs(a - b) for a, b in pairs) > ACTS
            if moved:
                found[strategy].append(case)
            if len(found[strategy]) == 2:
                break
    return found


def _served(choice) -> tuple[list[int], list[float]]:  # noqa: ANN001
    return parity.token_ids(choice), [t.logprob for t in choice.logprobs.content]


def _check(path: Path, results: list[tuple[parity.Case, str, list[int], list[float]]]) -> None:
    verdicts, drift = [], []
    for case, strategy, ids, logprobs in results:
        ref = parity.reference(path, case, {"strategy": strategy}, MAX_TOKENS)
        verdict = parity.compare(case, ids, ref)
        verdicts.append(verdict)
        if verdict.equal and strategy != "opera":  # beam scores are not per-token logprobs
            worst = max(abs(a - b) for a, b in zip(logprobs, ref.logprobs, strict=True))
            WORST.append(worst)
            if worst > LOGPROB_TOLERANCE:
                drift.append(f"{strategy} seed {case.seed}: logprob differs by {worst:.2e}")
    bad, ties = parity.judge(verdicts)
    if ties:
        print(f"numerical ties (excused): {parity.describe(ties)}")
    assert not bad, parity.describe(bad)
    assert not drift, "; ".join(drift)
    print(f"largest served-vs-reference logprob difference so far: {max(WORST, default=0):.1e}")


def _available(name: str) -> list[str]:
    return [s for s in registered() if s not in family_named(name).undefined]


def test_server_reports_family_and_unavailable(family_server) -> None:  # noqa: ANN001
    name, _, srv = family_server
    import httpx

    version = httpx.get(f"{srv.base_url.removesuffix('/v1')}/version").json()
    assert version["model_family"] == name
    assert version["unavailable"] == family_named(name).undefined
    listed = httpx.get(f"{srv.base_url}/decoding/strategies").json()["data"]
    for entry in listed:
        assert entry["available"] == (entry["strategy"] not in family_named(name).undefined)


def test_undefined_strategies_get_a_400_and_serving_continues(family_server) -> None:  # noqa: ANN001
    name, _, srv = family_server
    client = srv.client()
    undefined = family_named(name).undefined
    for strategy, why in undefined.items():
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                **parity.chat_request(srv.model, CASES[0], {"strategy": strategy}, MAX_TOKENS)
            )
        body = err.value.body
        assert body["param"] == "decoding.strategy", body
        assert strategy in body["message"] and why[:40] in body["message"], body
    r = client.chat.completions.create(**parity.chat_request(srv.model, CASES[0], {}, 4))
    assert r.choices[0].message.content is not None


def test_every_strategy_acts_on_the_family_checkpoint(family_server, acting) -> None:  # noqa: ANN001
    """Parity is only evidence if the strategy changes something on some case."""
    inert = [s for s, cases in acting.items() if not cases]
    assert not inert, f"no case of {len(SEARCH)} where these act on {family_server[0]}: {inert}"


def test_every_strategy_equals_the_reference_one_at_a_time(family_server, acting) -> None:  # noqa: ANN001
    """The fixed cases plus, per strategy, the cases where it acts."""
    name, path, srv = family_server
    client = srv.client()
    results = []
    for strategy in _available(name):
        extra = [c for c in acting.get(strategy, []) if c not in CASES]
        for case in CASES + extra:
            body = parity.chat_request(srv.model, case, {"strategy": strategy}, MAX_TOKENS)
            r = client.chat.completions.create(**body)
            results.append((case, strategy, *_served(r.choices[0])))
    _check(path, results)


def test_every_strategy_mixed_in_flight(family_server) -> None:  # noqa: ANN001
    """Every available strategy and plain requests for the same cases, all at once."""
    name, path, srv = family_server
    client = openai.AsyncOpenAI(base_url=srv.base_url, api_key="t", max_retries=0)
    labels = [(case, s) for case in CASES[:2] for s in ["none", *_available(name)]]

    async def go() -> list:
        jobs = [
            client.chat.completions.create(
                **parity.chat_request(srv.model, case, {"strategy": s}, MAX_TOKENS)
            )
            for case, s in labels
        ]
        return await asyncio.gather(*jobs)

    out = asyncio.run(go())
    _check(path, [(c, s, *_served(r.choices[0])) for (c, s), r in zip(labels, out, strict=True)])


def test_answers_depend_on_the_image(family_server) -> None:  # noqa: ANN001
    """The tiny checkpoint is not constant: parity over constant answers proves nothing."""
    _, _, srv = family_server
    client = srv.client()
    answers = {
        client.chat.completions.create(
            model=srv.model,
            messages=synthetic.chat_messages(synthetic.sample(seed)[0], "Describe the image."),
            max_tokens=MAX_TOKENS,
            temperature=0.0,
        )
        .choices[0]
        .message.content
        for seed in (1, 2, 3, 4)
    }
    assert len(answers) > 1, answers


def test_pope_job_runs_and_reports_undefined_strategies(family_server, tmp_path: Path) -> None:  # noqa: ANN001
    """The evaluation jobs work on every family; undefined strategies are reported as
    such in results.json, not failed requests."""
    import json

    from eval.cli import main

    name, _, srv = family_server
    imgs = tmp_path / "images"
    imgs.mkdir()
    img, scene = synthetic.sample(5)
    img.save(imgs / "img0.png")
    absent = next(c.name for c in world.CLASSES if not scene.has(c.name))
    qs = [
        {"question_id": 1, "image": "img0.png", "text": f"Is there a {scene.names[0]}?",
         "label": "yes"},
        {"question_id": 2, "image": "img0.png", "text": f"Is there a {absent}?", "label": "no"},
    ]  # fmt: skip
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in qs))
    out = tmp_path / "pope"
    argv = ["pope", "--url", srv.url, "--questions", f"random={qfile}",
            "--allow-unknown-questions", "--images", str(imgs), "--strategies", "none,vcd,damro",
            "--max-tokens", "4", "--out", str(out), "--no-progress", "--no-plot"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    undefined = family_named(name).undefined
    assert set(res["strategies"]) == {"none", "vcd", "damro"} - set(undefined)
    assert res["unavailable"] == {k: v for k, v in undefined.items() if k == "damro"}
    assert res["strategies"]["vcd"]["splits"]["random"]["n"] == 2


MULTI = [
    parity.Case(720, "Describe the image.", images=2),
    parity.Case(721, "Describe the image in detail.", images=2),
]


def _multi_image(srv, path: Path, strategies: list[str]) -> None:  # noqa: ANN001
    client = srv.client()
    results = []
    for strategy in strategies:
        for case in MULTI:
            body = parity.chat_request(srv.model, case, {"strategy": strategy}, MAX_TOKENS)
            r = client.chat.completions.create(**body)
            results.append((case, strategy, *_served(r.choices[0])))
    _check(path, results)


def test_two_images_in_one_request(family_server) -> None:  # noqa: ANN001
    name, path, srv = family_server
    _multi_image(srv, path, _available(name))


def test_two_images_in_one_request_llava_15(served, tiny_llava_dir: Path) -> None:  # noqa: ANN001
    _multi_image(served, tiny_llava_dir, _available("llava-1.5"))


def test_reference_bench_runs_on_the_family(family_server) -> None:  # noqa: ANN001
    """``make bench FAMILY=...`` prints the reference table: every available strategy
    has a record, none for the undefined ones."""
    from decoding.reference import bench as ref_bench

    name, path, _ = family_server
    model, processor = parity.load_reference(str(path))
    records = ref_bench.run(model, processor, requests=1, max_new_tokens=4)
    assert [r["strategy"] for r in records] == _available(name)
    assert all(r["tokens"] > 0 for r in records)
