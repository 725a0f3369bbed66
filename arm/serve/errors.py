"""Client errors of the service: an HTTP status, the offending field and a reason.

The JSON body has the same shape as BentoML's own 400 for schema errors
(`{"error": ..., "detail": [{"loc": [field], "msg": ...}]}`), so a client handles one format.
"""

from __future__ import annotations

from typing import Any


class RequestError(ValueError):
    def __init__(self, field: str, message: str, status: int = 400):
        if not 400 <= status < 500:
            raise ValueError(f"RequestError is for 4xx statuses, got {status}")
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def body(self) -> dict[str, Any]:
        return {
            "error": f"{self.field}: {self.message}",
            "detail": [{"loc": [self.field], "msg": self.message, "type": _TYPES.get(self.status, "invalid")}],
        }


_TYPES = {
    400: "invalid",
    401: "unauthorized",
    413: "too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
}
