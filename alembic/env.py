"""Alembic environment: the models' metadata, the URL from settings (or `-x url=...`)."""

from __future__ import annotations

from sqlmodel import SQLModel

from accounting.config import get_settings
from accounting.db import BigCount, UTCDateTime, make_engine
from accounting.models import metadata  # noqa: F401  (registers every table)
from alembic import context

config = context.config
target_metadata = SQLModel.metadata


def _url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.attributes.get("url")
        or get_settings().resolved_database_url
    )


def render_item(type_, obj, autogen_context):
    # Migrations spell the portable type, not our decorator.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, BigCount):
        return "sa.Numeric(40, 0).with_variant(sa.String(40), 'sqlite')"
    return False


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_item=render_item,
        compare_type=True,
        render_as_batch=True,  # SQLite alters tables by copying them
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url(), sqlite_foreign_keys=False)
    with engine.connect() as connection:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
