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
    refs = [parity.reference(tiny_llava_dir, c, var.VAR, var.MAX_TOKENS) for c in CASES]
    answers = [var.ask(compiled, c, var.VAR) for c in CASES]
    var.check_parity(answers, refs, "compiled", CASES)
    # ... and the edit is there: VAR moves log-probabilities and margins away from plain
    # decoding far more than the served-versus-reference tolerance.
    plain = [var.ask(compiled, c, var.NONE) for c in CASES]
    moved = [var.gap(a, p) for a, p in zip(answers, plain, strict=True)]
    assert sum(m > 10 * var.LOGPROB_TOL for m in moved) >= 3 * len(CASES) // 4, moved


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
