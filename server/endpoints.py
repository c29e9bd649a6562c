"""The generation endpoints that accept ``decoding``, and where each puts the echo.

Four request formats reach vLLM's engine through ``SamplingParams.extra_args``
(``vllm_xargs``): OpenAI chat and text completions, the OpenAI Responses API and the
Anthropic Messages API (which vLLM converts into a chat request, ``vllm_xargs``
included). Each :class:`Endpoint` knows where its images live (for strategies that need
one), how many answers a request asks for, and where its response object, streamed
events and usage are, so that the applied strategy and its cost are echoed in that
endpoint's own shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]
#: Content-part types that carry an image (OpenAI chat, Responses, Anthropic).
IMAGE_PARTS = {"image_url", "image", "image_pil", "image_embeds", "input_image"}


def _parts_have_image(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") in IMAGE_PARTS for p in content
        ):
            return True
    return False


def _responses_have_image(body: JSON) -> bool:
    items = body.get("input")
    if not isinstance(items, list):
        return False
    # Items are messages ({"role", "content": [parts]}) or bare parts.
    return _parts_have_image(items) or any(
        isinstance(i, dict) and i.get("type") in IMAGE_PARTS for i in items
    )


@dataclass(frozen=True)
class Endpoint:
    path: str
    name: str
    #: Where a streamed event carries the response object (None: the event is it).
    stream_object: Callable[[str, JSON], JSON | None]
    has_image: Callable[[JSON], bool]
    #: The number of answers one request asks for.
    answers: Callable[[JSON], int]
    #: How to send an image here (for the 400 of a strategy that needs one).
    image_hint: str = "this endpoint takes no images"

    def response_usage(self, obj: JSON) -> JSON | None:
        usage = obj.get("usage")
        return usage if isinstance(usage, dict) else None


def _n(body: JSON) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def _chunk(_event: str, obj: JSON) -> JSON:
    return obj  # every chat/completion chunk is a response object of its own


def _responses_event(_event: str, obj: JSON) -> JSON | None:
    # response.created / in_progress / completed / incomplete / failed carry the response.
    resp = obj.get("response")
    return resp if isinstance(resp, dict) else None


def _messages_event(event: str, obj: JSON) -> JSON | None:
    if event == "message_start":
        msg = obj.get("message")
        return msg if isinstance(msg, dict) else None
    if event == "message_delta":
        return obj  # the final event with the stop reason and output usage
    return None


ENDPOINTS: dict[str, Endpoint] = {
    e.path: e
    for e in (
        Endpoint(
            "/v1/chat/completions",
            "chat",
            _chunk,
            lambda b: _parts_have_image(b.get("messages")),
            _n,
            "add an image_url content part to a message",
        ),
        Endpoint(
            "/v1/completions",
            "completion",
            _chunk,
            lambda b: False,
            _n,
            "text completions take no images: send a chat request with an image_url part",
        ),
        Endpoint(
            "/v1/responses",
            "responses",
            _responses_event,
            _responses_have_image,
            lambda b: 1,
            "add an input_image content part to an input message",
        ),
        Endpoint(
            "/v1/messages",
            "messages",
            _messages_event,
            lambda b: _parts_have_image(b.get("messages")),
            lambda b: 1,
            "add an image content block to a message",
        ),
    )
}
