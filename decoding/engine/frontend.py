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

from decoding.engine.client import StrategyEngineClient, StrategyObserver

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
    if not given("--enforce-eager"):
        args.enforce_eager = True
        notes.append("enforce_eager=True")
    if not given("--dtype"):
        args.dtype = "float32"
        notes.append("dtype=float32")
    if not (given("--enable-chunked-prefill") or given("--no-enable-chunked-prefill")):
        args.enable_chunked_prefill = False
        notes.append("enable_chunked_prefill=False")
    return notes


#: vLLM's default ``--max-logprobs``; raised when OPERA is enabled (unless set otherwise).
OPERA_DEFAULT_MAX_LOGPROBS = 20

#: Logits processor that tells engine-side code which request each batch row is.
ROWS_PROCESSOR = "decoding.engine.worker.rows:StepRows"


def configure_strategies(args: argparse.Namespace, enabled: list[str]) -> list[str]:
    """Engine settings the served strategies need; returns notes for the start-up log.

    Any strategy besides ``none`` runs on ``LucidLlava`` (vLLM's LLaVA plus hooks) and needs
    the row-carrier logits processor, which only vLLM's V1 model runner supports: GPUs are
    pinned to it (the CPU build always uses it). Attention hooks are Python code that a
    full CUDA graph would skip, so GPU deployments with strategies run eagerly.
    """
    if enabled == ["none"]:
        return []
    from decoding.engine.worker.model import ARCHITECTURE

    notes = [f"architecture={ARCHITECTURE}"]
    overrides = args.hf_overrides
    if isinstance(overrides, str):
        overrides = json.loads(overrides) if overrides.strip() else {}
    args.hf_overrides = {**(overrides or {}), "architectures": [ARCHITECTURE]}
    # Runners copy the image inputs into their contrast requests, so the API process must
    # keep them: its multimodal processor cache would strip repeated images to a hash.
    if getattr(args, "mm_processor_cache_gb", 0):
        args.mm_processor_cache_gb = 0
        notes.append("mm_processor_cache_gb=0")
    if "opera" in enabled and args.max_logprobs == OPERA_DEFAULT_MAX_LOGPROBS:
        # OPERA's look-aheads return their attention over the answer as log-probabilities
        # (decoding.engine.worker.opera); -1 bounds them by the vocabulary instead of 20.
        args.max_logprobs = -1
        notes.append("max_logprobs=-1 (OPERA look-ahead probes)")
    if "opera" in enabled and is_cpu() and args.block_size is None:
        # OPERA resubmits prompt + beam every step and the prefix cache only reuses full
        # blocks: the CPU default of 128 re-runs up to 127 tokens per look-ahead (32 is the
        # CPU kernels' smallest block; ~3x OPERA and beam-search throughput on the tiny model).
        args.block_size = 32
        notes.append("block_size=32 (prefix-cache reuse for OPERA's resubmissions)")
    procs = list(args.logits_processors or [])
    if ROWS_PROCESSOR not in procs:
        args.logits_processors = [*procs, ROWS_PROCESSOR]
    if not is_cpu():
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
        notes.append("VLLM_USE_V2_MODEL_RUNNER=0")
        if not args.enforce_eager:
            args.enforce_eager = True
            notes.append(
                "enforce_eager=True (the attention and residual-stream hooks of avc, opera "
                "and var run in Python every step; CUDA graphs would skip them)"
            )
    return notes


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
