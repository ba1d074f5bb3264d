"""attrs validators for configuration values, shared by the core's settings and every plugin's
``[plugins.<name>]`` section (``PluginConfig.structure`` turns a ``ValueError`` raised here into
a ``ConfigError`` naming the full key).

Messages name the field and the problem; validators of secrets never echo the value.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import attrs

__all__ = ["LOOPBACK_HOSTS", "api_base_url", "non_empty_secret", "not_negative", "positive"]

#: Hosts a plain-http base URL may point at (a local fake server; nothing leaves the machine).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name}: must be greater than 0, got {value!r}")


def not_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name}: must be 0 or more, got {value!r}")


def non_empty_secret(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.strip():
        raise ValueError(f"{attribute.name}: must not be empty")  # never echo a credential


def api_base_url(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    """An https URL, or plain http to a loopback host only: a gateway's credentials travel in
    every request, so they must not cross a network unencrypted."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{attribute.name}: expected an http(s) URL, got {value!r}")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(
            f"{attribute.name}: plain http is allowed to a loopback host (a local fake) only, "
            f"got {value!r}"
        )
