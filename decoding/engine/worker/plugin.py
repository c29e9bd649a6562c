"""The ``vllm.general_plugins`` entry point: loaded by vLLM in every engine process.

Registers the ``LucidLlava`` architecture (used only when the server selects it through
``hf_overrides``) and replaces the platform's attention backend by the hooked subclass
(:mod:`decoding.engine.worker.attention`), then imports the worker modules (built-ins and
``LUCID_WORKER_MODULES``). Idempotent, and never touches CUDA at import.
"""

from __future__ import annotations

_done = False


def register() -> None:
    global _done
    if _done:
        return
    _done = True
    from vllm import ModelRegistry
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from decoding.engine.families import FAMILIES

    for family in FAMILIES:
        ModelRegistry.register_model(family.hooked_architecture, family.hooked_class)
    if current_platform.is_cpu():
        register_backend(
            AttentionBackendEnum.CPU_ATTN,
            "decoding.engine.worker.attention.LucidCPUAttentionBackend",
        )
    elif current_platform.is_cuda():
        register_backend(
            AttentionBackendEnum.FLASH_ATTN,
            "decoding.engine.worker.attention.LucidFlashAttentionBackend",
        )
        from decoding.engine.worker.graphs import install_dispatch_guard

        # Steps with attention or forward hooks never replay FULL CUDA graphs.
        install_dispatch_guard()
    # Worker modules register their hooks on import; deployments may add their own.
    load_worker_modules()


#: Environment variable naming extra worker modules (engine mechanisms of extensions).
WORKER_MODULES_ENV = "LUCID_WORKER_MODULES"


def load_worker_modules() -> None:
    """The built-in worker modules, then those named in ``LUCID_WORKER_MODULES``."""
    import importlib
    import os

    import decoding.engine.worker.strategies  # noqa: F401

    for name in os.environ.get(WORKER_MODULES_ENV, "").split(","):
        if name.strip():
            importlib.import_module(name.strip())
