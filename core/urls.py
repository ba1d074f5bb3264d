"""Service URLs in messages: passwords never reach logs, errors or reprs."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def hide_password(url: str) -> tuple[str, str | None]:
    """The URL with its password replaced by ``***``, and the password (to scrub messages)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>", None
    if password is None:
        return url, None
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc)), password


def safe_url(url: str) -> str:
    """``url`` as it may appear in a message."""
    return hide_password(url)[0]
