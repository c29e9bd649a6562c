"""vLLM's OpenAI server, assembled with our hooks.

This mirrors ``vllm.entrypoints.launchers.api_server.entry.run_server`` (vLLM 0.32.0) and
inserts two things: the engine client is wrapped so that every request passes through
the strategy dispatcher, and the FastAPI app is handed to a callback that adds the
``decoding`` middleware, metrics and routes. Plain requests therefore take exactly the
path of ``vllm serve``: chat templating, image loading, streaming, usage and logprobs are
vLLM's own code.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from vllm.entrypoints.launchers.api_server.app_state import init_app_state
from vllm.entrypoints.launchers.api_server.entry import (
    build_async_engine_client,
)
from vllm.entrypoints.launchers.app import build_app
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.entrypoints.launchers.launcher import serve_http, setup_server
from vllm.platforms import current_platform
from vllm.utils.argparse_utils import FlexibleArgumentParser

from decoding.engine.client import StrategyEngineClient
from decoding.engine.families import Family, UnsupportedModel, family_for
from decoding.engine.runner import StrategyObserver
from decoding.strategies import get_strategy
from decoding.strategies.rules import deployment_errors, rules_for

AppHook = Callable[[Any, StrategyEngineClient, argparse.Namespace], Awaitable[None] | None]


def make_parser(description: str) -> FlexibleArgumentParser:
    """vLLM's full serve parser (every engine argument passes through)."""
    return make_arg_parser(FlexibleArgumentParser(description=description))


def is_cpu() -> bool:
    return current_platform.is_cpu()


def apply_platform_defaults(args: argparse.Namespace, argv: list[str]) -> list[str]:
    """Settings vLLM 0.32 needs on CPU, applied only where the user gave none.

    Returns human-readable notes of what was set. On CPU: eager mode (inductor start-up
    costs a minute and gains nothing for small models), fp32 (bf16 is slower without
    AVX-512), a KV-cache size, and no chunked prefill: a seeded request whose prefill is
    split over steps kills the CPU engine (``CPU Generator does not use offset``), so
    prompts are always prefilled in one step.
    """
    notes: list[str] = []
    if not is_cpu():
        return notes

    def given(flag: str) -> bool:
        return any(a == flag or a.startswith(flag + "=") for a in argv)

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    compiled = any(given(f) for f in ("--no-enforce-eager", "--compilation-config", "-cc", "-O"))
    if not given("--enforce-eager") and not compiled:
        args.enforce_eager = True
        notes.append("enforce_eager=True")
    if not given("--dtype"):
        args.dtype = "float32"
        notes.append("dtype=float32")
    if not (given("--enable-chunked-prefill") or given("--no-enable-chunked-prefill")):
        args.enable_chunked_prefill = False
        notes.append("enable_chunked_prefill=False")
    return notes


#: vLLM's default ``--max-logprobs``; raised when a strategy needs more (unless set).
DEFAULT_MAX_LOGPROBS = 20

#: Logits processor that tells engine-side code which request each batch row is.
ROWS_PROCESSOR = "decoding.engine.worker.rows:StepRows"


class DeploymentError(SystemExit):
    """Engine settings that cannot serve the enabled strategies correctly."""


def check_served(enabled: list[str]) -> None:
    """Every enabled strategy has its runner, and every hook its requests need is
    registered in the engine's worker modules (else start-up fails, naming both)."""
    from decoding.engine.runner import runners
    from decoding.engine.worker import hooks
    from decoding.engine.worker.plugin import load_worker_modules

    load_worker_modules()
    served = runners()
    problems = []
    for name in enabled:
        decl = get_strategy(name)
        if decl.runner_name() not in served:
            problems.append(
                f"strategy {name!r} names runner {decl.runner_name()!r}, which is not "
                f"registered (runners: {', '.join(sorted(served))})"
            )
        gone = hooks.missing(decl.engine.hooks)
        if gone:
            problems.append(
                f"strategy {name!r} needs engine hooks "
                f"{', '.join(f'{m}.{p}' for m, p in sorted(gone))}, which no worker module "
                "registers"
            )
    if problems:
        raise DeploymentError("cannot serve the enabled strategies: " + "; ".join(problems))


def model_family(args: argparse.Namespace) -> Family:
    """The family adapter of the checkpoint ``args`` serve (its ``config.json``)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            args.model,
            revision=getattr(args, "revision", None),
            trust_remote_code=bool(getattr(args, "trust_remote_code", False)),
        )
    except (OSError, ValueError) as exc:
        raise DeploymentError(
            f"strategies need the checkpoint's model family, but its config could not be "
            f"read ({exc}); serve it with --strategies none"
        ) from None
    try:
        return family_for(config)
    except UnsupportedModel as exc:
        raise DeploymentError(str(exc)) from None


def _cudagraph_mode(args: argparse.Namespace) -> str | None:
    cc = getattr(args, "compilation_config", None)
    mode = cc.get("cudagraph_mode") if isinstance(cc, dict) else getattr(cc, "cudagraph_mode", None)
    if mode is None:
        return None
    return str(getattr(mode, "name", mode))


def configure_strategies(args: argparse.Namespace, enabled: list[str]) -> list[str]:
    """Engine settings the enabled strategies need (:mod:`decoding.strategies.rules`);
    returns notes for the start-up log, and raises :class:`DeploymentError` for settings
    that would give wrong answers (speculative decoding, tensor parallelism, no prefix
    caching). CUDA graphs and torch.compile stay on: the engine picks each step's mode
    from the rows it holds (:mod:`decoding.engine.worker.graphs`)."""
    rules = rules_for(enabled)
    errors = deployment_errors(
        rules,
        speculative=bool(getattr(args, "speculative_config", None)),
        tensor_parallel_size=int(getattr(args, "tensor_parallel_size", 1) or 1),
        prefix_caching=getattr(args, "enable_prefix_caching", None),
        cudagraph_mode=_cudagraph_mode(args),
    )
    if errors:
        raise DeploymentError("; ".join(errors))
    if not rules.hooked:
        return []
    check_served(enabled)
    family = model_family(args)
    args.model_family = family.name
    notes = [f"family={family.name}", f"architecture={family.hooked_architecture}"]
    if family.model.pixel_layout == "patches" and args.mm_device_do_normalize is not False:
        # Pixel contrasts (VCD) transform normalised pixels; with device normalisation
        # the API process holds uint8 patches (vLLM 0.32 qwen2_5_vl.py:1325; the
        # argument's default None means "as the model supports", i.e. on).
        args.mm_device_do_normalize = False
        notes.append("mm_device_do_normalize=False (pixel contrasts need normalised pixels)")
    overrides = args.hf_overrides
    if isinstance(overrides, str):
        overrides = json.loads(overrides) if overrides.strip() else {}
    args.hf_overrides = {**(overrides or {}), "architectures": [family.hooked_architecture]}
    # Runners copy the image inputs into their contrast requests, so the API process must
    # keep them: its multimodal processor cache would strip repeated images to a hash.
    if getattr(args, "mm_processor_cache_gb", 0):
        args.mm_processor_cache_gb = 0
        notes.append("mm_processor_cache_gb=0")
    if rules.max_logprobs is not None and args.max_logprobs == DEFAULT_MAX_LOGPROBS:
        args.max_logprobs = rules.max_logprobs
        notes.append(f"max_logprobs={rules.max_logprobs} (strategy probes return as logprobs)")
    if rules.cpu_block_size and is_cpu() and args.block_size is None:
        # Resubmitted prefixes hit the prefix cache only in full blocks: the CPU default of
        # 128 re-runs up to 127 tokens per resubmission.
        args.block_size = rules.cpu_block_size
        notes.append(f"block_size={rules.cpu_block_size} (prefix-cache reuse)")
    procs = list(args.logits_processors or [])
    if ROWS_PROCESSOR not in procs:
        args.logits_processors = [*procs, ROWS_PROCESSOR]
    if not is_cpu():
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
        notes.append("VLLM_USE_V2_MODEL_RUNNER=0 (the row carrier is a V1 logits processor)")
    return notes


def unavailable_strategies(args: argparse.Namespace, enabled: list[str]) -> dict[str, str]:
    """Enabled strategies that are undefined on the served model family, with why (the
    request gets a 400 quoting it)."""
    name = getattr(args, "model_family", None)
    if name is None:
        return {}
    from transformers import AutoConfig

    from decoding.families import family_named
    from decoding.profiles import profile_for

    out = {s: why for s, why in family_named(name).undefined.items() if s in enabled}
    config = AutoConfig.from_pretrained(
        args.model, trust_remote_code=bool(getattr(args, "trust_remote_code", False))
    )
    try:
        profile, no_profile = profile_for(config), ""
    except KeyError as exc:
        profile, no_profile = None, str(exc.args[0] if exc.args else exc)
    for s in enabled:
        why = get_strategy(s).unavailable_on(profile, no_profile)
        if why and s not in out:
            out[s] = why
    return out


def execution_summary(args: argparse.Namespace, enabled: list[str]) -> dict[str, Any]:
    """How steps run on this deployment (start-up log and ``/version``)."""
    compiled = not args.enforce_eager
    if not rules_for(enabled).hooked:
        return {"compiled": compiled, "steps": {"plain": "as vLLM configures it"}}
    from decoding.engine.worker.graphs import STEP_MODES

    steps = STEP_MODES if compiled else {kind: "eager" for kind in STEP_MODES}
    if is_cpu():  # no CUDA graphs on CPU
        steps = {kind: mode.split(";")[0] for kind, mode in steps.items()}
    return {
        "compiled": compiled,
        "model_runner": "V1 (the row carrier is a V1 logits processor; V2 not supported yet)",
        "steps": steps,
    }


def validate_args(args: argparse.Namespace) -> None:
    validate_parsed_serve_args(args)


@asynccontextmanager
async def engine_client(
    args: argparse.Namespace, observer: StrategyObserver | None = None
) -> AsyncIterator[StrategyEngineClient]:
    """Start the engine for ``args`` and yield it wrapped for strategy dispatch."""
    async with build_async_engine_client(args) as engine:
        yield StrategyEngineClient(engine, observer)


async def build_openai_app(args: argparse.Namespace, client: StrategyEngineClient) -> Any:
    """vLLM's FastAPI app with its state initialised against ``client``."""
    supported_tasks = await client.get_supported_tasks()
    app = build_app(args, supported_tasks, client.model_config)
    await init_app_state(client, app.state, args, supported_tasks)
    return app


async def run_server(
    args: argparse.Namespace,
    customize_app: AppHook,
    observer: StrategyObserver | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, like ``vllm serve``."""

    def _interrupt_init(*_: object) -> None:
        raise KeyboardInterrupt("terminated")

    signal.signal(signal.SIGTERM, _interrupt_init)
    _, sock = setup_server(args, reuse_port=False)
    async with engine_client(args, observer) as client:
        app = await build_openai_app(args, client)
        maybe = customize_app(app, client, args)
        if maybe is not None:
            await maybe
        shutdown_task = await serve_http(
            app,
            sock=sock,
            enable_ssl_refresh=args.enable_ssl_refresh,
            host=args.host,
            port=args.port,
            log_level=args.uvicorn_log_level,
            access_log=not args.disable_uvicorn_access_log,
            ssl_keyfile=args.ssl_keyfile,
            ssl_certfile=args.ssl_certfile,
            ssl_ca_certs=args.ssl_ca_certs,
            ssl_cert_reqs=args.ssl_cert_reqs,
        )
    try:
        await shutdown_task
    finally:
        sock.close()


def versions() -> dict[str, str]:
    import transformers
    import vllm

    return {"vllm_version": vllm.__version__, "transformers_version": transformers.__version__}
