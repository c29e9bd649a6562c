"""Served implementations of the strategies, one module each, registered by name."""

from decoding.engine.runners import (  # noqa: F401, E402
    damro,
    none,  # noqa: F401
    var,
    vcd,
)
