"""Served implementations of the strategies, one module each, registered by name."""

from decoding.engine.runners import none  # noqa: F401
