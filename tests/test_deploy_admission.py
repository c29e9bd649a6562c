"""The chart passes the admission-control settings the server accepts."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.helm_scripts import load as _load

cc = _load("chartcheck")


def args_of(values: dict[str, Any]) -> list[str]:
    deployment = cc.one(cc.render(values), "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == "server")["args"]


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_defaults_leave_budget_and_fanout_to_the_server() -> None:
    args = args_of({})
    assert "--decoding-budget" not in args and "--decoding-fanout-limit" not in args
    assert "--decoding-max-concurrency" not in args
    assert flag(args, "--decoding-queue-timeout") == "30"


def test_settings_become_server_flags() -> None:
    from server.app import parse_caps

    args = args_of(
        {
            "admission": {
                "budget": 0,
                "maxConcurrency": {"opera": 1, "vcd": 4},
                "queueTimeoutSeconds": 5,
                "fanoutLimit": 0,
            }
        }
    )
    assert flag(args, "--decoding-budget") == "0"
    assert flag(args, "--decoding-fanout-limit") == "0"
    caps = flag(args, "--decoding-max-concurrency")
    assert caps == "opera=1,vcd=4"
    assert parse_caps(caps, ["none", "vcd", "opera"]) == {"opera": 1, "vcd": 4}


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        (
            {"admission": {"maxConcurrency": {"opera": 1}}, "strategies": {"enabled": ["none"]}},
            "not in strategies.enabled",
        ),
        ({"admission": {"budget": -1}}, "budget"),
        ({"admission": {"maxConcurrency": {"opera": 0}}}, "maxConcurrency"),
        ({"engine": {"extraArgs": ["--decoding-budget=4"]}}, "managed by the chart"),
    ],
)
def test_bad_settings_are_refused(values: dict[str, Any], needle: str) -> None:
    with pytest.raises(helm.HelmError) as info:
        cc.render(values)
    assert needle in str(info.value)
