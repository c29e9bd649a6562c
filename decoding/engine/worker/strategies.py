"""Imports every engine-side mechanism so that it registers its hooks (the order of
the hooks at each point is fixed in :mod:`decoding.engine.worker.hooks`, not here)."""

from decoding.engine.worker import (
    avc,  # noqa: F401
    contrast,  # noqa: F401
    damro,  # noqa: F401
    opera,  # noqa: F401
    var,  # noqa: F401
)
