"""Engine and session factory, and the column types shared by the models. No web or task code."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine


class UTCDateTime(sa.types.TypeDecorator):
    """Timezone-aware UTC datetimes on every database.

    PostgreSQL stores timestamptz; SQLite has no time zones, so values are stored as naive UTC
    and given back their zone on the way out. Naive input is taken as UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class BigCount(sa.types.TypeDecorator):
    """Non-negative integers beyond 64 bits (FLOP counts pass 2^63 ≈ 9.2e18 in a day of a
    large job): NUMERIC(40, 0) on PostgreSQL, a decimal string on SQLite (whose NUMERIC would
    round them through a float). Sum them in Python, not in SQL, on SQLite."""

    impl = sa.Numeric(40, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(40))
        return dialect.type_descriptor(sa.Numeric(40, 0))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return str(int(value)) if dialect.name == "sqlite" else int(value)

    def process_result_value(self, value, dialect):
        return None if value is None else int(value)


def _sqlite_pragmas(foreign_keys: bool):
    def on_connect(dbapi_connection, _record) -> None:
        # WAL lets the API read while a worker writes; the busy timeout makes writers queue
        # instead of failing at once.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.close()

    return on_connect


def make_engine(url: str, *, sqlite_foreign_keys: bool = True, **kwargs) -> Engine:
    """An engine; on SQLite with WAL and a busy timeout. Migrations turn SQLite's foreign keys
    off, since its ALTER TABLE works by copying and dropping tables others refer to."""
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas(sqlite_foreign_keys))
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per URL per process."""
    return make_engine(url)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose transaction the caller commits; rolled back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise


def lock_gpus(session: Session, gpu_ids: Sequence[int]) -> None:
    """Serialize ledger writers per GPU until the transaction ends.

    PostgreSQL: row locks in id order (no deadlocks). SQLite: its single writer lock, taken by
    a first write, so the reads that follow see every committed change.
    """
    from accounting.jobs.models import Gpu  # local: jobs.models imports this module

    ids = sorted(set(gpu_ids))
    if not ids:
        return
    table = Gpu.__table__
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.select(table.c.id).where(table.c.id.in_(ids)).order_by(table.c.id).with_for_update())
    else:
        session.execute(sa.update(table).where(table.c.id.in_(ids)).values(id=table.c.id))
