"""The ``vllm.general_plugins`` entry point: loaded by vLLM in every engine process.

Registers the ``LucidLlava`` architecture (used only when the server selects it through
``hf_overrides``) and replaces the platform's attention backend by the hooked subclass
(:mod:`decoding.engine.worker.attention`). Idempotent, and never touches CUDA at import.
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

    from decoding.engine.worker.model import ARCHITECTURE

    ModelRegistry.register_model(ARCHITECTURE, "decoding.engine.worker.model:LucidLlava")
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
    # Worker modules register their hooks on import.
    import decoding.engine.worker.strategies  # noqa: F401
