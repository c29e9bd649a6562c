"""Admission errors for the ``decoding`` request object."""

from __future__ import annotations


class DecodingParamError(ValueError):
    """A bad ``decoding`` object. ``param`` is the dotted path of the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
