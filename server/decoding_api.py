"""The ``decoding`` request field: admission, hand-off to the engine, and the echo.

A pure ASGI middleware in front of vLLM's OpenAI routes. For ``POST
/v1/chat/completions`` and ``/v1/completions`` it validates the ``decoding`` object
against the strategy registry (4xx in the OpenAI error shape, ``param`` naming the field),
moves it into ``vllm_xargs`` (vLLM drops unknown top-level fields silently), and adds the
applied strategy with all its parameters to the response object (and to every streamed
chunk). Everything else passes through untouched, so plain requests behave exactly as
on ``vllm serve``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from decoding.strategies import Decoding, DecodingParamError, resolve
from decoding.wire import DECODING_KEY, RESERVED_KEYS, encode_decoding
from server.metrics import Metrics

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
IMAGE_PARTS = {"image_url", "image", "image_pil", "image_embeds", "input_image"}


def error_body(
    message: str, status: int, param: str | None = None, err_type: str = "BadRequestError"
) -> bytes:
    """OpenAI error shape; ``code`` is the HTTP status as vLLM reports it."""
    return json.dumps(
        {"error": {"message": message, "type": err_type, "param": param, "code": status}}
    ).encode()


class RequestRejected(Exception):
    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        err_type: str = "BadRequestError",
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.err_type = message, status, param, err_type


def has_image(body: dict[str, Any]) -> bool:
    for msg in body.get("messages") or []:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") in IMAGE_PARTS for p in content
        ):
            return True
    return False


def admit(body: Any, kind: str, enabled: list[str]) -> tuple[dict[str, Any], Decoding]:
    """Validate and rewrite one request body; raise :class:`RequestRejected`."""
    if not isinstance(body, dict):
        raise RequestRejected(f"request body must be a JSON object, got {type(body).__name__}")
    try:
        decoding = resolve(body.pop("decoding", None), enabled=enabled)
        decoding.strategy.check_request(decoding.params, body)
        body = decoding.strategy.adjust_request(decoding.params, body)
    except DecodingParamError as exc:
        raise RequestRejected(exc.message, param=exc.param) from None
    if decoding.strategy.needs_image and (kind != "chat" or not has_image(body)):
        raise RequestRejected(
            f"strategy {decoding.name!r} needs an image, but the request has none "
            f"(send a chat request with an image_url part)",
            param="decoding.strategy",
        )
    xargs = body.get("vllm_xargs")
    if xargs is None:
        xargs = {}
    if not isinstance(xargs, dict):
        raise RequestRejected(f"'vllm_xargs' must be an object, got {xargs!r}", param="vllm_xargs")
    for key in RESERVED_KEYS:
        if key in xargs:
            # The engine key flags engine-internal requests (look-ahead probes, pairs).
            raise RequestRejected(
                f"'vllm_xargs.{key}' is reserved; use 'decoding'", param=f"vllm_xargs.{key}"
            )
    if decoding.name != "none":  # plain requests reach vLLM exactly as sent
        wire = encode_decoding(decoding.name, decoding.params.model_dump())
        xargs = {**xargs, DECODING_KEY: wire}
    if xargs:
        body["vllm_xargs"] = xargs
    return body, decoding


class DecodingMiddleware:
    def __init__(
        self, app: Any, *, enabled: list[str], metrics: Metrics | None, max_body_bytes: int
    ) -> None:
        self.app = app
        self.enabled = enabled
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if kind is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        strategy: str | None = None
        try:
            raw = await self._read_body(receive)
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RequestRejected(f"request body is not valid JSON: {exc}") from None
            if isinstance(body, dict) and isinstance(body.get("decoding"), dict):
                strategy = body["decoding"].get("strategy", "none")
            elif isinstance(body, dict) and body.get("decoding") is None:
                strategy = "none"
            body, decoding = admit(body, kind, self.enabled)
        except RequestRejected as exc:
            if self.metrics is not None:
                self.metrics.http_error(strategy, exc.status, exc.err_type)
            await _respond(
                send, exc.status, error_body(exc.message, exc.status, exc.param, exc.err_type)
            )
            return
        await self._forward(scope, receive, send, json.dumps(body).encode(), decoding)

    async def _read_body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise RequestRejected("client disconnected", status=499)
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise RequestRejected(
                    f"request body exceeds {self.max_body_bytes} bytes",
                    status=413,
                    err_type="RequestEntityTooLarge",
                )
            chunks.append(chunk)
            if not msg.get("more_body"):
                return b"".join(chunks)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, decoding: Decoding
    ) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        scope = {**scope, "headers": headers}
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls see the real disconnect

        echo = decoding.as_dict()
        await self.app(scope, replay, _ResponseRewriter(send, echo, self.metrics, decoding.name))


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _ResponseRewriter:
    """Adds ``decoding`` to JSON bodies and to each SSE chunk; counts error responses."""

    def __init__(
        self, send: Send, echo: dict[str, Any], metrics: Metrics | None, strategy: str
    ) -> None:
        self.send, self.echo, self.metrics, self.strategy = send, echo, metrics, strategy
        self.start: Message | None = None
        self.stream = False
        self.buffer = b""

    async def __call__(self, msg: Message) -> None:
        if msg["type"] == "http.response.start":
            self.start = msg
            ctype = dict(msg.get("headers", [])).get(b"content-type", b"")
            self.stream = ctype.startswith(b"text/event-stream")
            if self.stream:
                await self.send(msg)
            return
        if msg["type"] != "http.response.body":
            await self.send(msg)
            return
        if self.stream:
            await self._stream_chunk(msg)
            return
        self.buffer += msg.get("body", b"")
        if msg.get("more_body"):
            return
        await self._finish_json()

    async def _finish_json(self) -> None:
        assert self.start is not None
        status = self.start["status"]
        body = self.buffer
        if status < 400:
            try:
                obj = json.loads(body)
                if isinstance(obj, dict):
                    obj["decoding"] = self.echo
                    body = json.dumps(obj).encode()
            except json.JSONDecodeError:
                pass
        elif self.metrics is not None:
            self.metrics.http_error(self.strategy, status, _error_type(body))
        headers = [
            (k, v) for k, v in self.start.get("headers", []) if k.lower() != b"content-length"
        ]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def _stream_chunk(self, msg: Message) -> None:
        self.buffer += msg.get("body", b"")
        *events, self.buffer = self.buffer.split(b"\n\n")
        out = b"".join(self._rewrite_event(e) + b"\n\n" for e in events)
        more = msg.get("more_body", False)
        if not more and self.buffer:
            out, self.buffer = out + self.buffer, b""
        if out or not more:
            await self.send({"type": "http.response.body", "body": out, "more_body": more})

    def _rewrite_event(self, event: bytes) -> bytes:
        if not event.startswith(b"data: ") or event.startswith(b"data: [DONE]"):
            return event
        try:
            obj = json.loads(event[6:])
        except json.JSONDecodeError:
            return event
        if not isinstance(obj, dict):
            return event
        if "error" in obj:
            if self.metrics is not None:
                err = obj["error"] if isinstance(obj["error"], dict) else {}
                self.metrics.http_error(
                    self.strategy, int(err.get("code") or 500), str(err.get("type") or "error")
                )
            return event
        obj["decoding"] = self.echo
        return b"data: " + json.dumps(obj).encode()


def _error_type(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return "error"
