"""HTTP guards of the public service: bearer-token auth and a request body size cap (ASGI)."""

from __future__ import annotations

import hmac
import json
import logging
import os
from typing import Any, Awaitable, Callable, Iterable

log = logging.getLogger("arm.serve")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Probes and the page shell (static, no data) stay reachable without the token; the page
# sends the token the user types with every API call.
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)


async def _json(send: Send, status: int, body: dict[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v
    return None


class BearerAuthMiddleware:
    """401 unless `Authorization: Bearer <token>` matches the token in env var `token_env`.

    The token is read when the server starts; an unset or empty variable disables auth
    (logged loudly). Comparison is constant-time; the token is never logged.
    """

    def __init__(self, app: ASGIApp, token_env: str = "ARM_SERVE_TOKEN"):
        self.app = app
        self.token_env = token_env
        token = os.environ.get(token_env, "")
        self._token = token.encode() if token else None
        if self._token is None:
            log.warning("bearer-token auth is off: %s is not set", token_env)

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def _open(self, path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._token is None or self._open(scope.get("path", "")):
            return await self.app(scope, receive, send)
        value = _header(scope, b"authorization") or b""
        scheme, _, given = value.partition(b" ")
        if scheme.lower() == b"bearer" and given and hmac.compare_digest(given.strip(), self._token):
            return await self.app(scope, receive, send)
        reason = "missing bearer token" if not value else "invalid bearer token"
        await _json(
            send,
            401,
            {"error": f"Authorization: {reason}", "detail": [{"loc": ["Authorization"], "msg": reason, "type": "unauthorized"}]},
            headers=[(b"www-authenticate", b'Bearer realm="arm"')],
        )


class BodyLimitMiddleware:
    """413 for a request body over `max_bytes`, by Content-Length or while it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _json(send, 400, {"error": "Content-Length: not an integer"})
            if declared > self.max_bytes:
                return await self._too_large(send)
        # Buffer the body (bounded by max_bytes) so an oversized chunked upload is refused before
        # the app sees any of it; the app then reads the buffered copy.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                return await self._too_large(send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as a server would

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        msg = f"request body is over the limit of {self.max_bytes} bytes"
        await _json(send, 413, {"error": f"body: {msg}", "detail": [{"loc": ["body"], "msg": msg, "type": "too_large"}]})

