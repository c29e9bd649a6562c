"""Imports every engine-side mechanism so that it registers its hooks."""

from decoding.engine.worker import contrast  # noqa: F401
