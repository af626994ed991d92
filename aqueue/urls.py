"""Broker and backend URLs: their scheme, and their redacted form for logs and reprs."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from .exceptions import ConfigurationError

__all__ = ["redact", "redact_text", "scheme_of", "secrets_in"]

# scheme://user:PASSWORD@ anywhere in a text; the password runs to the last "@" before a "/"
# or a blank, as urlsplit reads it (a password may hold an unquoted "@").
_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*:)[^\s/]*@")


def scheme_of(url: str) -> str:
    """Return the lowercased scheme of `url`, or raise a one-line `ConfigurationError`."""
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise ConfigurationError(
            f"{redact(url)!r} is not a URL; write it as scheme://..., "
            "e.g. sqlite:///aqueue.db, memory://, redis://localhost:6379/0"
        )
    return scheme.lower()


def redact(url: str) -> str:
    """Return `url` with its password replaced by `***`; safe for logs, reprs and errors."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not password:
        if "@" in url and not parts.netloc:  # no "//": "redis:/:pw@h" is no URL, but has one
            head, _, tail = url.rpartition("@")
            return f"{head.partition(':')[0]}:***@{tail}" if ":" in head else url
        return url
    user = parts.username or ""
    hosts = parts.netloc.rpartition("@")[2]  # as written: one host, or several (Sentinel)
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def redact_text(text: str) -> str:
    """Return `text` with the password of every URL in it replaced by `***`.

    For text that may hold URLs anywhere (a repr, a command line, an error message), where
    `redact` takes exactly one URL.
    """
    return _PASSWORD.sub(r"\1***@", text) if "://" in text else text


def secrets_in(url: str) -> list[str]:
    """Return the secrets a URL carries (its password), to scrub them from any output."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password] if password else []
