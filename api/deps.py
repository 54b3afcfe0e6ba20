"""Dependencies as Annotated aliases; tests swap them with `dependency_overrides`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlmodel import Session

from accounting.clock import Clock
from accounting.errors import InvalidInput


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        yield session


def get_clock(request: Request) -> Clock:
    return request.app.state.clock


SessionDep = Annotated[Session, Depends(get_session)]
ClockDep = Annotated[Clock, Depends(get_clock)]
# Ids are 64-bit in the database: a larger number is a 422 naming `job_id`, not a 500.
JobId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The job's id, as POST /v1/jobs answered it.")]


def check_period(start: datetime, end: datetime) -> None:
    """A `from`/`to` query pair: both with a zone, `to` after `from` (422 naming the field)."""
    for name, value in (("from", start), ("to", end)):
        if value.tzinfo is None:
            raise InvalidInput(name, "give a time zone, e.g. 2026-01-01T00:00:00Z")
    if end <= start:
        raise InvalidInput("to", "must be after `from`")
