"""The sampler's real-time loop, run by the `wattledger sampler` process.

It owns the schedule only: sample every `sample_interval_s` on a grid anchored at the start (so
timing errors do not accumulate), flush and ship every `flush_interval_s`, ship what an earlier
run left in the spool first, and flush and ship once more on stop. Nothing that goes wrong in one
tick (a GPU error, a broker outage, a full disk) ends the loop: the spool keeps the data and the
next tick tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from accounting.clock import US_PER_S
from accounting.metering.sampler import DEFAULT_RESEND_AFTER_S, Delivery, Sampler

log = logging.getLogger(__name__)


def run_sampler(
    sampler: Sampler,
    *,
    send: Callable[[dict[str, Any]], Any],
    sample_interval_s: float,
    flush_interval_s: float,
    stop: threading.Event,
    sleep: Callable[[float], Any] = time.sleep,
    on_tick: Callable[[int], Any] | None = None,
    confirm: Callable[[str], Delivery] | None = None,
    resend_after_s: float = DEFAULT_RESEND_AFTER_S,
) -> None:
    """Sample, flush and ship until `stop` is set.

    `sleep(seconds)` waits between ticks (tests pass a fake clock's `advance`); `on_tick(readings)`
    is called after every sample with the number of readings it took. `confirm` and
    `resend_after_s` go to `Sampler.ship`.
    """
    if sample_interval_s <= 0 or flush_interval_s <= 0:
        raise ValueError("sample and flush intervals must be positive")
    clock = sampler.clock
    sample_us = round(sample_interval_s * US_PER_S)
    flush_us = round(flush_interval_s * US_PER_S)

    def ship() -> int:
        return sampler.ship(send, confirm=confirm, resend_after_s=resend_after_s)

    _guarded("shipping the spool left from before", ship)
    start_us = clock.now_us()
    tick = 0
    next_flush_us = start_us + flush_us
    while not stop.is_set():
        readings = _guarded("sampling", sampler.sample)
        now_us = clock.now_us()
        if now_us >= next_flush_us:
            _flush_and_ship(sampler, ship)
            # Stay on the flush grid; a long stall skips missed flushes instead of bursting.
            next_flush_us += flush_us * ((now_us - next_flush_us) // flush_us + 1)
        if on_tick is not None:
            on_tick(readings or 0)
        # The next tick on the grid that is still in the future.
        now_us = clock.now_us()
        tick = max(tick + 1, (now_us - start_us) // sample_us + 1)
        wait_us = start_us + tick * sample_us - now_us
        if wait_us > 0 and not stop.is_set():
            sleep(wait_us / US_PER_S)
    _flush_and_ship(sampler, ship)


def _flush_and_ship(sampler: Sampler, ship: Callable[[], int]) -> None:
    _guarded("flushing", sampler.flush)
    _guarded("shipping", ship)


def _guarded(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    # The loop is the process's last line of defence: log, keep the spool, try again next tick.
    try:
        return fn(*args)
    except Exception:
        log.exception("sampler loop: %s failed; continuing", what)
        return None
