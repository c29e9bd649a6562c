"""Served runners, one per family (``single``, ``pair``) or per orchestrating strategy
(``opera``), registered by name (:mod:`decoding.engine.runner`)."""

from decoding.engine.runners import (  # noqa: F401
    opera,
    pairs,
    single,
)
