"""Clocks. Services take a clock as an argument so tests and the simulated fleet control time.

Time inside the domain is an integer count of microseconds since the Unix epoch (UTC),
named `*_us`; datetimes appear only at the storage and API edges.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol

US_PER_S = 1_000_000
US_PER_HOUR = 3_600 * US_PER_S


class Clock(Protocol):
    def now_us(self) -> int: ...


class SystemClock:
    """Wall-clock time."""

    def now_us(self) -> int:
        return time.time_ns() // 1_000


class FakeClock:
    """A clock that moves only when told to; thread-safe."""

    def __init__(self, start_us: int) -> None:
        self._now_us = start_us
        self._lock = threading.Lock()

    def now_us(self) -> int:
        with self._lock:
            return self._now_us

    def advance(self, seconds: float) -> int:
        with self._lock:
            self._now_us += round(seconds * US_PER_S)
            return self._now_us

    def set(self, now_us: int) -> None:
        with self._lock:
            if now_us < self._now_us:
                raise ValueError("a FakeClock never goes backwards")
            self._now_us = now_us


def to_datetime(t_us: int) -> datetime:
    """Microseconds since the epoch → an aware UTC datetime (exact)."""
    seconds, micros = divmod(t_us, US_PER_S)
    return datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=micros)


def to_us(dt: datetime) -> int:
    """An aware datetime (naive ones are taken as UTC) → microseconds since the epoch (exact)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds


def hour_floor_us(t_us: int) -> int:
    return t_us - t_us % US_PER_HOUR
