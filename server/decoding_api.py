"""The ``decoding`` request field: admission, hand-off to the engine, and the echo.

A pure ASGI middleware in front of vLLM's routes. Every POST body is read within the
size limit (413) and parsed within the depth limit (400). On the generation endpoints
(:mod:`server.endpoints`: chat and text completions, Responses, Anthropic Messages) it
validates the ``decoding`` object against the strategy registry (4xx in the OpenAI error
shape, ``param`` naming the field), charges the request's expected cost against the
decoding budget (:mod:`server.admission`; 429 with ``Retry-After`` when it cannot be
admitted in time), moves the object into ``vllm_xargs`` (vLLM drops unknown top-level
fields silently), and adds the applied strategy to the response object (and to the
streamed events that carry it) and its cost to ``usage.decoding``. A ``decoding`` object
sent to any other endpoint is refused with a 400 that names it. Plain requests otherwise
reach vLLM exactly as on ``vllm serve``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from decoding.strategies import Decoding, DecodingParamError, resolve
from decoding.tally import Tally, open_tally
from decoding.wire import DECODING_KEY, RESERVED_KEYS, encode_decoding
from server import bodies
from server.admission import Admission, Overloaded
from server.endpoints import ENDPOINTS, Endpoint
from server.metrics import Metrics
from server.usage import decoding_usage

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def error_body(
    message: str,
    status: int,
    param: str | None = None,
    err_type: str = "BadRequestError",
    anthropic: bool = False,
) -> bytes:
    """OpenAI error shape; ``code`` is the HTTP status as vLLM reports it. Anthropic
    clients also get the top-level ``"type": "error"`` of their format."""
    body: dict[str, Any] = {
        "error": {"message": message, "type": err_type, "param": param, "code": status}
    }
    if anthropic:
        body = {"type": "error", **body}
    return json.dumps(body).encode()


class RequestRejected(Exception):
    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        err_type: str = "BadRequestError",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.err_type = message, status, param, err_type
        self.headers = headers or []


def check_reserved(body: dict[str, Any]) -> dict[str, Any] | None:
    """``vllm_xargs`` of ``body`` (None when absent); refuses our reserved keys."""
    xargs = body.get("vllm_xargs")
    if xargs is None:
        return None
    if not isinstance(xargs, dict):
        raise RequestRejected(f"'vllm_xargs' must be an object, got {xargs!r}", param="vllm_xargs")
    for key in RESERVED_KEYS:
        if key in xargs:
            # The engine key flags engine-internal requests (look-ahead probes, pairs).
            raise RequestRejected(
                f"'vllm_xargs.{key}' is reserved; use 'decoding'", param=f"vllm_xargs.{key}"
            )
    return xargs


def admit(
    body: Any,
    endpoint: Endpoint | str,
    enabled: list[str],
    unavailable: dict[str, str] | None = None,
) -> tuple[dict[str, Any], Decoding]:
    """Validate and rewrite one request body for ``endpoint`` (or its name, e.g.
    ``"chat"``); raise :class:`RequestRejected`. ``unavailable`` maps strategies that are
    undefined on the served model to why."""
    if isinstance(endpoint, str):
        endpoint = next(e for e in ENDPOINTS.values() if e.name == endpoint)
    if not isinstance(body, dict):
        raise RequestRejected(f"request body must be a JSON object, got {type(body).__name__}")
    try:
        decoding = resolve(body.pop("decoding", None), enabled=enabled)
        decoding.strategy.check_request(decoding.params, body)
        body = decoding.strategy.adjust_request(decoding.params, body)
    except DecodingParamError as exc:
        raise RequestRejected(exc.message, param=exc.param) from None
    if unavailable and decoding.name in unavailable:
        raise RequestRejected(
            f"strategy {decoding.name!r} is not available on this model: "
            f"{unavailable[decoding.name]}",
            param="decoding.strategy",
        )
    if decoding.strategy.needs_image and not endpoint.has_image(body):
        raise RequestRejected(
            f"strategy {decoding.name!r} needs an image, but the {endpoint.path} request has "
            f"none ({endpoint.image_hint})",
            param="decoding.strategy",
        )
    xargs = check_reserved(body) or {}
    if decoding.name != "none":  # plain requests reach vLLM exactly as sent
        wire = encode_decoding(decoding.name, decoding.params.model_dump())
        xargs = {**xargs, DECODING_KEY: wire}
    if xargs:
        body["vllm_xargs"] = xargs
    return body, decoding


def refuse_elsewhere(body: Any, path: str) -> None:
    """Bodies for endpoints without strategies: ``decoding`` is refused, never dropped."""
    if not isinstance(body, dict):
        return
    if "decoding" in body:
        supported = ", ".join(ENDPOINTS)
        raise RequestRejected(
            f"'decoding' is not supported on {path}; send it to one of {supported}",
            param="decoding",
        )
    check_reserved(body)


def _strategy_label(body: Any) -> str | None:
    if not isinstance(body, dict) or body.get("decoding") is None:
        return "none"
    d = body["decoding"]
    return d.get("strategy", "none") if isinstance(d, dict) else None


class DecodingMiddleware:
    def __init__(
        self,
        app: Any,
        *,
        enabled: list[str],
        metrics: Metrics | None,
        max_body_bytes: int,
        admission: Admission | None = None,
        unavailable: dict[str, str] | None = None,
    ) -> None:
        self.app = app
        self.enabled = enabled
        self.unavailable = unavailable or {}
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = ENDPOINTS.get(path)
        strategy: str | None = None
        anthropic = path.startswith("/v1/messages")
        try:
            raw = await self._read_body(receive)
            if endpoint is None:
                if _is_json(scope, raw):
                    refuse_elsewhere(self._parse(raw), path)
                await self._forward(scope, receive, self.app, send, raw)
                return
            body = self._parse(raw)
            strategy = _strategy_label(body)
            body, decoding = admit(body, endpoint, self.enabled, self.unavailable)
            cost = decoding.strategy.cost(decoding.params) * endpoint.answers(body)
            ticket = await self._acquire(decoding.name, cost)
        except RequestRejected as exc:
            if self.metrics is not None:
                self.metrics.http_error(strategy, exc.status, exc.err_type)
            body_bytes = error_body(exc.message, exc.status, exc.param, exc.err_type, anthropic)
            await _respond(send, exc.status, body_bytes, exc.headers)
            return
        tally = open_tally()
        rewriter = _ResponseRewriter(
            send, endpoint, decoding, cost, tally, self.metrics, anthropic=anthropic
        )
        try:
            await self._forward(scope, receive, self.app, rewriter, json.dumps(body).encode())
        finally:
            if ticket is not None and self.admission is not None:
                self.admission.release(ticket)

    def _parse(self, raw: bytes) -> Any:
        try:
            return bodies.parse(raw)
        except bodies.BodyError as exc:
            raise RequestRejected(exc.message, exc.status, err_type=exc.err_type) from None

    async def _acquire(self, strategy: str, cost: float):  # noqa: ANN202
        if self.admission is None:
            return None
        try:
            return await self.admission.acquire(strategy, cost)
        except Overloaded as exc:
            raise RequestRejected(
                exc.message,
                status=429,
                param="decoding",
                err_type="RateLimitError",
                headers=[(b"retry-after", str(exc.retry_after).encode())],
            ) from None

    async def _read_body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise RequestRejected("client disconnected", status=499)
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                exc = bodies.too_large(self.max_body_bytes)
                raise RequestRejected(exc.message, exc.status, err_type=exc.err_type)
            chunks.append(chunk)
            if not msg.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    async def _forward(scope: Scope, receive: Receive, app: Any, send: Send, body: bytes) -> None:
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

        await app(scope, replay, send)


def _is_json(scope: Scope, raw: bytes) -> bool:
    ctype = dict(scope.get("headers", [])).get(b"content-type", b"")
    return bool(raw) and (ctype.startswith(b"application/json") or not ctype)


async def _respond(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _ResponseRewriter:
    """Adds ``decoding`` and ``usage.decoding`` to JSON bodies and to the streamed events
    that carry the response object or usage; counts error responses."""

    def __init__(
        self,
        send: Send,
        endpoint: Endpoint,
        decoding: Decoding,
        cost: float,
        tally: Tally,
        metrics: Metrics | None,
        anthropic: bool = False,
    ) -> None:
        self.send, self.endpoint, self.metrics = send, endpoint, metrics
        self.echo, self.strategy = decoding.as_dict(), decoding.name
        self.cost, self.tally = cost, tally
        self.start: Message | None = None
        self.stream = False
        self.buffer = b""

    def _decorate(self, obj: dict[str, Any]) -> None:
        obj["decoding"] = self.echo
        usage = obj.get("usage")
        if isinstance(usage, dict):
            usage["decoding"] = decoding_usage(self.strategy, self.cost, self.tally, usage)

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
                    self._decorate(obj)
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
        # An SSE event: optional "event: NAME" line, then "data: JSON".
        name, sep, data = b"", b"", event
        if event.startswith(b"event: "):
            name, sep, data = event.partition(b"\n")
            if not sep:
                return event
        if not data.startswith(b"data: ") or data.startswith(b"data: [DONE]"):
            return event
        try:
            obj = json.loads(data[6:])
        except json.JSONDecodeError:
            return event
        if not isinstance(obj, dict):
            return event
        if "error" in obj and (obj.get("type") in (None, "error")):
            if self.metrics is not None:
                err = obj["error"] if isinstance(obj["error"], dict) else {}
                code = err.get("code")
                self.metrics.http_error(
                    self.strategy,
                    code if isinstance(code, int) else 500,
                    str(err.get("type") or "error"),
                )
            return event
        target = self.endpoint.stream_object(name[7:].decode(errors="replace"), obj)
        if target is None:
            return event
        self._decorate(target)
        return name + sep + b"data: " + json.dumps(obj).encode()


def _error_type(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return "error"
