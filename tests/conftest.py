"""Shared fixtures: real PostgreSQL and SQLite databases, migrated with Alembic.

PostgreSQL and Redis are the real services (CI starts them); their URLs can be changed with
WATTLEDGER_TEST_DATABASE_URL and WATTLEDGER_TEST_REDIS_URL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from accounting import migrations
from accounting.clock import US_PER_S, FakeClock
from accounting.db import make_engine

PG_URL = os.environ.get("WATTLEDGER_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("WATTLEDGER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
T0_US = 1_753_567_200 * US_PER_S  # 2025-07-26 22:00 UTC, an hour boundary


def reset_database(engine: sa.Engine) -> None:
    """Drop everything, then build the schema the way production does: alembic upgrade head."""
    metadata = sa.MetaData()
    metadata.reflect(engine)
    metadata.drop_all(engine)
    migrations.upgrade(engine.url.render_as_string(hide_password=False))


@pytest.fixture(scope="session")
def pg_engine() -> Iterator[sa.Engine]:
    engine = make_engine(PG_URL)
    reset_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_engine(tmp_path_factory) -> Iterator[sa.Engine]:
    path: Path = tmp_path_factory.mktemp("sqlite") / "test.db"
    engine = make_engine(f"sqlite:///{path}")
    reset_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request) -> sa.Engine:
    return request.getfixturevalue({"sqlite": "sqlite_engine", "postgresql": "pg_engine"}[request.param])


@pytest.fixture
def session(engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test (services never
    commit; the test sees their work through the same session)."""
    truncate_all(engine)  # whatever a committing test before left behind
    with engine.connect() as connection:
        transaction = connection.begin()
        with Session(bind=connection, join_transaction_mode="create_savepoint") as db:
            yield db
        transaction.rollback()


def truncate_all(engine: sa.Engine) -> None:
    from accounting.models import metadata

    with engine.begin() as connection:
        for table in reversed(metadata.sorted_tables):
            connection.execute(table.delete())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0_US)
