"""Engine and session factory, and the column types shared by the models. No web or task code."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Sequence
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


# Per driver connection: (table, columns) → the COPY statement and the columns' type oids, read
# once from the catalog (binary COPY must send each value in its column's exact type).
_copy_types: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def copy_rows(session: Session, table: sa.Table, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    """Write rows (tuples in `columns` order) into `table` with one binary COPY, inside the
    session's transaction. PostgreSQL only: the fastest way in, one round trip for any number."""
    from psycopg import sql  # local: only PostgreSQL needs it

    driver = session.connection().connection.driver_connection
    known = _copy_types.setdefault(driver, {})
    key = (table.name, tuple(columns))
    if key not in known:
        with driver.cursor() as cursor:
            cursor.execute("SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = %s::regclass "
                           "AND attnum > 0 AND NOT attisdropped", (table.name,))
            oids = dict(cursor.fetchall())
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns))).as_string(driver)
        known[key] = (statement, [oids[c] for c in columns])
    statement, types = known[key]
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


_upserts: dict[tuple, sa.TextClause] = {}  # (table, columns) → the PostgreSQL statement


def upsert_adding(session: Session, table: sa.Table, key: Sequence[str], rows: list[dict],
                  sums: Sequence[str]) -> None:
    """INSERT … ON CONFLICT (key) DO UPDATE SET col = col + excluded.col for each of `sums`, on
    both databases. On PostgreSQL one statement whose text does not depend on the number of rows
    (the columns go as arrays through unnest), so it is compiled once and prepared."""
    if not rows:
        return
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":
        columns = tuple(rows[0])
        statement = _upserts.get((table.name, columns))
        if statement is None:
            q = dialect.identifier_preparer.quote
            arrays = ", ".join(f"CAST(:{c} AS {table.c[c].type.compile(dialect=dialect)}[])" for c in columns)
            statement = _upserts[(table.name, columns)] = sa.text(
                f"INSERT INTO {q(table.name)} ({', '.join(map(q, columns))}) SELECT * FROM unnest({arrays}) "
                f"ON CONFLICT ({', '.join(map(q, key))}) DO UPDATE SET "
                + ", ".join(f"{q(c)} = {q(table.name)}.{q(c)} + excluded.{q(c)}" for c in sums))
        session.execute(statement, {c: [row[c] for row in rows] for c in columns})
        return
    from sqlalchemy.dialects.sqlite import insert

    statement = insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=list(key), set_={c: table.c[c] + statement.excluded[c] for c in sums})
    session.execute(statement, rows)
