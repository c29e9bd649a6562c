"""Every strategy on a server with torch.compile on (inductor on CPU): served tokens equal
the reference engine's, and VAR edits attention exactly as on an eager server.

Under compilation the language model is traced once, so hooks added to its layers later
never run; VAR's sinks are read by such hooks. If the per-step mode choice
(``decoding/engine/worker/graphs.py``) did not run VAR's prefill steps eagerly, VAR would
silently return plain answers: ``test_var_edits_attention_when_compiled`` would fail.
"""

from __future__ import annotations

import httpx
import pytest

from decoding.testing import parity
from server.process import start_server, stop_server
from tests import test_served_contrastive as contrastive
from tests import test_served_opera as opera
from tests import test_served_var as var

pytestmark = pytest.mark.server

CASES = parity.cases(8)


@pytest.fixture(scope="module")
def compiled(tiny_llava_dir, tmp_path_factory):  # noqa: ANN001, ANN201
    log = tmp_path_factory.mktemp("compiled") / "server.log"
    srv = start_server(tiny_llava_dir, log, ["--no-enforce-eager"], timeout=600)
    yield srv
    stop_server(srv)


def test_the_server_says_it_is_compiled(compiled) -> None:  # noqa: ANN001
    execution = httpx.get(compiled.url + "/version", timeout=10).json()["execution"]
    assert execution["compiled"] is True
    assert execution["steps"]["plain"] == "compiled"
    eager = [kind for kind, mode in execution["steps"].items() if mode.startswith("eager")]
    assert eager == ["forward probes or passes (var prefill, avc contrast prefill)"]


@pytest.mark.parametrize("strategy", ["none", *contrastive.CONTRASTIVE])
def test_parity_compiled(compiled, tiny_llava_dir, strategy: str) -> None:  # noqa: ANN001
    client = compiled.client()
    results = []
    for case in CASES:
        body = contrastive.request(compiled, case, {"strategy": strategy})
        r = client.chat.completions.create(**body)
        results.append((case, strategy, parity.token_ids(r.choices[0])))
    contrastive.check(tiny_llava_dir, results)


def test_var_edits_attention_when_compiled(compiled, tiny_llava_dir) -> None:  # noqa: ANN001
    # Cases where the reference's VAR moves log-probabilities or margins far beyond the
    # served-versus-reference tolerance (on the lab checkpoint VAR edits rows on a few
    # probes only: about 4 of 16).
    acting = []
    for case in parity.cases(40):
        ref = parity.reference(tiny_llava_dir, case, var.VAR, var.MAX_TOKENS)
        plain = parity.reference(tiny_llava_dir, case, var.NONE, var.MAX_TOKENS)
        if var.gap(ref, plain) > 10 * var.LOGPROB_TOL:
            acting.append((case, ref))
        if len(acting) == 4:
            break
    assert len(acting) >= 2, f"VAR moves the reference on {len(acting)} of 40 probes"
    cases = [c for c, _ in acting]
    answers = [var.ask(compiled, c, var.VAR) for c in cases]
    var.check_parity(answers, [r for _, r in acting], "compiled", cases)
    # ... and the edit is there: a compiled server that silently dropped VAR's hooks
    # would answer exactly as plain decoding on these cases.
    plain = [var.ask(compiled, c, var.NONE) for c in cases]
    moved = [var.gap(a, p) for a, p in zip(answers, plain, strict=True)]
    assert all(m > 10 * var.LOGPROB_TOL for m in moved), moved


def test_var_in_flight_with_none_when_compiled(compiled, tiny_llava_dir) -> None:  # noqa: ANN001
    refs = [parity.reference(tiny_llava_dir, c, var.VAR, var.MAX_TOKENS) for c in CASES]
    jobs = [job for c in CASES for job in ((c, var.VAR), (c, var.NONE))]
    answers = var.ask_together(compiled, jobs)
    var.check_parity(answers[0::2], refs, "compiled, in flight with none", CASES)


def test_opera_parity_compiled(compiled, tiny_llava_dir) -> None:  # noqa: ANN001
    cases = CASES[:4]
    refs = [parity.reference(tiny_llava_dir, c, opera.OPERA, opera.MAX_TOKENS) for c in cases]
    answers = [opera.ask(compiled, c, opera.OPERA) for c in cases]
    opera.check_parity(cases, answers, refs, "compiled")
