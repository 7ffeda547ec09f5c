"""The service's logs: one line per event on stderr, as JSON objects (for log collectors) or as
text (for a terminal).

Access events (logger ``blendrank.access``, one per HTTP request) carry ``method``, ``path``,
``status``, ``latency_ms`` and ``request_id``; every JSON line has ``ts`` (UTC, ISO 8601 with
milliseconds), ``level``, ``logger`` and ``msg``. The service's own events (``blendrank.serve``:
a rejected reload, a swapped model) and uvicorn's go through the same handler.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[str, ...] = ("json", "text", "auto")
ACCESS_LOGGER = "blendrank.access"
#: The loggers the service writes to, and uvicorn's (its startup and error messages).
SERVICE_LOGGERS = ("blendrank", "uvicorn", "uvicorn.error")
#: Fields of an access event, in the order they are written.
ACCESS_FIELDS = ("method", "path", "status", "latency_ms", "request_id")
# LogRecord's own attributes: everything else on a record came in through ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``msg``, then the record's
    ``extra=`` fields (an access event's :data:`ACCESS_FIELDS`) and ``exc`` for an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname.lower(),
                                "logger": record.name, "msg": record.getMessage()}
        line.update(_extras(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: msg key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        text = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        text = f"{text} {fields}" if fields else text
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def resolve_format(choice: str, stream: TextIO | None = None) -> LogFormat:
    """``json`` or ``text`` for a ``--log-format`` value; ``auto`` is text when ``stream``
    (default stderr) is a terminal, else JSON. ValueError for anything else."""
    if choice == "auto":
        stream = stream or sys.stderr
        return "text" if stream.isatty() else "json"
    if choice not in ("json", "text"):
        raise ValueError(f"log format {choice!r}: choose one of {', '.join(LOG_FORMATS)}")
    return choice  # type: ignore[return-value]


def configure_logging(fmt: LogFormat, stream: TextIO | None = None, level: int = logging.INFO) -> logging.Handler:
    """Send the service's loggers (:data:`SERVICE_LOGGERS`) to one handler on ``stream``
    (default stderr) in format ``fmt``; returns the handler. Called once by ``blendrank serve``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for name in SERVICE_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler] if name in ("blendrank", "uvicorn") else []
        logger.propagate = name == "uvicorn.error"  # to "uvicorn": one handler, one line
        logger.setLevel(level if name == "blendrank" else logging.WARNING)
    return handler
