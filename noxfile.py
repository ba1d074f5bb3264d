"""Developer sessions: ``nox`` runs tests, wheels, lint and types; ``nox -s bench`` prints figures.

Each session installs the project from this checkout into its own virtualenv, so a session
that passes here passes on a fresh machine. Gateway plugin packages (``aegispay-*/`` folders
with a ``pyproject.toml``) are found by globbing, so a new package is picked up unlisted.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import nox

nox.options.sessions = ["tests", "wheels", "lint", "types"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).resolve().parent
#: The gateways the ``wheels`` session requires ``aegispay plugins --json`` to list.
REQUIRED_GATEWAY_PLUGINS = ("stripe", "razorpay", "paypal")
# Never copied into a build tree: virtualenvs, VCS data and earlier build products.
_BUILD_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".nox", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


def _packages() -> list[Path]:
    """The gateway plugin packages in this checkout (``aegispay-<gateway>/``), sorted."""
    return sorted(p for p in ROOT.glob("aegispay-*") if (p / "pyproject.toml").is_file())


@nox.session
def tests(session: nox.Session) -> None:
    """The core test suite (asyncio and trio backends), then every package's own tests.

    The core suite runs first, without the gateway packages installed: some of its tests
    check exactly which plugins the entry points bring. Then each package is installed
    (editable, ``--no-deps``: the core is already there) and its tests run.
    ``nox -s tests -- <pytest args>`` runs only the core suite with those arguments.
    """
    session.install("-e", ".[test,asgi]")
    packages = _packages()
    if packages:  # a reused virtualenv may still hold them from the last run
        session.run("pip", "uninstall", "--yes", *(p.name for p in packages), silent=True)
    session.run("pytest", *session.posargs)
    if session.posargs:
        return
    for package in packages:
        session.install("--no-deps", "-e", str(package))
    for package in packages:
        if (package / "tests").is_dir():
            # One run per package, from its own folder: its pytest settings and conftest apply
            # and same-named test modules of different packages never collide.
            with session.chdir(package):
                session.run("pytest", "tests")


@nox.session
def wheels(session: nox.Session) -> None:
    """Build wheels of aegispay and every gateway package, install them (not editable) in a
    clean virtualenv, and check that ``aegispay plugins --json`` lists the gateway plugins.

    Then, from the same wheels: the new user's flow (``tests/new_user_flow.py``: the core and
    ONE gateway package in a fresh virtualenv, keys from the environment, a payment processed,
    captured, refunded and completed by a webhook against the package's fake), and the
    simulation over all the packages' fakes (``tests/test_simulation_fakes.py``, which the
    ``tests`` session cannot run: its core run has no gateway package installed).
    """
    session.install("setuptools>=69", "wheel")
    with tempfile.TemporaryDirectory(prefix="aegispay-wheels-") as tmp:
        work = Path(tmp)
        dist = work / "dist"
        # Build from copies: setuptools writes build/ and *.egg-info next to the sources.
        sources = [_copy_root(work / "src" / "aegispay")]
        for package in _packages():
            target = work / "src" / package.name
            shutil.copytree(package, target, ignore=_BUILD_IGNORE)
            sources.append(target)
        for source in sources:
            session.run(
                "python", "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--wheel-dir", str(dist), str(source),
            )  # fmt: skip
        built = sorted(str(w) for w in dist.glob("*.whl"))
        session.log("built: " + ", ".join(Path(w).name for w in built))
        # Dependencies from the index; then our wheels again, forced, so a reused virtualenv
        # holding an older build (same version number) cannot satisfy them instead.
        session.install("--find-links", str(dist), *built)
        session.install("--force-reinstall", "--no-deps", *built)
        with session.chdir(work):  # no aegispay.toml, and no checkout on sys.path
            where = session.run(
                "python", "-c", "import aegispay; print(aegispay.__file__)", silent=True
            )
            if "site-packages" not in str(where):
                session.error(f"aegispay is not imported from the installed wheel: {where}")
            output = session.run("aegispay", "plugins", "--json", silent=True)
        _check_plugins(session, str(output))
        # Standard library only, in this interpreter; it makes its own virtualenv.
        session.run("python", str(ROOT / "tests" / "new_user_flow.py"), "--wheels", str(dist))
    session.install("pytest>=8", "trio>=0.25")
    # From the checkout, against the installed wheels: tests/ holds no "aegispay" to shadow it.
    simulation_test = ROOT / "tests" / "test_simulation_fakes.py"
    session.run("pytest", "-p", "no:cacheprovider", str(simulation_test))


def _copy_root(target: Path) -> Path:
    """The files the core distribution is built from."""
    target.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target / name)
    for folder in ("core", "plugins"):
        shutil.copytree(ROOT / folder, target / folder, ignore=_BUILD_IGNORE)
    return target


def _json_list(output: str) -> list[dict[str, Any]] | None:
    """The JSON list in ``output`` (stdout and stderr together: log lines may come first)."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"^\[", output, re.MULTILINE)):
        try:
            value, _ = decoder.raw_decode(output, start)
        except ValueError:
            continue
        if isinstance(value, list):
            return value
    return None


def _check_plugins(session: nox.Session, output: str) -> None:
    infos = _json_list(output)
    if infos is None:
        session.error(f"aegispay plugins --json printed no JSON list:\n{output}")
    by_name = {info["name"]: info for info in infos}
    problems = []
    for name in REQUIRED_GATEWAY_PLUGINS:
        info = by_name.get(name)
        if info is None:
            problems.append(f"{name}: not listed")
        elif info.get("error"):
            problems.append(f"{name}: failed to load: {info['error']}")
        elif "aegispay_register_gateways" not in info.get("hooks", []):
            problems.append(f"{name}: registers no gateway (hooks: {info.get('hooks')})")
    if problems:
        session.error("; ".join(problems))
    session.log("gateway plugins listed: " + ", ".join(REQUIRED_GATEWAY_PLUGINS))


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    paths = ["core", "plugins", "tests", "noxfile.py", *(str(p) for p in _packages())]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def types(session: nox.Session) -> None:
    # A regular (not editable) install: mypy cannot follow setuptools' editable finder for
    # the core/ -> aegispay mapping, but checks the installed, py.typed package fine.
    session.install(".[lint,asgi]")
    session.run("mypy")
    # Each gateway package, strictly, against the installed core (as its users type-check it).
    for package in _packages():
        session.install("--no-deps", str(package))
        session.run("mypy", "--strict", str(package / "src"))


@nox.session
def bench(session: nox.Session) -> None:
    """Speed and memory figures beside a same-run baseline (docs/benchmarks.md records them).

    ``nox -s bench -- --payments 50000`` passes options through to ``aegispay bench``.
    """
    session.install(".")
    session.run("aegispay", "bench", *session.posargs)


@nox.session
def bench_routing(session: nox.Session) -> None:
    """The cost of one routing decision among 10 gateways per strategy, and of recording one
    gateway call in health (docs/benchmarks.md, "Routing and gateway health").

    ``nox -s bench_routing -- --gateways 20 --json`` passes options through.
    """
    session.install(".")
    session.run("python", "-m", "aegispay.benchmark_routing", *session.posargs)
