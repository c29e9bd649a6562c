"""Reference engine: every strategy on plain ``transformers``, batch 1 (the oracle)."""

from decoding.reference.engine import ReferenceResult, reference_generate

__all__ = ["ReferenceResult", "reference_generate"]
