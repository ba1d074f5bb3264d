"""AegisPay's Alembic migrations, shipped in the package and run programmatically.

No ``alembic.ini`` is needed: :func:`alembic_config` builds the configuration in code with
``script_location`` pointing at this directory. ``env.py`` runs on the synchronous connection
the SQL store hands it through ``config.attributes`` (from ``AsyncConnection.run_sync``).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

#: The directory holding ``env.py`` and ``versions/``.
LOCATION = Path(__file__).resolve().parent


def alembic_config() -> Config:
    """A fresh configuration (callers put the connection and schema in ``attributes``)."""
    config = Config()
    # ConfigParser interpolation: a literal ``%`` in the path must be doubled.
    config.set_main_option("script_location", str(LOCATION).replace("%", "%%"))
    return config


@cache
def script_directory() -> ScriptDirectory:
    """The revisions this AegisPay knows (read once)."""
    return ScriptDirectory.from_config(alembic_config())


def heads() -> tuple[str, ...]:
    return tuple(script_directory().get_heads())


def is_known(revision: str) -> bool:
    """Whether ``revision`` is one of this package's revisions."""
    return revision in {script.revision for script in script_directory().walk_revisions()}
