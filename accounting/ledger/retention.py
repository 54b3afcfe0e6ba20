"""Raw-sample retention: the hourly ledger stays; raw intervals older than the policy go."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session

from accounting.clock import US_PER_HOUR, Clock, hour_floor_us, to_datetime
from accounting.db import lock_gpus
from accounting.jobs.models import Gpu

from .models import Sample


def expire_samples(session: Session, *, retention_days: int, clock: Clock) -> int:
    """Delete samples that ended before the retention cut-off (an hour boundary).

    Each GPU remembers the cut-off, so a later re-attribution never rebuilds an hour from
    a partial set of samples. Returns the number of samples deleted.
    """
    cutoff = to_datetime(hour_floor_us(clock.now_us() - retention_days * 24 * US_PER_HOUR))
    s, g = Sample.__table__, Gpu.__table__
    gpu_ids = [row[0] for row in session.execute(sa.select(s.c.gpu_id).where(s.c.end_at <= cutoff).distinct())]
    if not gpu_ids:
        return 0
    lock_gpus(session, gpu_ids)
    deleted = session.execute(sa.delete(s).where(s.c.end_at <= cutoff)).rowcount
    session.execute(
        sa.update(g).where(g.c.id.in_(gpu_ids),
                           sa.or_(g.c.samples_expired_before.is_(None), g.c.samples_expired_before < cutoff))
        .values(samples_expired_before=cutoff)
    )
    return deleted
