"""Log lines: as JSON objects (the default of ``gradwire serve``) or as text, on stderr.

:class:`JsonFormatter` writes each record as one line: ``time`` (ISO 8601, UTC, milliseconds:
``2026-11-28T21:49:49.123Z``), ``level``, ``logger``, ``message``, and the record's ``extra``
fields as fields of their own, so that a log pipeline filters on ``run`` or ``code`` instead of
parsing text. The server and its worker processes log alike (:func:`log_to_stderr`).
"""

from __future__ import annotations

import json
import logging
import sys
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def utc_time(record: logging.LogRecord) -> str:
    """When ``record`` was made, in ISO 8601, UTC, to the millisecond."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
"""A record's own attributes: whatever else it has came as ``extra`` fields."""


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The ``extra`` fields a record was logged with (``run``, ``error``, ...); not the private
    ones a library's record factory adds to every record (Ray's ``_ray_timestamp_ns``)."""
    return {k: v for k, v in record.__dict__.items() if k not in RESERVED and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, then the ``extra`` fields as ``key=value`` (a value with spaces quoted,
    as JSON), so that the text lines lose nothing the JSON lines say."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        line = super().formatMessage(record)
        fields = " ".join(f"{k}={_text(v)}" for k, v in extra_fields(record).items())
        return f"{line} {fields}" if fields else line


def _text(value: object) -> str:
    shown = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(shown) if not shown or any(c.isspace() or c in '"=' for c in shown) else shown


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": utc_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= extra_fields(record)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def log_to_stderr(json_lines: bool, level: int | str) -> None:
    """Every logger of this process writes to stderr, from ``level`` on, as JSON or as text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # "Context impl SQLiteImpl." says nothing
        logging.getLogger("alembic").setLevel(logging.WARNING)


def logs_json() -> bool:
    """Whether this process's log lines are JSON (what its worker processes should write)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
