"""A compiled (``--no-enforce-eager``) server on a Qwen3-VL checkpoint: the family whose
hooks interact most with compilation (M-RoPE positions, AVC's two-pass step restoring
the deepstack buffer, VAR's eager probe steps) serves every strategy it defines with the
reference's tokens and log-probabilities, on cases where each strategy acts."""

from __future__ import annotations

import pytest

from decoding.testing import parity
from server.process import start_server, stop_server
from tests.test_served_families import MAX_TOKENS, SEARCH, _available, _check, _served

pytestmark = pytest.mark.server

FAMILY = "qwen3-vl"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory):
    from decoding.testing.tiny_models import ensure_tiny

    path = ensure_tiny(FAMILY)
    log = tmp_path_factory.mktemp("compiled-family") / "server.log"
    srv = start_server(path, log, ["--no-enforce-eager"])
    yield path, srv
    stop_server(srv)


def test_compiled_family_server_equals_the_reference(compiled) -> None:  # noqa: ANN001
    import httpx

    path, srv = compiled
    assert httpx.get(f"{srv.url}/version").json()["execution"]["compiled"] is True
    client = srv.client()
    plain = {c.seed: parity.reference(path, c, {"strategy": "none"}, MAX_TOKENS) for c in SEARCH}
    results = []
    for strategy in _available(FAMILY):
        if strategy == "opera":  # beam search: no compiled-specific hook beyond VAR's/AVC's
            continue
        acting = [
            c
            for c in SEARCH
            if parity.reference(path, c, {"strategy": strategy}, MAX_TOKENS).logprobs
            != plain[c.seed].logprobs
        ][:2]
        for case in [SEARCH[0], *acting]:
            body = parity.chat_request(srv.model, case, {"strategy": strategy}, MAX_TOKENS)
            r = client.chat.completions.create(**body)
            results.append((case, strategy, *_served(r.choices[0])))
    _check(path, results)
