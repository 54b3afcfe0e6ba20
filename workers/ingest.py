"""One ingest transaction for a group of sampler batches, and what to do when it fails.

- A malformed batch is refused alone (`BatchRejected`), before the transaction: the others go in.
- The database down, a deadlock, a lost connection (`OperationalError`, `InterfaceError`): the
  whole group is tried again with exponential backoff and full jitter (as Celery's
  `retry_backoff`/`retry_jitter`), for up to `MAX_ATTEMPTS`; then, or as soon as the worker is
  asked to stop, each batch is given back to the queue (`GiveBack`): nothing is lost and the
  worker is free again.
- Another worker ingesting the same re-sent batch at the same moment (`IntegrityError` on
  (node, seq)): tried again at once; the retry finds it ingested and reports a duplicate.
- Anything else is a fault in one batch or in our code: the batches are taken one at a time, so
  that one fault fails one batch, not the group.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

from accounting.clock import Clock
from accounting.db import session_scope
from accounting.errors import InvalidInput
from accounting.ledger.batch import ParsedBatch
from accounting.ledger.ingest import ingest_batches, parse_batch

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, InterfaceError)
MAX_ATTEMPTS = 10  # waits of up to 1, 2, 4 … 60 s: about 4 minutes at most, then the batches go back
MAX_BACKOFF_S = 60.0
RACE_ATTEMPTS = 3


class BatchRejected(Exception):  # noqa: N818 — it names the outcome the sampler looks for
    """A batch the ledger refused as malformed. One plain message argument, so the result backend
    gives the sampler back this very type and it can tell a rejection from a transient failure."""


@dataclass(frozen=True)
class GiveBack:
    """Not ingested now, and not the batch's fault: publish it again (same task id)."""

    reason: str
    delay_s: float = 0.0


Outcome = dict | Exception | GiveBack


def worker_stopping() -> bool:
    """Whether this Celery worker was asked to shut down (warm or cold)."""
    from celery.worker import state

    # As Celery reads them (by identity): a warm shutdown sets should_stop to the exit code, 0 too.
    return any(flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate))


def ingest_group(engine: Engine, raws: Sequence[dict], *, clock: Clock, sleep: Callable[[float], None] = time.sleep,
                 stopping: Callable[[], bool] = worker_stopping) -> list[Outcome]:
    """Each raw batch's outcome, in order: the ingest result as a dict, an exception, or GiveBack."""
    outcomes: list[Outcome | None] = [None] * len(raws)
    parsed: list[tuple[int, ParsedBatch]] = []
    for i, raw in enumerate(raws):
        try:
            parsed.append((i, parse_batch(raw)))
        except InvalidInput as exc:
            node, seq = (raw.get("node"), raw.get("seq")) if isinstance(raw, dict) else (None, None)
            # A batch our own sampler wrote should never be malformed: keep it in the log whole.
            log.error("rejected batch %s/%s: %s; batch=%r", node, seq, exc, raw)
            outcomes[i] = BatchRejected(f"batch {node}/{seq}: {exc}")
    if parsed:
        for (i, _), outcome in zip(parsed, _ingest(engine, [b for _, b in parsed], clock, sleep, stopping),
                                   strict=True):
            outcomes[i] = outcome
    return outcomes  # type: ignore[return-value]  # every slot is filled


def _ingest(engine: Engine, batches: list[ParsedBatch], clock: Clock, sleep, stopping) -> list[Outcome]:
    attempt = races = 0
    while True:
        try:
            with session_scope(engine) as session:
                results = ingest_batches(session, batches, clock=clock)
                session.commit()
            return [{"node": r.node, "seq": r.seq, "duplicate": r.duplicate, "intervals": r.intervals,
                     "energy_mj": r.energy_mj} for r in results]
        except IntegrityError as exc:
            races += 1
            if races < RACE_ATTEMPTS:
                log.info("ingest of %d batches met a concurrent ingest (%s); trying again", len(batches), _first(exc))
                continue
            if len(batches) == 1:
                log.error("ingest of batch %s/%s failed: %r", batches[0].node, batches[0].seq, exc)
                return [exc]
            return _one_at_a_time(engine, batches, clock, sleep, stopping, exc)
        except TRANSIENT as exc:
            attempt += 1
            if attempt >= MAX_ATTEMPTS or stopping():
                why = "the worker is stopping" if stopping() else f"{attempt} attempts"
                return [GiveBack(f"{why}; last error {type(exc).__name__}: {_first(exc)}")] * len(batches)
            delay_s = random.uniform(0, min(MAX_BACKOFF_S, 2.0 ** attempt))
            log.warning("ingest of %d batches failed (%s: %s); retry %d in %.1f s", len(batches),
                        type(exc).__name__, _first(exc), attempt, delay_s)
            if _wait(delay_s, sleep, stopping):
                return [GiveBack(f"the worker is stopping; last error {type(exc).__name__}")] * len(batches)
        except Exception as exc:  # noqa: BLE001 — isolated below, and re-raised for a single batch
            if len(batches) == 1:
                log.exception("ingest of batch %s/%s failed", batches[0].node, batches[0].seq)
                return [exc]
            return _one_at_a_time(engine, batches, clock, sleep, stopping, exc)


def _one_at_a_time(engine, batches, clock, sleep, stopping, exc: Exception) -> list[Outcome]:
    log.warning("ingest of %d batches failed (%s: %s); taking them one at a time", len(batches),
                type(exc).__name__, _first(exc))
    return [outcome for batch in batches for outcome in _ingest(engine, [batch], clock, sleep, stopping)]


def _wait(delay_s: float, sleep, stopping) -> bool:
    """Sleep `delay_s` in steps of at most a second; True when the worker was asked to stop."""
    while delay_s > 0:
        if stopping():
            return True
        step = min(1.0, delay_s)
        sleep(step)
        delay_s -= step
    return stopping()


def _first(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
