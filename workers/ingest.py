"""Ingest transactions for a worker's group of sampler batches, and what to do when one fails.

- The group goes in as transactions of about `group_readings` readings each (a backlog of large
  batches does not make one huge transaction).
- A malformed batch is refused alone (`BatchRejected`), before any transaction: the others go in.
- The database down, a deadlock, a lost connection (`OperationalError`, `InterfaceError`): the
  transaction is tried again with exponential backoff and full jitter (as Celery's
  `retry_backoff`/`retry_jitter`) within a budget shared by the whole group — half the broker's
  visibility timeout, so the broker never hands the same messages to another worker meanwhile;
  then, or as soon as the worker is asked to stop, the batches are given back to the queue
  (`GiveBack`): nothing is lost and the worker is free again.
- Another worker ingesting the same re-sent batch at the same moment (`IntegrityError` on
  (node, seq)): tried again at once; the retry finds it ingested and reports a duplicate.
- Anything else is a fault in one batch or in our code: the batches are taken one at a time, so
  that one fault fails one batch, not the group.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

from accounting.clock import Clock
from accounting.config import INGEST_GROUP_READINGS
from accounting.db import session_scope
from accounting.errors import InvalidInput
from accounting.ledger.batch import ParsedBatch
from accounting.ledger.ingest import ingest_batches, parse_batch

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, InterfaceError)
MAX_BACKOFF_S = 60.0
RACE_ATTEMPTS = 3


class BatchRejected(Exception):  # noqa: N818 — it names the outcome the sampler looks for
    """A batch the ledger refused as malformed. One plain message argument, so the result backend
    gives the sampler back this very type and it can tell a rejection from a transient failure."""


@dataclass(frozen=True)
class GiveBack:
    """Not ingested now, and not the batch's fault: back to the queue."""

    reason: str


Outcome = dict | Exception | GiveBack


@dataclass
class Retrying:
    """How a group's transactions retry: one budget of time for all of them."""

    budget_s: float
    sleep: Callable[[float], None] = time.sleep
    stopping: Callable[[], bool] = lambda: False
    now: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.deadline = self.now() + self.budget_s

    def wait(self, delay_s: float) -> bool:
        """Sleep `delay_s` in steps of at most a second; True when the worker was asked to stop."""
        while delay_s > 0:
            if self.stopping():
                return True
            step = min(1.0, delay_s)
            self.sleep(step)
            delay_s -= step
        return self.stopping()


def ingest_group(engine: Engine, raws: Sequence, *, clock: Clock, retrying: Retrying,
                 group_readings: int = INGEST_GROUP_READINGS) -> list[Outcome]:
    """Each raw batch's outcome, in order: the ingest result as a dict, an exception, or GiveBack."""
    outcomes: list[Outcome | None] = [None] * len(raws)
    parsed: list[tuple[int, ParsedBatch]] = []
    for i, raw in enumerate(raws):
        node, seq = (raw.get("node"), raw.get("seq")) if isinstance(raw, dict) else (None, None)
        try:
            parsed.append((i, parse_batch(raw)))
        except InvalidInput as exc:
            # A batch our own sampler wrote should never be malformed: keep it in the log whole.
            log.error("rejected batch %s/%s: %s; batch=%r", node, seq, exc, raw)
            outcomes[i] = BatchRejected(f"batch {node}/{seq}: {exc}")
        except Exception as exc:  # noqa: BLE001 — a fault of ours in checking one batch fails that batch
            log.exception("checking batch %s/%s failed", node, seq)
            outcomes[i] = exc
    for chunk in _chunks(parsed, group_readings):
        for (i, _), outcome in zip(chunk, _ingest(engine, [b for _, b in chunk], clock, retrying), strict=True):
            outcomes[i] = outcome
    return outcomes  # type: ignore[return-value]  # every slot is filled


def _chunks(parsed: list[tuple[int, ParsedBatch]], group_readings: int) -> Iterator[list]:
    chunk: list = []
    readings = 0
    for item in parsed:
        if chunk and readings + len(item[1].readings) > group_readings:
            yield chunk
            chunk, readings = [], 0
        chunk.append(item)
        readings += len(item[1].readings)
    if chunk:
        yield chunk


def _ingest(engine: Engine, batches: list[ParsedBatch], clock: Clock, retrying: Retrying) -> list[Outcome]:
    attempt = races = 0
    while True:
        try:
            with session_scope(engine) as session:
                results = ingest_batches(session, batches, clock=clock)
                session.commit()
            return [asdict(r) for r in results]
        except IntegrityError as exc:
            races += 1
            if races < RACE_ATTEMPTS:
                log.info("ingest of %d batches met a concurrent ingest (%s); trying again", len(batches), _first(exc))
                continue
            if len(batches) == 1:
                log.error("ingest of batch %s/%s failed: %r", batches[0].node, batches[0].seq, exc)
                return [exc]
            return _one_at_a_time(engine, batches, clock, retrying, exc)
        except TRANSIENT as exc:
            attempt += 1
            error = f"{type(exc).__name__}: {_first(exc)}"
            delay_s = random.uniform(0, min(MAX_BACKOFF_S, 2.0 ** attempt))
            if retrying.stopping():
                return [GiveBack(f"the worker is stopping; last error {error}")] * len(batches)
            if retrying.now() + delay_s > retrying.deadline:
                return [GiveBack(f"retried for {retrying.budget_s:.0f} s; last error {error}")] * len(batches)
            log.warning("ingest of %d batches failed (%s); retry %d in %.1f s", len(batches), error, attempt, delay_s)
            if retrying.wait(delay_s):
                return [GiveBack(f"the worker is stopping; last error {error}")] * len(batches)
        except Exception as exc:  # noqa: BLE001 — isolated below, and reported for a single batch
            if len(batches) == 1:
                log.exception("ingest of batch %s/%s failed", batches[0].node, batches[0].seq)
                return [exc]
            return _one_at_a_time(engine, batches, clock, retrying, exc)


def _one_at_a_time(engine, batches, clock, retrying: Retrying, exc: Exception) -> list[Outcome]:
    log.warning("ingest of %d batches failed (%s: %s); taking them one at a time", len(batches),
                type(exc).__name__, _first(exc))
    return [outcome for batch in batches for outcome in _ingest(engine, [batch], clock, retrying)]


def _first(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
