"""The public service's client for the model service: JSON over BentoML's local socket.

BentoML's own dependency proxy (1.4.40) renews its aiohttp session every 100 calls by closing
the old one while other calls are still in flight on it, so under load some requests fail with
"Cannot write to closing transport" (measured: 10-30 % of requests at 32 clients); it also
pickles its payloads. This client keeps one httpx connection pool for the life of the process,
speaks the model service's plain JSON API, and retries a call the transport dropped (all model
calls are seeded, so a retry returns the same answer).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote, urlparse

import httpx

log = logging.getLogger("arm.serve")


class ModelServiceError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"model service answered {status}: {message}")
        self.status = status


def transport_for(url: str) -> tuple[str, httpx.AsyncHTTPTransport | None]:
    """(base URL, transport) for a BentoML service address: file:// (unix socket), tcp:// or http(s)://."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return "http://arm-model", httpx.AsyncHTTPTransport(uds=unquote(parsed.path))
    if parsed.scheme == "tcp":
        return f"http://{parsed.netloc}", None
    if parsed.scheme in ("http", "https"):
        return url, None
    raise ValueError(f"unsupported model service address {url!r}")


class ModelClient:
    def __init__(self, url: str, timeout_s: float, retries: int = 2, max_connections: int = 256):
        base, transport = transport_for(url)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.AsyncClient(base_url=base, transport=transport, timeout=timeout_s, limits=limits)
        self.retries = retries

    async def call(self, route: str, payload: dict[str, Any], timeout_s: float | None = None) -> Any:
        kwargs: dict[str, Any] = {"json": payload}
        if timeout_s is not None:
            kwargs["timeout"] = timeout_s
        for attempt in range(self.retries + 1):
            try:
                resp = await self._client.post(route, **kwargs)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
                if attempt == self.retries:
                    raise ModelServiceError(502, f"{type(e).__name__}: {e}") from e
                log.warning("model service call %s dropped (%s); retrying", route, type(e).__name__)
                continue
            except httpx.TimeoutException as e:
                raise ModelServiceError(504, f"no answer in time ({type(e).__name__})") from e
            if resp.status_code != 200:
                raise ModelServiceError(resp.status_code, resp.text[:300])
            return resp.json()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._client.aclose()
