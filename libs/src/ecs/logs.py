"""One log format for the whole process: structlog's events and the standard library's records
(uvicorn, SQLAlchemy, asyncio, nats) alike are JSON lines with the service name and context ids,
and every line passes the masking after its traceback is formatted, so no caller's number, ID
number or name reaches a log, not even inside an exception's text. SQL parameter values are never
logged (ecs.db: ``hide_parameters``); a request that fails writes one traceback."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

_SENSITIVE_KEYS = frozenset({"number", "caller_number", "phone", "id_number", "name", "caller_name"})
# Mainland mobile numbers, landlines with area code, 18-character resident ID numbers (GB 11643).
# A run of digits inside a longer word (a hex message id, a UUID) is not a number.
_PHONE_OR_ID = re.compile(
    r"(?<![0-9A-Za-z_+\-])(\+?86[ -]?)?(1\d{2}[ -]?\d{4}[ -]?\d{4}|0\d{2,3}[ -]?\d{7,8}|\d{17}[\dXx])(?![0-9A-Za-z_\-])"
)


def mask_number(value: str) -> str:
    """Keep the first three and the last two characters so a number stays recognisable to staff."""
    if len(value) <= 5:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 5) + value[-2:]


def mask_text(text: str) -> str:
    """``text`` with every phone or ID number in it masked (``mask_number``)."""
    return _PHONE_OR_ID.sub(lambda m: mask_number(m.group(0)), text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: (mask_number(str(v)) if k in _SENSITIVE_KEYS and v else _mask_value(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask_value(v) for v in value]
    if isinstance(value, BaseException):
        return mask_text(f"{type(value).__name__}: {value}")
    return value


def _mask_sensitive(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key, value in list(event_dict.items()):
        if key in _SENSITIVE_KEYS and value:
            event_dict[key] = mask_number(str(value))
        else:
            event_dict[key] = _mask_value(value)
    return event_dict


class _OneTracebackPerRequest(logging.Filter):
    """ecs.web logs a failed request with its traceback (``http.unhandled``); Starlette re-raises
    it afterwards and uvicorn would write the same traceback again."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Exception in ASGI application")


def configure_logging(service: str, level: str = "INFO", json: bool = True) -> None:
    """Set up structlog and the standard library's root logger once per process, both through the
    same masking and renderer; context ids come from structlog.contextvars."""
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks are formatted first and masked after: an exception's text is masked too.
    tail: list[Any] = [structlog.processors.format_exc_info, _mask_sensitive, renderer]

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(lvl)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.error").addFilter(_OneTracebackPerRequest())
    # Alembic narrates every start-up at INFO; only its warnings are worth a log line.
    logging.getLogger("alembic").setLevel(max(lvl, logging.WARNING))
    # SQLAlchemy's statement log carries parameter values: never below WARNING.
    logging.getLogger("sqlalchemy.engine").setLevel(max(lvl, logging.WARNING))
    # aiosqlite's DEBUG lines name every call its thread runs, with the statement's parameters:
    # never below INFO (they would also pass a DEBUG level on to every SQLite connection's thread).
    logging.getLogger("aiosqlite").setLevel(max(lvl, logging.INFO))
    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
