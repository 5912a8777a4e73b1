"""One error base class with a code and an HTTP status, mapped to problem+json in ecs.web."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(AppError):
    status, code, title = 422, "invalid_input", "Invalid input"


class Unauthorized(AppError):
    status, code, title = 401, "unauthorized", "Not authenticated"


class Forbidden(AppError):
    """403: the caller may not do this (a drill runner on live data, an author approving their own
    alert); the detail says why."""

    status, code, title = 403, "forbidden", "Forbidden"


class MissingRole(Forbidden):
    """403: the caller's token holds none of the roles the action needs."""

    title = "Missing role"


class NotFound(AppError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(AppError):
    status, code, title = 409, "conflict", "Conflict"


class StaleVersion(Conflict):
    code, title = "stale_version", "Stale version"


class IllegalTransition(Conflict):
    code, title = "illegal_transition", "Transition refused"


class PayloadTooLarge(AppError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(AppError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class Poison(Exception):
    """A message that can never succeed: it goes to the dead-letter subject with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Transient(Exception):
    """A failure worth retrying later (a database or broker hiccup)."""
