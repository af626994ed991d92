"""Worker logging: Celery's line format or JSON lines, secrets scrubbed, task ids on records.

`aqueue worker` configures the root logger only when the app has not: not when the app sets
`worker_hijack_root_logger = False` (as in Celery), and not when importing the app added
handlers to the root logger (a JSON handler of the project's own survives). Otherwise it logs
to stderr (or `--logfile`) in Celery's format, or one JSON object per line
(`--log-format json`).

Every record made while a task runs, the task's own `logging.getLogger(__name__)` ones too,
carries `task_id` and `task_name` attributes (None outside a task), from the worker's request
context: `install_task_records()` wraps the log record factory once, which any handler's
formatter can then use (`%(task_id)s`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
from collections.abc import Callable, Iterable
from typing import Any

from .request import current_request, running_request

__all__ = [
    "FORMAT",
    "TASK_FORMAT",
    "JsonFormatter",
    "SecretFilter",
    "TaskFormatter",
    "install_task_records",
    "setup_logging",
]

FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
#: Celery's worker_task_log_format: the line of a record logged while a task runs.
TASK_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"

#: The attributes of every LogRecord, left out of a JSON line's extra fields.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class SecretFilter(logging.Filter):
    """Replaces known secrets (URL passwords) with `***` in every record it sees.

    URLs are redacted where aqueue formats them; this filter is the second line of defence, for
    a password that reaches a log line some other way (an exception message from a driver).
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub the formatted message and any exception text."""
        if not self.secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        for secret in self.secrets:
            message = message.replace(secret, "***")
            if record.exc_text:
                record.exc_text = record.exc_text.replace(secret, "***")
        record.msg, record.args = message, ()
        return True


def install_task_records() -> None:
    """Give every log record `task_id` and `task_name` (None outside a task); idempotent."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "aqueue_task_records", False):
        return

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if current_request.get() is None:  # outside a task: one context variable read
            record.task_id = record.task_name = None
        else:
            request = running_request()
            assert request is not None
            record.task_id, record.task_name = request.id, request.task
        return record

    make.aqueue_task_records = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make)


class TaskFormatter(logging.Formatter):
    """Celery's format, with the task's name and id on the records logged during a task."""

    def __init__(self) -> None:
        super().__init__(FORMAT)
        self._task = logging.Formatter(TASK_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """Format a record, with the task format when a task's own code logged it.

        aqueue's own lines ("Task add[id] succeeded ...") name the task already.
        """
        if getattr(record, "task_id", None) and not record.name.startswith("aqueue"):
            return self._task.format(record)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, process, task_id, task_name.

    Any `extra={...}` fields are added as they are (unencodable ones as their repr); an
    exception's formatted traceback goes in `exc_info`.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line of JSON."""
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "task_id": getattr(record, "task_id", None),
            "task_name": getattr(record, "task_name", None),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc_info"] = record.exc_text
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        return json.dumps(line, default=repr)


FORMATTERS: dict[str, Callable[[], logging.Formatter]] = {
    "text": TaskFormatter,
    "json": JsonFormatter,
}


def setup_logging(
    level: str | int,
    secrets: Iterable[str] = (),
    *,
    log_format: str = "text",
    logfile: str | None = None,
) -> None:
    """Log to stderr (or `logfile`) at `level`, as text or JSON lines, with `secrets` scrubbed.

    It replaces the root logger's handlers: call it only when the app configured none
    (the CLI compares `root_handlers()` before and after importing the app).
    """
    install_task_records()
    handler: logging.Handler
    if logfile is not None:
        handler = logging.handlers.WatchedFileHandler(logfile, encoding="utf-8")
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(FORMATTERS[log_format]())
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def root_handlers() -> list[logging.Handler]:
    """Return the root logger's handlers now (compare before and after importing an app)."""
    return list(logging.getLogger().handlers)
