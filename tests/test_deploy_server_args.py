"""The arguments the chart passes are ones the server and vLLM 0.32 accept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


from tests.helm_scripts import load as _load  # noqa: E402

cc = _load("chartcheck")


def test_chart_strategies_are_the_registry() -> None:
    from decoding.strategies import available

    schema = json.loads((cc.CHART / "values.schema.json").read_text())
    strategies = schema["properties"]["strategies"]["properties"]
    assert set(strategies["enabled"]["items"]["enum"]) == set(available())
    assert set(strategies["costFactor"]["properties"]) == set(available())


@pytest.mark.slow
@pytest.mark.parametrize("path", cc.CI_VALUES, ids=lambda p: p.name)
def test_vllm_parses_the_server_arguments(path: Path) -> None:
    from decoding.engine.frontend import make_parser
    from server.app import add_admission_args

    parser = make_parser("chart arguments")
    parser.add_argument("--strategies")  # the server's own flags (server/cli.py)
    add_admission_args(parser)
    deployment = cc.one(cc.render(cc.load_values(path)), "Deployment")
    container = next(
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server"
    )
    args = parser.parse_args(container["args"])
    assert args.model and args.port == 8000 and args.host == "0.0.0.0"
    if "--shutdown-timeout" in container["args"]:
        assert args.shutdown_timeout > 0
    if "--compilation-config" in container["args"]:
        assert args.compilation_config.cudagraph_mode is not None
    if "--speculative-config" in container["args"]:
        assert args.speculative_config["method"] == "ngram"
    assert args.disable_access_log_for_endpoints == "/health,/metrics"
