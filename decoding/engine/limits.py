"""Engine limits the HTTP layer sizes itself by (read from vLLM's resolved config)."""

from __future__ import annotations

from typing import Any


def max_num_seqs(client: Any) -> int:
    """The scheduler's ``max_num_seqs`` after vLLM resolved its platform default."""
    return int(client.vllm_config.scheduler_config.max_num_seqs)
