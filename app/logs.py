"""Structured logging with a correlation id (request or connection) on every line."""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

# The id of the HTTP request or Socket.IO connection being served, "-" outside one.
correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="-")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(correlation_id)s] %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(correlation_id)s %(message)s"


# Control characters as escapes (\n, \x1b...): a value a client chose (a path, an
# event name) must not start a forged line in a text log or drive a terminal.
_ESCAPES = {code: ascii(chr(code))[1:-1] for code in (*range(0x20), 0x7F, 0x85, 0x2028, 0x2029)}


class TextFormatter(logging.Formatter):
    """One record, one line: the message and its fields with control characters
    escaped; a traceback (ours, not a client's) keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_ESCAPES)


class CorrelationFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = correlation_id.get()
        return True


def configure_logging(level: str, fmt: Literal["json", "text"]) -> None:
    """Replace the root handlers; safe to call more than once (tests build many apps)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CorrelationFilter())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level", "asctime": "time"})
        )
    else:
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # These libraries log every packet at INFO; ours says what matters.
    for noisy in ("engineio.server", "socketio.server", "aiohttp.access", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
