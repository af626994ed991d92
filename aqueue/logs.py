"""Worker logging: Celery's line format, and secrets scrubbed from every record."""

from __future__ import annotations

import logging
from collections.abc import Iterable

__all__ = ["SecretFilter", "setup_logging"]

FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


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


def setup_logging(level: str | int, secrets: Iterable[str] = ()) -> None:
    """Log to stderr in Celery's format, at `level`, with `secrets` scrubbed."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
