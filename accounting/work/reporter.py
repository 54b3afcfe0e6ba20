"""WorkReporter: the client a training or inference loop calls to report its useful work.

    with WorkReporter.from_environment() as work:     # or WorkReporter(url, job_id)
        for batch in data:
            ...
            work.report(tokens=batch.numel(), samples=len(batch), steps=1)

`report()` only appends to an in-memory queue: it never blocks the loop, never does I/O and
never raises. A daemon thread folds the increments into one aggregate and POSTs it every
`flush_interval_s` to /v1/jobs/{job_id}/work, under a key of its own ("<reporter uuid>-<seq>"),
so a retry after a timeout counts once. With the service down it keeps that aggregate and
retries with backoff (new work collects in the next one); memory stays bounded: when the
queue is full, the oldest increment is folded into an overflow aggregate instead of dropped.
`close()` (or leaving the `with` block) sends what is left, waiting at most `wait_s`.

Depends on httpx and the standard library only (httpx is imported by the thread, so this
module imports in milliseconds). Auth: `Authorization: Bearer <api_key>` when a key is given.
Increments are validated in `report()`: negative, non-finite or absurd ones (beyond the
service's limits, e.g. 1e30 FLOPs) are counted in `stats["invalid_increments"]` and left out,
since the service would reject the whole aggregate. An aggregate the service rejects for good
(a 4xx other than 404, 408, 409 and 429) is logged and counted, not retried forever.
"""

from __future__ import annotations

import atexit
import logging
import math
import operator
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

log = logging.getLogger("wattledger.reporter")

FIGURES = ("flops", "tokens", "samples", "steps")
LIMITS = (10**30, 10**18, 10**18, 10**15)  # the service's per-report bounds (WorkReportBase)
RETRY_STATUSES = frozenset({404, 408, 409, 429})  # 404: the job may be registered a moment later


class _Aggregate:
    """Sums of increments (None: no increment carried that figure) and the latest time."""

    __slots__ = ("sums", "at_s", "increments")

    def __init__(self) -> None:
        self.sums: list[int | None] = [None, None, None, None]
        self.at_s: float | None = None
        self.increments = 0

    def add(self, at_s: float, values: tuple[int | None, ...]) -> None:
        for i, value in enumerate(values):
            if value is not None:
                self.sums[i] = value if self.sums[i] is None else self.sums[i] + value
        self.at_s = at_s if self.at_s is None else max(self.at_s, at_s)
        self.increments += 1

    def merge(self, other: _Aggregate) -> None:
        if other.at_s is not None:
            self.add(other.at_s, tuple(other.sums))
            self.increments += other.increments - 1

    def body(self, key: str) -> dict:
        figures = {name: value for name, value in zip(FIGURES, self.sums, strict=True) if value is not None}
        return {"key": key, "at": datetime.fromtimestamp(self.at_s, UTC).isoformat(), **figures}


def _count(value: object, limit: int) -> int | None:
    """An increment as a non-negative int within `limit`; ValueError/TypeError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a count, not a bool")
    try:
        count = operator.index(value)  # int, numpy and torch integers
    except TypeError:
        number = float(value)  # type: ignore[arg-type]
        if not math.isfinite(number):
            raise ValueError(f"not finite: {number}") from None
        count = round(number)
    if not 0 <= count <= limit:
        raise ValueError(f"{count} is outside 0..{limit}")
    return count


class WorkReporter:
    """Reports a job's work increments to WattLedger in the background.

    `max_batch`: queued increments that wake the thread to fold them early (the POST still waits
    for the interval; half of `max_queue` if that is less); `max_queue`: the queue's bound, beyond
    which the oldest increments are folded into an overflow aggregate by `report()` itself;
    `timeout_s`: per POST; `max_backoff_s`: the longest wait between retries; `clock`: seconds
    since the epoch, for each increment's time."""

    def __init__(self, api_url: str, job_id: int, *, api_key: str | None = None, flush_interval_s: float = 10.0,
                 max_batch: int = 1000, max_queue: int = 10_000, timeout_s: float = 2.0,
                 max_backoff_s: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        if flush_interval_s <= 0 or timeout_s <= 0 or max_backoff_s <= 0 or max_batch < 1 or max_queue < 1:
            raise ValueError("intervals and timeouts are positive, max_batch and max_queue at least 1")
        base = api_url.rstrip("/")
        self.url = f"{base if base.endswith('/v1') else base + '/v1'}/jobs/{int(job_id)}/work"
        self.job_id = int(job_id)
        self.reporter_id = str(uuid.uuid4())
        self._api_key, self._timeout_s, self._clock = api_key, timeout_s, clock
        self._interval_s, self._max_backoff_s = flush_interval_s, max_backoff_s
        self._max_queue = max_queue
        self._wake_at = min(max_batch, max(1, max_queue // 2))  # fold before the queue has to
        self._queue: deque[tuple] = deque()
        self._overflow, self._overflow_lock = _Aggregate(), threading.Lock()
        self._next = _Aggregate()  # owned by the thread
        self._pending: dict | None = None  # the body in flight: resent as is, same key, until answered
        self._seq = 0
        self._wake, self._closing = threading.Event(), threading.Event()
        self._close_deadline = math.inf
        self._closed = False
        self.stats = {"reports_sent": 0, "duplicates": 0, "rejected_reports": 0, "failed_posts": 0,
                      "invalid_increments": 0, "dropped_after_close": 0}
        self._thread = threading.Thread(target=self._run, name=f"wattledger-work-{self.job_id}", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @classmethod
    def from_environment(cls, **options) -> WorkReporter:
        """A reporter configured by WATTLEDGER_API_URL, WATTLEDGER_JOB_ID and (optional)
        WATTLEDGER_API_KEY; ValueError naming what is missing or malformed."""
        url, job_id = os.environ.get("WATTLEDGER_API_URL"), os.environ.get("WATTLEDGER_JOB_ID")
        if not url:
            raise ValueError("WATTLEDGER_API_URL is not set (e.g. http://wattledger:8000)")
        if not job_id or not job_id.strip().isdigit():
            raise ValueError(f"WATTLEDGER_JOB_ID must be a job id (an integer), not {job_id!r}")
        options.setdefault("api_key", os.environ.get("WATTLEDGER_API_KEY") or None)
        return cls(url, int(job_id), **options)

    # ── the loop's side ──────────────────────────────────────────────────────────────────────

    def report(self, flops=None, tokens=None, samples=None, steps=None) -> None:
        """Add an increment of work done since the previous call. Never blocks, never raises."""
        try:
            if self._closed:
                self.stats["dropped_after_close"] += 1
                return
            values = (_count(flops, LIMITS[0]), _count(tokens, LIMITS[1]),
                      _count(samples, LIMITS[2]), _count(steps, LIMITS[3]))
            if values == (None, None, None, None):
                return
            queue = self._queue
            if len(queue) >= self._max_queue:
                self._fold_oldest()
            queue.append((self._clock(), values))
            if len(queue) >= self._wake_at:
                self._wake.set()
        except Exception as exc:  # the loop must never die of reporting
            self.stats["invalid_increments"] += 1
            if self.stats["invalid_increments"] == 1:
                log.warning("work increment left out (%s); further ones are only counted", exc)

    def _fold_oldest(self) -> None:
        with self._overflow_lock:
            try:
                at_s, values = self._queue.popleft()
            except IndexError:  # the thread emptied it meanwhile
                return
            self._overflow.add(at_s, values)

    def close(self, wait_s: float = 10.0) -> bool:
        """Send what is left, retrying for at most `wait_s`; True when all of it was acknowledged."""
        if not self._closed:
            self._closed = True
            atexit.unregister(self.close)
            self._close_deadline = time.monotonic() + wait_s
            self._closing.set()
            self._wake.set()
            self._thread.join(wait_s + 0.1)
        if self._thread.is_alive():  # a POST outlived the deadline
            return False
        return self._pending is None and not self._queue and self._next.at_s is None

    def __enter__(self) -> WorkReporter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ── the thread's side ────────────────────────────────────────────────────────────────────

    def _drain(self) -> None:
        queue, target = self._queue, self._next
        while True:
            try:
                at_s, values = queue.popleft()
            except IndexError:
                break
            target.add(at_s, values)
        with self._overflow_lock:
            if self._overflow.at_s is not None:
                target.merge(self._overflow)
                self._overflow = _Aggregate()

    def _send(self, client) -> bool:
        """POST the pending aggregate (or make one of what was drained); True when nothing is
        left to retry."""
        if self._pending is None:
            if self._next.at_s is None:
                return True
            self._seq += 1
            self._pending = self._next.body(f"{self.reporter_id}-{self._seq}")
            self._next = _Aggregate()
        try:
            response = client.post(self.url, json=self._pending)
        except Exception as exc:  # connection refused, timeouts, anything: retry later
            self.stats["failed_posts"] += 1
            log.debug("work report %s not sent: %r", self._pending["key"], exc)
            return False
        if response.status_code in (200, 201):
            self.stats["reports_sent"] += 1
            self.stats["duplicates"] += response.status_code == 200
        elif response.status_code in RETRY_STATUSES or response.status_code >= 500:
            self.stats["failed_posts"] += 1
            log.debug("work report %s: HTTP %s, will retry", self._pending["key"], response.status_code)
            return False
        else:
            self.stats["rejected_reports"] += 1
            log.error("work report %s rejected for good: HTTP %s %s", self._pending, response.status_code,
                      response.text[:500])
        self._pending = None
        return True

    def _backoff_s(self, failures: int) -> float:
        delay_s = min(self._max_backoff_s, min(1.0, self._interval_s) * 2 ** min(failures - 1, 16))
        return delay_s * random.uniform(0.5, 1.0)  # jitter: a fleet of reporters does not retry in step

    def _client(self):
        import httpx  # here, not at the top: importing this module stays cheap

        headers = {"User-Agent": "wattledger-work-reporter"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return httpx.Client(timeout=self._timeout_s, headers=headers)

    def _run(self) -> None:
        try:
            with self._client() as client:
                self._loop(client)
        except Exception:  # a reporter bug must not take the job down
            log.exception("the work reporter stopped")

    def _loop(self, client) -> None:
        next_post, failures = time.monotonic() + self._interval_s, 0
        while not self._closing.is_set():
            self._wake.wait(max(0.0, next_post - time.monotonic()))
            self._wake.clear()
            self._drain()
            if self._closing.is_set():
                break
            if time.monotonic() < next_post:
                continue
            if self._send(client):
                failures = 0
                next_post = time.monotonic() + self._interval_s
            else:
                failures += 1
                next_post = time.monotonic() + self._backoff_s(failures)
        self._finish(client, failures)

    def _finish(self, client, failures: int) -> None:
        while time.monotonic() < self._close_deadline:
            self._drain()
            if self._pending is None and self._next.at_s is None:
                return
            if self._send(client):
                failures = 0
                continue
            failures += 1
            time.sleep(max(0.0, min(self._backoff_s(failures), self._close_deadline - time.monotonic())))
        self._drain()
        unsent = [self._pending] if self._pending else []
        if self._next.at_s is not None:
            unsent.append(self._next.body("(never sent)"))
        if unsent:
            log.warning("work reporter for job %s closed with work unsent: %s", self.job_id, unsent)
