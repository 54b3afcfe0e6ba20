"""Dependencies as Annotated aliases; tests swap them with `dependency_overrides`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from sqlmodel import Session

from accounting.clock import Clock
from accounting.config import Settings
from accounting.errors import InvalidInput
from accounting.validation import MAX_ID


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        yield session


def get_clock(request: Request) -> Clock:
    return request.app.state.clock


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SessionDep = Annotated[Session, Depends(get_session)]
ClockDep = Annotated[Clock, Depends(get_clock)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
# Ids are 32-bit INTEGER columns: a larger number is a 422 naming the id, not a 500 from the database.
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="The job's id, as POST /v1/jobs answered it.")]
StatementId = Annotated[int, Path(ge=1, le=MAX_ID, description="A stored statement's id.")]
# Rows to skip: more than an id can count is a mistake (and past 2^63 a database error).
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]


def check_period(start: datetime, end: datetime) -> None:
    """A `from`/`to` query pair: both with a zone, `to` after `from` (422 naming the field)."""
    for name, value in (("from", start), ("to", end)):
        if value.tzinfo is None:
            raise InvalidInput(name, "give a time zone, e.g. 2026-01-01T00:00:00Z")
    if end <= start:
        raise InvalidInput("to", "must be after `from`")
