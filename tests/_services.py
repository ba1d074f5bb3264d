"""Where the real services are, and what a test does when one is unreachable."""

from __future__ import annotations

import os

import pytest

POSTGRES_URL = os.environ.get(
    "AEGISPAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("AEGISPAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def service_unavailable(name: str, reason: str) -> None:
    """Skip (with the reason shown) when a real service is unreachable - or fail, in CI.

    ``.ci/run`` sets ``AEGISPAY_TEST_REQUIRE_SERVICES=1``: there PostgreSQL and Redis must be
    reachable, and a test that cannot reach them fails instead of quietly skipping.
    """
    message = f"{name} is not reachable: {reason}"
    if os.environ.get("AEGISPAY_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (AEGISPAY_TEST_REQUIRE_SERVICES=1 makes this mandatory)")
    pytest.skip(message)
