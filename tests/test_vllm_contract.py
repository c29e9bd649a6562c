"""Every vLLM internal the product uses, with the signature it relies on.

All vLLM imports live in ``decoding/engine``; when vLLM is upgraded, this test names
each symbol that moved or changed shape. It also checks that no other package imports
vLLM.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: (module, attribute, parameters that must exist, in order of use)
CONTRACT = [
    ("vllm.entrypoints.launchers.api_server.entry", "build_async_engine_client", ["args"]),
    (
        "vllm.entrypoints.launchers.api_server.app_state",
        "init_app_state",
        ["engine_client", "state", "args", "supported_tasks"],
    ),
    ("vllm.entrypoints.launchers.app", "build_app", ["args", "supported_tasks", "model_config"]),
    ("vllm.entrypoints.launchers.cli_args", "make_arg_parser", ["parser"]),
    ("vllm.entrypoints.launchers.cli_args", "validate_parsed_serve_args", ["args"]),
    ("vllm.entrypoints.launchers.launcher", "serve_http", ["app", "sock"]),
    ("vllm.entrypoints.launchers.launcher", "setup_server", ["args"]),
    ("vllm.engine.protocol", "EngineClient.generate", ["prompt", "sampling_params", "request_id"]),
    ("vllm.utils.argparse_utils", "FlexibleArgumentParser", []),
    ("vllm.platforms", "current_platform", []),
    ("vllm.outputs", "RequestOutput", []),
    ("vllm.sampling_params", "SamplingParams", []),
]


@pytest.mark.parametrize(
    ("module", "attr", "params"), CONTRACT, ids=[f"{m}:{a}" for m, a, _ in CONTRACT]
)
def test_symbol_and_signature(module: str, attr: str, params: list[str]) -> None:
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if params:
        names = list(inspect.signature(obj).parameters)
        if names and names[0] == "self":
            names = names[1:]
        assert names[: len(params)] == params, names


def test_extra_args_and_vllm_xargs_reach_the_engine() -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.sampling_params import SamplingParams

    assert "vllm_xargs" in ChatCompletionRequest.model_fields
    assert "extra_args" in inspect.signature(SamplingParams).parameters or hasattr(
        SamplingParams(), "extra_args"
    )
    req = ChatCompletionRequest(model="m", messages=[], vllm_xargs={"k": "v"})
    assert req.to_sampling_params(8, {}).extra_args == {"k": "v"}


def test_only_the_engine_package_imports_vllm() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+vllm\b", re.M)
    offenders = []
    for path in ROOT.glob("**/*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".venv", "build", "tests") or rel.parts[:2] == ("decoding", "engine"):
            continue
        if pattern.search(path.read_text(errors="replace")):
            offenders.append(str(rel))
    assert offenders == []
