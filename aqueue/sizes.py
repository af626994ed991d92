"""Memory sizes as settings and CLI options give them: `200000` (KiB, as Celery's), `200MB`."""

from __future__ import annotations

import re

from .exceptions import ConfigurationError

__all__ = ["parse_memory"]

_UNITS = {"": 1, "k": 1, "kb": 1, "kib": 1, "m": 1024, "mb": 1024, "mib": 1024}
_UNITS |= {"g": 1024**2, "gb": 1024**2, "gib": 1024**2}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_memory(text: str | int) -> int:
    """Return a memory size in KiB: a bare number is KiB (as Celery's), or `200MB`, `1.5GiB`."""
    if isinstance(text, int):
        value, unit = float(text), ""
    else:
        match = _SIZE.fullmatch(text)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ConfigurationError(
                f"{text!r} is not a memory size; write KiB as a number, or e.g. 200MB or 1GiB"
            )
        value, unit = float(match.group(1)), match.group(2).lower()
    kib = int(value * _UNITS[unit])
    if kib < 1:
        raise ConfigurationError(f"{text!r}: a memory limit must be at least 1 KiB")
    return kib
