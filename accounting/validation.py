"""Input checks shared by the request models and the API edge: times with a zone in a sane
range and not ahead of the clock, text PostgreSQL can store, numbers that fit their columns.

Pydantic pieces (`ApiTime`, `Text`, the bounds) go into models and query parameters, so a bad
value is a 422 naming the field; `check_not_ahead` needs the clock, so routes call it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from accounting.clock import US_PER_S, Clock, to_us
from accounting.errors import InvalidInput

MAX_ID = 2**31 - 1  # ids are INTEGER columns
MAX_BIGINT = 2**63 - 1  # BIGINT columns
MAX_BIGCOUNT = 10**40 - 1  # NUMERIC(40, 0) columns (accounting.db.BigCount)
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL; any other character is fine
FIRST_YEAR, END_YEAR = 1970, 2100  # outside: a typing or unit mistake


def utc_in_range(value: datetime) -> datetime:
    """An aware time in UTC, between 1970 and 2100 (ValueError otherwise, for pydantic)."""
    if value.tzinfo is None:
        raise ValueError("give a time zone, e.g. 2026-01-01T00:00:00Z")
    try:
        value = value.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01T00:00+01:00 has no UTC time
        raise ValueError(f"a time between {FIRST_YEAR} and {END_YEAR}") from exc
    if not FIRST_YEAR <= value.year < END_YEAR:
        raise ValueError(f"a time between {FIRST_YEAR} and {END_YEAR}")
    return value


# A time at the API edge: with a zone, 1970–2100, given back in UTC.
ApiTime = Annotated[datetime, AfterValidator(utc_in_range)]
# Text a PostgreSQL column can hold (lengths are set per field).
Text = Annotated[str, StringConstraints(pattern=NO_NUL)]


def check_not_ahead(field: str, when: datetime, *, clock: Clock, max_ahead_s: int) -> None:
    """InvalidInput naming `field` when `when` is more than `max_ahead_s` after the clock's now
    (Settings.api_max_future_s: clocks drift and jobs are submitted a little ahead, not days)."""
    ahead_us = to_us(when) - clock.now_us()
    if ahead_us > max_ahead_s * US_PER_S:
        raise InvalidInput(field, f"{ahead_us // US_PER_S} s after the server's clock; at most {max_ahead_s} s "
                           "ahead is accepted (api_max_future_s)")
