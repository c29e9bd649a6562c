"""Served implementations of the strategies, one module each, registered by name."""

from decoding.engine.runners import (  # noqa: F401, E402
    avc,
    damro,
    none,  # noqa: F401
    opera,
    var,
    vcd,
)
