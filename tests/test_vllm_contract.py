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

#: (module, attribute, parameters that must exist in order of use, why the product uses it)
CONTRACT = [
    (
        "vllm.entrypoints.launchers.api_server.entry",
        "build_async_engine_client",
        ["args"],
        "start the engine as `vllm serve` does",
    ),
    (
        "vllm.entrypoints.launchers.api_server.app_state",
        "init_app_state",
        ["engine_client", "state", "args", "supported_tasks"],
        "vLLM's serving objects, bound to the strategy engine client",
    ),
    (
        "vllm.entrypoints.launchers.app",
        "build_app",
        ["args", "supported_tasks", "model_config"],
        "vLLM's FastAPI app",
    ),
    (
        "vllm.entrypoints.launchers.cli_args",
        "make_arg_parser",
        ["parser"],
        "every `vllm serve` argument passes through",
    ),
    (
        "vllm.entrypoints.launchers.cli_args",
        "validate_parsed_serve_args",
        ["args"],
        "vLLM's own argument checks",
    ),
    (
        "vllm.entrypoints.launchers.launcher",
        "serve_http",
        ["app", "sock"],
        "uvicorn with vLLM's settings",
    ),
    ("vllm.entrypoints.launchers.launcher", "setup_server", ["args"], "the listening socket"),
    (
        "vllm.engine.protocol",
        "EngineClient.generate",
        ["prompt", "sampling_params", "request_id"],
        "the call the strategy engine client intercepts",
    ),
    ("vllm.utils.argparse_utils", "FlexibleArgumentParser", [], "the parser class vLLM's CLI uses"),
    ("vllm.platforms", "current_platform", [], "CPU/GPU defaults and backends"),
    ("vllm.outputs", "RequestOutput", [], "runner outputs (pairs, OPERA)"),
    (
        "vllm.outputs",
        "CompletionOutput",
        ["index", "text", "token_ids", "cumulative_logprob"],
        "runner outputs (pairs, OPERA)",
    ),
    ("vllm.sampling_params", "SamplingParams", [], "per-request settings and `extra_args`"),
    (
        "vllm.sampling_params",
        "RequestOutputKind",
        [],
        "delta / cumulative / final output of runners",
    ),
    # engine side: model, attention, batch rows
    ("vllm", "ModelRegistry.register_model", ["model_arch", "model_cls"], "registers `LucidLlava`"),
    (
        "vllm.model_executor.models.llava",
        "LlavaForConditionalGeneration.forward",
        ["input_ids", "positions", "intermediate_tensors", "inputs_embeds"],
        "`forward` hook point",
    ),
    (
        "vllm.model_executor.models.llava",
        "LlavaForConditionalGeneration.compute_logits",
        ["hidden_states"],
        "`logits` hook point",
    ),
    (
        "vllm.model_executor.models.llava",
        "LlavaForConditionalGeneration.embed_multimodal",
        [],
        "`embed` hook point (DAMRO)",
    ),
    (
        "vllm.model_executor.models.llava_next",
        "LlavaNextForConditionalGeneration.forward",
        ["input_ids", "positions", "intermediate_tensors", "inputs_embeds"],
        "hooked LLaVA-NeXT (`LucidLlavaNext`)",
    ),
    (
        "vllm.model_executor.models.llava_onevision",
        "LlavaOnevisionForConditionalGeneration.forward",
        ["input_ids", "positions", "intermediate_tensors", "inputs_embeds"],
        "hooked LLaVA-OneVision (`LucidLlavaOnevision`)",
    ),
    (
        "vllm.model_executor.models.qwen2_5_vl",
        "Qwen2_5_VLForConditionalGeneration.forward",
        ["input_ids", "positions", "intermediate_tensors", "inputs_embeds"],
        "hooked Qwen2.5-VL (`LucidQwen2_5_VL`)",
    ),
    (
        "vllm.model_executor.models.qwen3_vl",
        "Qwen3VLForConditionalGeneration.forward",
        ["input_ids", "positions", "intermediate_tensors", "inputs_embeds"],
        "hooked Qwen3-VL (`LucidQwen3VL`)",
    ),
    (
        "vllm.model_executor.models.qwen3_vl",
        "Qwen3VLForConditionalGeneration._clear_deepstack_input_embeds",
        ["num_tokens"],
        "deepstack buffer (`deepstack_input_embeds[_num_tokens]`) zeroed after each pass: "
        "AVC's second pass restores it",
    ),
    (
        "vllm.engine.arg_utils",
        "EngineArgs.mm_device_do_normalize",
        [],
        "Qwen pixels reach the API process normalised (pixel contrasts)",
    ),
    (
        "vllm.v1.attention.backends.cpu_attn",
        "CPUAttentionBackendImpl.forward",
        ["layer", "query", "key", "value", "kv_cache", "attn_metadata", "output"],
        "`attention` hook point on CPU",
    ),
    (
        "vllm.v1.attention.backends.cpu_attn",
        "CPUAttentionBackend.get_impl_cls",
        [],
        "hooked CPU attention backend",
    ),
    (
        "vllm.v1.attention.backends.flash_attn",
        "FlashAttentionImpl.forward",
        ["layer", "query", "key", "value", "kv_cache", "attn_metadata", "output"],
        "`attention` hook point on CUDA",
    ),
    (
        "vllm.v1.attention.backends.flash_attn",
        "FlashAttentionBackend",
        [],
        "hooked CUDA attention backend",
    ),
    ("vllm.v1.attention.backend", "AttentionType", [], "hooks act on decoder self-attention only"),
    (
        "vllm.v1.attention.backends.registry",
        "register_backend",
        ["backend", "class_path"],
        "replaces the platform's attention backend",
    ),
    (
        "vllm.v1.attention.backends.registry",
        "AttentionBackendEnum",
        [],
        "names the backend replaced",
    ),
    ("vllm.forward_context", "get_forward_context", [], "attention metadata inside forward hooks"),
    (
        "vllm.forward_context",
        "is_forward_context_available",
        [],
        "per-step eager mode only inside a step",
    ),
    ("vllm.forward_context", "ForwardContext", [], "`skip_compiled`: eager steps"),
    (
        "vllm.v1.cudagraph_dispatcher",
        "CudagraphDispatcher.dispatch",
        [
            "num_tokens",
            "uniform_decode",
            "has_lora",
            "num_active_loras",
            "valid_modes",
            "invalid_modes",
        ],
        "FULL CUDA graphs excluded for steps with attention or forward hooks",
    ),
    (
        "vllm.v1.sample.logits_processor",
        "LogitsProcessor.__init__",
        ["vllm_config", "device", "is_pin_memory"],
        "the row carrier (`StepRows`)",
    ),
    (
        "vllm.v1.sample.logits_processor",
        "LogitsProcessor.update_state",
        ["batch_update"],
        "batch membership, before each step",
    ),
    (
        "vllm.v1.sample.logits_processor",
        "LogitsProcessor.apply",
        ["logits"],
        "the row carrier never edits logits",
    ),
    ("vllm.v1.sample.logits_processor", "BatchUpdate", [], "rows added, removed and moved"),
    ("vllm.v1.sample.logits_processor", "MoveDirectionality", [], "row moves and swaps"),
    (
        "vllm.multimodal.inputs",
        "MultiModalFieldConfig.batched",
        ["modality"],
        "DAMRO's `lucid_topk` image field",
    ),
    (
        "vllm.multimodal.inputs",
        "MultiModalFieldElem",
        ["data", "field"],
        "contrast inputs' image fields",
    ),
    ("vllm.multimodal.inputs", "MultiModalKwargsItem", [], "contrast inputs' image items"),
    ("vllm.multimodal.inputs", "MultiModalKwargsItems", [], "contrast inputs' image items"),
    (
        "vllm.multimodal.inputs",
        "PlaceholderRange",
        ["offset", "length"],
        "image placeholders of shortened contrast prompts",
    ),
    ("vllm.exceptions", "VLLMValidationError", [], "request errors raised by runners (400)"),
    ("vllm.exceptions", "VLLMServerError", [], "`StrategyFault` (500 naming the strategy)"),
    ("vllm.config", "CUDAGraphMode", [], "PIECEWISE graphs for strategies whose hooks need them"),
    (
        "vllm.logprobs",
        "Logprob",
        ["logprob", "rank", "decoded_token"],
        "OPERA's returned log-probabilities",
    ),
    ("vllm.logprobs", "FlatLogprobs", [], "OPERA's look-ahead probe channel"),
    (
        "vllm.logprobs",
        "FlatLogprobs",
        ["start_indices", "end_indices", "token_ids", "logprobs"],
        "OPERA's look-ahead probe channel",
    ),
    (
        "vllm.v1.engine.async_llm",
        "AsyncLLM.generate",
        ["prompt", "sampling_params", "request_id"],
        "the engine the client wraps",
    ),
]


@pytest.mark.parametrize(
    ("module", "attr", "params", "why"), CONTRACT, ids=[f"{m}:{a}" for m, a, *_ in CONTRACT]
)
def test_symbol_and_signature(module: str, attr: str, params: list[str], why: str) -> None:
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
    listed = {(m, a.split(".")[0]) for m, a, *_ in CONTRACT}
    missing = sorted(f"{m}:{a}" for m, a in _engine_imports() - listed)
    assert missing == [], "add these to CONTRACT (with the parameters relied on)"


def test_family_classes_keep_the_hook_points_and_the_deepstack_buffer() -> None:
    """Every hooked family class has the three hook points, and Qwen3-VL's deepstack
    buffer lives where the AVC two-pass step saves and restores it."""
    from decoding.engine.families import FAMILIES

    for family in FAMILIES:
        module, name = family.hooked_class.split(":")
        cls = getattr(importlib.import_module(module), name)
        for hook in ("forward", "compute_logits", "embed_multimodal"):
            assert callable(getattr(cls, hook)), (name, hook)
    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration as Q3

    src = inspect.getsource(Q3._set_deepstack_input_embeds)
    assert "deepstack_input_embeds_num_tokens" in src and "self.deepstack_input_embeds" in src


def test_forward_context_has_skip_compiled() -> None:
    import dataclasses

    from vllm.forward_context import ForwardContext

    assert "skip_compiled" in {f.name for f in dataclasses.fields(ForwardContext)}


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


def test_every_generation_endpoint_carries_vllm_xargs_and_the_budget_source() -> None:
    """``decoding`` rides in ``vllm_xargs`` on Responses and Anthropic Messages too
    (server.endpoints), and admission control reads the resolved ``max_num_seqs``
    (decoding.engine.limits)."""
    import dataclasses

    from vllm.config import SchedulerConfig
    from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest
    from vllm.entrypoints.anthropic.serving import AnthropicServingMessages
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    assert "vllm_xargs" in ResponsesRequest.model_fields
    assert "vllm_xargs" in AnthropicMessagesRequest.model_fields
    req = ResponsesRequest(model="m", input="hi", vllm_xargs={"k": "v"})
    assert req.to_sampling_params(8, {}).extra_args == {"k": "v"}
    msg = AnthropicMessagesRequest(
        model="m", max_tokens=4, messages=[{"role": "user", "content": "hi"}], vllm_xargs={"k": "v"}
    )
    chat = AnthropicServingMessages._build_base_request(msg, [])
    assert chat.vllm_xargs == {"k": "v"}
    assert "max_num_seqs" in {f.name for f in dataclasses.fields(SchedulerConfig)}


def symbol_table() -> str:
    """The vLLM symbol table of docs/architecture.md (one row per contract entry)."""
    rows = ["| symbol | parameters relied on | why |", "|---|---|---|"]
    seen = set()
    for module, attr, params, why in CONTRACT:
        if (module, attr) in seen:
            continue
        seen.add((module, attr))
        args = ", ".join(f"`{p}`" for p in params)
        rows.append(f"| `{module.removeprefix('vllm.')}.{attr}` | {args} | {why} |")
    return "\n".join(rows) + "\n"


DOC = ROOT / "docs" / "architecture.md"
_TABLE = re.compile(r"(<!-- generated:vllm-symbols -->\n)(.*?)(<!-- /generated -->)", re.S)


def test_architecture_doc_lists_every_contract_symbol() -> None:
    text = DOC.read_text()
    match = _TABLE.search(text)
    assert match, "docs/architecture.md lost its generated vLLM symbol table"
    assert match.group(2) == symbol_table(), "stale: run python tests/test_vllm_contract.py"


if __name__ == "__main__":
    DOC.write_text(_TABLE.sub(lambda m: m.group(1) + symbol_table() + m.group(3), DOC.read_text()))
