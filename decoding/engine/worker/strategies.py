"""Imports every engine-side mechanism so that it registers its hooks."""

from decoding.engine.worker import (
    avc,  # noqa: F401
    contrast,  # noqa: F401
    opera,  # noqa: F401
    var,  # noqa: F401
)
