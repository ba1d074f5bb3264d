"""Developer sessions: ``nox`` runs tests, lint and types; ``nox -s bench`` prints figures.

Each session installs the project from this checkout into its own virtualenv, so a session
that passes here passes on a fresh machine.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "types"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (asyncio and trio backends), plus the example plugin built and loaded."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "core", "plugins", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "core", "plugins", "tests", "noxfile.py")


@nox.session
def types(session: nox.Session) -> None:
    # A regular (not editable) install: mypy cannot follow setuptools' editable finder for
    # the core/ -> aegispay mapping, but checks the installed, py.typed package fine.
    session.install(".[lint]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Speed and memory figures beside a same-run baseline (docs/benchmarks.md records them).

    ``nox -s bench -- --payments 50000`` passes options through to ``aegispay bench``.
    """
    session.install(".")
    session.run("aegispay", "bench", *session.posargs)
