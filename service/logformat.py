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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": utc_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {k: v for k, v in record.__dict__.items() if k not in self.RESERVED}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def log_to_stderr(json_lines: bool, level: int | str) -> None:
    """Every logger of this process writes to stderr, from ``level`` on, as JSON or as text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # "Context impl SQLiteImpl." says nothing
        logging.getLogger("alembic").setLevel(logging.WARNING)


def logs_json() -> bool:
    """Whether this process's log lines are JSON (what its worker processes should write)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
