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
    ("vllm.outputs", "CompletionOutput", ["index", "text", "token_ids", "cumulative_logprob"]),
    ("vllm.sampling_params", "SamplingParams", []),
    ("vllm.sampling_params", "RequestOutputKind", []),
    # engine side: model, attention, batch rows
    ("vllm", "ModelRegistry.register_model", ["model_arch", "model_cls"]),
    (
        "vllm.model_executor.models.llava",
        "LlavaForConditionalGeneration.forward",
        ["input_ids", "positions", "intermediate_tensors", "inputs_embeds"],
    ),
    (
        "vllm.model_executor.models.llava",
        "LlavaForConditionalGeneration.compute_logits",
        ["hidden_states"],
    ),
    ("vllm.model_executor.models.llava", "LlavaForConditionalGeneration.embed_multimodal", []),
    (
        "vllm.v1.attention.backends.cpu_attn",
        "CPUAttentionBackendImpl.forward",
        ["layer", "query", "key", "value", "kv_cache", "attn_metadata", "output"],
    ),
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackend.get_impl_cls", []),
    (
        "vllm.v1.attention.backends.flash_attn",
        "FlashAttentionImpl.forward",
        ["layer", "query", "key", "value", "kv_cache", "attn_metadata", "output"],
    ),
    ("vllm.v1.attention.backends.flash_attn", "FlashAttentionBackend", []),
    ("vllm.v1.attention.backend", "AttentionType", []),
    ("vllm.v1.attention.backends.registry", "register_backend", ["backend", "class_path"]),
    ("vllm.v1.attention.backends.registry", "AttentionBackendEnum", []),
    ("vllm.forward_context", "get_forward_context", []),
    (
        "vllm.v1.sample.logits_processor",
        "LogitsProcessor.__init__",
        ["vllm_config", "device", "is_pin_memory"],
    ),
    ("vllm.v1.sample.logits_processor", "LogitsProcessor.update_state", ["batch_update"]),
    ("vllm.v1.sample.logits_processor", "LogitsProcessor.apply", ["logits"]),
    ("vllm.v1.sample.logits_processor", "BatchUpdate", []),
    ("vllm.v1.sample.logits_processor", "MoveDirectionality", []),
    ("vllm.multimodal.inputs", "MultiModalFieldConfig.batched", ["modality"]),
    ("vllm.multimodal.inputs", "MultiModalFieldElem", ["data", "field"]),
    ("vllm.multimodal.inputs", "MultiModalKwargsItem", []),
    ("vllm.multimodal.inputs", "MultiModalKwargsItems", []),
    ("vllm.multimodal.inputs", "PlaceholderRange", ["offset", "length"]),
    ("vllm.exceptions", "VLLMValidationError", []),
    ("vllm.exceptions", "VLLMServerError", []),
    ("vllm.config", "CUDAGraphMode", []),
    ("vllm.logprobs", "Logprob", ["logprob", "rank", "decoded_token"]),
    ("vllm.logprobs", "FlatLogprobs", []),
    ("vllm.logprobs", "FlatLogprobs", ["start_indices", "end_indices", "token_ids", "logprobs"]),
    ("vllm.v1.engine.async_llm", "AsyncLLM.generate", ["prompt", "sampling_params", "request_id"]),
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


def test_sampling_fields_the_runners_set() -> None:
    from vllm.sampling_params import SamplingParams

    sp = SamplingParams()
    for field in ("extra_args", "output_kind", "seed", "detokenize", "skip_reading_prefix_cache"):
        assert hasattr(sp, field), field
    assert hasattr(sp, "clone")


def _engine_imports() -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / "decoding" / "engine").glob("**/*.py"):
        text = path.read_text()
        for match in re.finditer(r"from\s+(vllm[\w.]*)\s+import\s+(\([^)]*\)|[^\n]+)", text):
            names = match.group(2).strip("()")
            for name in re.split(r"[,\s]+", names):
                name = name.split("#")[0].strip()
                if name and name != "as" and name.isidentifier():
                    found.add((match.group(1), name))
    return found


def test_every_vllm_symbol_the_engine_imports_is_in_the_contract() -> None:
    listed = {(m, a.split(".")[0]) for m, a, _ in CONTRACT}
    missing = sorted(f"{m}:{a}" for m, a in _engine_imports() - listed)
    assert missing == [], "add these to CONTRACT (with the parameters relied on)"


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
