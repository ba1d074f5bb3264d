from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own directory: the default store is a SQLite file in the working
    directory, and no test may write one into the checkout (or share one with another)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on both backends: the anyio promise is tested, not assumed."""
    return str(request.param)
