"""Broker and backend URLs: their scheme, and their redacted form for logs and reprs."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from .exceptions import ConfigurationError

__all__ = ["redact", "scheme_of", "secrets_in"]


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
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{user}:***@{host}" + (f":{port}" if port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def secrets_in(url: str) -> list[str]:
    """Return the secrets a URL carries (its password), to scrub them from any output."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password] if password else []
