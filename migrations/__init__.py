"""The database schema's Alembic migrations, shipped inside the package (``migrations/`` in the wheel).

``alembic_config(url)`` builds the Alembic ``Config`` programmatically from where this package is
installed, so ``hydra-service migrate``, ``serve`` and the tests work from an installed wheel as well
as from a checkout; no ``alembic.ini`` is read. ``alembic.ini`` at the repository root stays for
developers who run ``alembic`` by hand (``alembic revision --autogenerate -m ...``) and points at this
same folder.

``env.py`` imports ``service`` (the models and settings); ``service`` never imports this package.
Importing it costs nothing: Alembic is imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCRIPT_LOCATION = Path(__file__).resolve().parent
# as in alembic.ini, so `command.revision(alembic_config(), ...)` names files the same way
FILE_TEMPLATE = "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s"


def alembic_config(database_url: str | None = None) -> Any:
    """An Alembic ``Config`` for these migrations, wherever they are installed.

    ``database_url`` overrides the settings' URL (``HYDRA_DATABASE_URL``; tests and one-off
    maintenance). Alembic's logging is left alone: no ini file, so ``env.py`` configures none."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", FILE_TEMPLATE)
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    """Bring the database at ``database_url`` (default: the settings') to ``revision``."""
    from alembic import command

    config = alembic_config(database_url)
    config.attributes["configure_logging"] = False
    command.upgrade(config, revision)


def head_revision() -> str:
    """The newest revision of these migrations (what ``upgrade`` brings a database to)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no revisions in {SCRIPT_LOCATION / 'versions'}"
    return head
