"""OAuth2 client credentials: one cached bearer token, refreshed before expiry and on a 401.

Concurrent calls share the token. When it must be renewed, only one task asks PayPal; the
others wait on the lock and then use the token it got. A 401 renews the token only if the
rejected token is still the current one, so a burst of 401s causes exactly one refresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import attrs
import httpx

from .mapping import error_result, parse_error

__all__ = ["TokenError", "TokenSource"]


class TokenError(Exception):
    """No token could be had. ``retry_after_s`` carries PayPal's Retry-After on a 429.

    The operation that needed the token was never sent, whatever happened to the token call.
    The message never contains the credentials or the token.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@attrs.frozen
class _Token:
    value: str = attrs.field(repr=False)
    expires_at: float  # on the monotonic clock


class TokenSource:
    """Hands out a valid bearer token for ``client_id`` / ``client_secret``."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        refresh_margin_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._credentials = (client_id, client_secret)
        self._margin = refresh_margin_s
        self._clock = clock
        self._token: _Token | None = None
        self._lock = anyio.Lock()
        self.fetches = 0  # tokens obtained from PayPal: tests check a burst of 401s makes one

    def __repr__(self) -> str:
        return "TokenSource(client_id=<hidden>, client_secret=<hidden>)"

    def _valid(self) -> str | None:
        token = self._token
        if token is not None and self._clock() < token.expires_at - self._margin:
            return token.value
        return None

    async def get(self, client: httpx.AsyncClient) -> str:
        current = self._valid()
        if current is not None:
            return current
        async with self._lock:
            current = self._valid()  # another task may have refreshed while we waited
            if current is not None:
                return current
            return await self._fetch(client)

    async def refresh(self, client: httpx.AsyncClient, rejected: str) -> str:
        """A call was answered 401 with ``rejected``: renew it, unless someone already has."""
        async with self._lock:
            token = self._token
            if token is not None and token.value != rejected:
                return token.value
            self._token = None
            return await self._fetch(client)

    async def _fetch(self, client: httpx.AsyncClient) -> str:
        started = self._clock()
        try:
            response = await client.post(
                "/v1/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=self._credentials,
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise TokenError(f"PayPal token request failed: {type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            result = error_result(response.status_code, body, response.headers)
            code = parse_error(response.status_code, body).code
            raise TokenError(
                f"PayPal token request answered HTTP {response.status_code} ({code})",
                retry_after_s=result.retry_after_s,
            )
        value = body.get("access_token") if isinstance(body, dict) else None
        lifetime = body.get("expires_in") if isinstance(body, dict) else None
        if not isinstance(value, str) or not value:
            raise TokenError("PayPal token answer has no access_token")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
            lifetime = 0  # unknown lifetime: use it for this call, renew on the next
        self._token = _Token(value, started + float(lifetime))
        self.fetches += 1
        return value
