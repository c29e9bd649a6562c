"""Request bodies read within limits: size (413), JSON syntax and nesting depth (400).

Python's JSON parser recurses per nesting level, and so do pydantic and the chat
template code behind it, so a body nested thousands of levels deep would surface as a
500 (``RecursionError``) somewhere inside vLLM. Bodies are parsed here first and refused
past :data:`MAX_DEPTH` levels; real requests (messages, content parts, tool schemas) stay
far below it.
"""

from __future__ import annotations

import json
from typing import Any

#: Deepest accepted nesting of JSON arrays and objects.
MAX_DEPTH = 64


class BodyError(Exception):
    def __init__(self, message: str, status: int = 400, err_type: str = "BadRequestError") -> None:
        super().__init__(message)
        self.message, self.status, self.err_type = message, status, err_type


def depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion limit)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            break
        stack.extend((c, d + 1) for c in children)
    return deepest


def parse(raw: bytes) -> Any:
    """The JSON value of ``raw``; raise :class:`BodyError` (400) for invalid or too deep."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BodyError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError(f"request body is nested deeper than {MAX_DEPTH} levels") from None
    if depth(value) > MAX_DEPTH:
        raise BodyError(f"request body is nested deeper than {MAX_DEPTH} levels")
    return value


def too_large(limit: int) -> BodyError:
    return BodyError(
        f"request body exceeds {limit} bytes", status=413, err_type="RequestEntityTooLarge"
    )
