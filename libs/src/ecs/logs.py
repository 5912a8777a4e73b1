"""structlog JSON logging with the service name, context ids, and caller numbers masked."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

_SENSITIVE_KEYS = frozenset({"number", "caller_number", "phone", "id_number", "name", "caller_name"})
# Mainland mobile numbers, landlines with area code, 18-character resident ID numbers.
_PHONE_OR_ID = re.compile(
    r"(?<![\d+])(\+?86[ -]?)?(1\d{2}[ -]?\d{4}[ -]?\d{4}|0\d{2,3}[ -]?\d{7,8}|\d{17}[\dXx])(?!\d)"
)


def mask_number(value: str) -> str:
    """Keep the first three and the last two characters so a number stays recognisable to staff."""
    if len(value) <= 5:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 5) + value[-2:]


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return _PHONE_OR_ID.sub(lambda m: mask_number(m.group(0)), value)
    if isinstance(value, dict):
        return {k: (mask_number(str(v)) if k in _SENSITIVE_KEYS and v else _mask_value(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask_value(v) for v in value]
    return value


def _mask_sensitive(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key, value in list(event_dict.items()):
        if key in _SENSITIVE_KEYS and value:
            event_dict[key] = mask_number(str(value))
        else:
            event_dict[key] = _mask_value(value)
    return event_dict


def configure_logging(service: str, level: str = "INFO", json: bool = True) -> None:
    """Set up structlog once per process; context ids come from structlog.contextvars."""
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    logging.basicConfig(stream=sys.stdout, level=lvl, format="%(message)s")
    # Alembic narrates every start-up at INFO; only its warnings are worth a log line.
    logging.getLogger("alembic").setLevel(max(lvl, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_sensitive,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
