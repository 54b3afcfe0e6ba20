"""Raw-sample retention: the hourly ledger stays forever; raw intervals older than the policy go.

Raw samples are the source the ledger is rebuilt from (re-attribution after a late job): only
within retention. On PostgreSQL `sample` is range-partitioned by start_at, one partition per UTC
day in the SAMPLE_PARTITIONS schema plus a DEFAULT one (migration 0007): `ensure_partitions`
creates the coming days' partitions ahead (moving any rows the DEFAULT partition caught for them),
and expiry drops a day's partition whole instead of deleting its rows one by one. What is left
(a partly expired day, the DEFAULT partition, SQLite's plain table) is deleted row by row.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from accounting.clock import US_PER_HOUR, Clock, hour_floor_us, to_datetime
from accounting.db import lock_gpus
from accounting.jobs.models import Gpu

from .models import ChangeLog, Sample

SAMPLE_PARTITIONS = "sample_partitions"
DAY = timedelta(days=1)
_PREFIX = "sample_p"


def partitioned(session: Session) -> bool:
    """Whether `sample` is a partitioned table (PostgreSQL after migration 0007)."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    kind = session.execute(sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass('sample')")).scalar()
    return kind == "p"


def day_partitions(session: Session) -> dict[datetime, str]:
    """UTC day → the name of its partition."""
    names = session.execute(sa.text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass('sample')")).scalars()
    return {datetime.strptime(n[len(_PREFIX):], "%Y%m%d").replace(tzinfo=UTC): n for n in names
            if n.startswith(_PREFIX)}


def _day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def ensure_partitions(session: Session, *, clock: Clock, days_ahead: int = 7) -> list[str]:
    """Create the partitions of today and the next `days_ahead` days that are missing; returns
    their names. Rows the DEFAULT partition holds for such a day move into the new partition
    (PostgreSQL refuses a partition whose rows sit in DEFAULT)."""
    if not partitioned(session):
        return []
    existing, today, created = day_partitions(session), _day(to_datetime(clock.now_us())), []
    for k in range(days_ahead + 1):
        day = today + k * DAY
        if day in existing:
            continue
        name, bounds = f"{_PREFIX}{day:%Y%m%d}", {"lo": day, "hi": day + DAY}
        session.execute(sa.text(f"CREATE TABLE {SAMPLE_PARTITIONS}.{name} (LIKE sample INCLUDING DEFAULTS)"))
        session.execute(sa.text(
            f"WITH moved AS (DELETE FROM {SAMPLE_PARTITIONS}.sample_default WHERE start_at >= :lo AND start_at < :hi "
            f"RETURNING *) INSERT INTO {SAMPLE_PARTITIONS}.{name} SELECT * FROM moved"), bounds)
        session.execute(sa.text(f"ALTER TABLE sample ATTACH PARTITION {SAMPLE_PARTITIONS}.{name} "
                                f"FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + DAY).isoformat()}')"))
        created.append(name)
    return created


def _drop_expired_partitions(session: Session, cutoff: datetime) -> int:
    """Drop the day partitions wholly before the cut-off; returns the samples they held. A day with
    an interval that ends after the cut-off (it straddles it) is left to the row-by-row delete."""
    dropped = 0
    for day, name in sorted(day_partitions(session).items()):
        if day + DAY > cutoff:
            break
        table = f"{SAMPLE_PARTITIONS}.{name}"
        if session.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE end_at > :cutoff)"),
                           {"cutoff": cutoff}).scalar_one():
            continue
        dropped += session.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
        session.execute(sa.text(f"DROP TABLE {table}"))
    return dropped


def expire_samples(session: Session, *, retention_days: int, clock: Clock) -> int:
    """Remove samples that ended before the retention cut-off (an hour boundary).

    Each GPU remembers the cut-off, so a later re-attribution never rebuilds an hour from
    a partial set of samples. Returns the number of samples removed.
    """
    cutoff = to_datetime(hour_floor_us(clock.now_us() - retention_days * 24 * US_PER_HOUR))
    s, g = Sample.__table__, Gpu.__table__
    expiring = sa.and_(s.c.start_at < cutoff, s.c.end_at <= cutoff)  # start_at: prunes the partitions
    # Per GPU, through the (gpu_id, start_at) key: not a scan of every expiring sample.
    gpu_ids = list(session.execute(
        sa.select(g.c.id).where(sa.exists().where(s.c.gpu_id == g.c.id, expiring)).order_by(g.c.id)).scalars())
    if not gpu_ids:
        return 0
    lock_gpus(session, gpu_ids)
    removed = _drop_expired_partitions(session, cutoff) if partitioned(session) else 0
    removed += session.execute(sa.delete(s).where(expiring)).rowcount
    session.execute(
        sa.update(g).where(g.c.id.in_(gpu_ids),
                           sa.or_(g.c.samples_expired_before.is_(None), g.c.samples_expired_before < cutoff))
        .values(samples_expired_before=cutoff)
    )
    return removed


def prune_change_log(session: Session, *, clock: Clock, keep_s: int = 3_600) -> int:
    """Forget change-log rows older than `keep_s`. A cached statement is re-confirmed against the log
    within cache.CONFIRM_WITHIN_S (30 min) or dropped, so `keep_s` must stay above that."""
    before = to_datetime(clock.now_us() - keep_s * 1_000_000)
    return session.execute(sa.delete(ChangeLog.__table__).where(ChangeLog.logged_at < before)).rowcount
