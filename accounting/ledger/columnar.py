"""The batch as it travels from a node's sampler to the ingest workers (version 2): columns.

A sampler spools its batches in version 1 (a dict per interval, and its own state for recovery);
on the way to the broker a batch becomes version 2, which holds the same intervals as one list
per field, the GPUs' uuids once, and no sampler state. The worker decodes a third of the bytes
and checks each column with a few whole-list operations instead of sixteen lookups per interval:
on a 10 s batch of 8 GPUs, decoding and checking the dicts cost about as much as ingesting them.

    {"version": 2, "node": "gpu-node-7", "seq": 12, "created_us": …, "gpus": [… as v1],
     "events": [… as v1],
     "intervals": {"count": 80, "uuids": ["GPU-…", …], "gpu": [0, 1, …],
                   "start_us": […], "end_us": […], "energy_mj": […], "method": ["counter", …],
                   "power_mw": […], … one list per optional field, null where not read
                   (a field never read may be left out), "processes": [null | […], …],
                   "mig": [null | […], …]}}

The check is as strict as version 1's: the same bounds; integers must be JSON integers (not
floats or booleans), percentages finite numbers; an error names its field as
`intervals.<field>.<index>`. (Version 1's `pids` list is not carried: the ledger never read it.)
"""

from __future__ import annotations

import math
import operator
from typing import Any

from pydantic import ValidationError

from accounting.errors import InvalidInput

from .batch import (
    _US_MAX,
    INTEGER_MAX,
    MAX_ENERGY_MJ,
    MAX_GPUS,
    MAX_INTERVALS,
    METHODS,
    Batch,
    BatchInterval,
    ParsedBatch,
    Reading,
    _mig,
    _processes,
    _text,
)

VERSION = 2
# The optional fields of a reading, in Reading's order (the integers' bounds are batch.py's).
PERCENTS = ("sm_active_pct", "tensor_active_pct", "dram_bw_pct")
DETAILS = ("processes", "mig")
FIELDS = ("start_us", "end_us", "energy_mj", "method", *INTEGER_MAX, *PERCENTS, *DETAILS)


def to_wire(batch: dict[str, Any]) -> dict[str, Any]:
    """A version 1 batch (as the sampler spools it) in version 2, without the sampler's state. A
    batch that is not plainly version 1 (another version, intervals or process lists that are not
    lists …) goes as it is, for the ledger to judge and refuse by name: columns never repair."""
    try:
        return _columns(batch)
    except (KeyError, TypeError, AttributeError):
        return {k: v for k, v in batch.items() if k != "state_after"}


def _columns(batch: dict[str, Any]) -> dict[str, Any]:
    intervals = batch["intervals"]
    if batch.get("version") != 1 or type(intervals) is not list or not all(
            type(i.get(field, [])) is list for i in intervals for field in DETAILS):
        raise TypeError("not plainly a version 1 batch")
    uuids = list(dict.fromkeys(i["uuid"] for i in intervals))
    index = {uuid: k for k, uuid in enumerate(uuids)}
    columns: dict[str, Any] = {"count": len(intervals), "uuids": uuids, "gpu": [index[i["uuid"]] for i in intervals]}
    for field in FIELDS:
        if field in DETAILS:  # lists (checked above): [] is none
            columns[field] = [i.get(field) or None for i in intervals]
        else:
            column = [i.get(field) for i in intervals]
            if field in ("start_us", "end_us", "energy_mj", "method") or any(v is not None for v in column):
                columns[field] = column
    head = {k: v for k, v in batch.items() if k not in ("intervals", "state_after", "version")}
    return {"version": VERSION, **head, "intervals": columns}


def parse_wire(raw: dict[str, Any]) -> ParsedBatch:
    """A version 2 batch, checked; InvalidInput naming the first bad field (ValidationError for
    the head, as version 1 gives it)."""
    columns = raw.get("intervals")
    if type(columns) is not dict:
        raise InvalidInput("intervals", "must be an object of columns in a version 2 batch")
    head = Batch.model_validate({**raw, "version": 1, "intervals": []})  # the head is version 1's
    n = columns.get("count")
    if type(n) is not int or not 0 <= n <= MAX_INTERVALS:
        raise InvalidInput("intervals.count", f"must be an integer from 0 to {MAX_INTERVALS}")
    uuids = columns.get("uuids")
    if type(uuids) is not list or len(uuids) > MAX_GPUS or not all(_text(u, 1, 96) for u in uuids):
        raise InvalidInput("intervals.uuids", f"must be a list of at most {MAX_GPUS} GPU uuids (1–96 characters)")
    gpu = _column(columns, "gpu", n)
    _integers("gpu", gpu, 0, len(uuids) - 1)
    start, end, energy = (_column(columns, f, n) for f in ("start_us", "end_us", "energy_mj"))
    _integers("start_us", start, 0, _US_MAX)
    _integers("end_us", end, 0, _US_MAX)
    _integers("energy_mj", energy, 0, MAX_ENERGY_MJ)
    if not all(map(operator.lt, start, end)):
        k = next(k for k, (a, b) in enumerate(zip(start, end, strict=True)) if b <= a)
        raise InvalidInput(f"intervals.end_us.{k}", "end_us must be after start_us")
    method = _column(columns, "method", n)
    for k, m in enumerate(method):
        if type(m) is not str or m not in METHODS:
            raise InvalidInput(f"intervals.method.{k}", f"must be one of {sorted(METHODS)}")
    optional = [_optional_integers(columns, f, n, high) for f, high in INTEGER_MAX.items()]
    percents = [_percents(columns, f, n) for f in PERCENTS]
    processes = _details(columns, "processes", n, _processes)
    mig = _details(columns, "mig", n, _mig)
    readings = list(map(Reading._make, zip(
        map(uuids.__getitem__, gpu), start, end, energy, method, *optional, *percents, processes, mig, strict=True)))
    return ParsedBatch(head.node, head.seq, head.created_us, head.gpus, head.events, readings)


def _column(columns: dict, field: str, n: int) -> list:
    column = columns.get(field)
    if type(column) is not list or len(column) != n:
        raise InvalidInput(f"intervals.{field}", f"must be a list of {n} values (intervals.count)")
    return column


def _integers(field: str, values: list, low: int, high: int) -> None:
    # Whole-list checks first (type, min, max run in C); the slow search only names the culprit.
    if values and not (set(map(type, values)) == {int} and low <= min(values) and max(values) <= high):
        k = next(k for k, v in enumerate(values) if type(v) is not int or not low <= v <= high)
        raise InvalidInput(f"intervals.{field}.{k}", f"must be an integer from {low} to {high}")


def _optional_integers(columns: dict, field: str, n: int, high: int) -> list:
    if field not in columns:
        return [None] * n
    column = _column(columns, field, n)
    if None not in column:
        _integers(field, column, 0, high)
    else:  # where the first bad value is among the known ones, name its place in the column
        try:
            _integers(field, [v for v in column if v is not None], 0, high)
        except InvalidInput:
            _integers(field, [0 if v is None else v for v in column], 0, high)
    return column


NUMBERS = frozenset((int, float, type(None)))
EMPTY = frozenset((list, type(None)))  # of false values: [] or null


def _percents(columns: dict, field: str, n: int) -> list:
    """As floats; a finite number from 0 to 100 or null."""
    if field not in columns:
        return [None] * n
    column = _column(columns, field, n)
    types = set(map(type, column))
    values = column if type(None) not in types else [v for v in column if v is not None]
    if types <= NUMBERS and (not values or (0 <= min(values) and max(values) <= 100
                                            and not any(map(math.isnan, values)))):
        return column if types == {float} else [None if v is None else float(v) for v in column]
    k = next(k for k, v in enumerate(column)
             if v is not None and not ((type(v) is int or type(v) is float) and 0 <= v <= 100))
    raise InvalidInput(f"intervals.{field}.{k}", "must be a number from 0 to 100, or null")


def _details(columns: dict, field: str, n: int, check) -> list:
    """Per interval None or its list of process (MIG instance) dicts, checked as version 1 checks
    them: by hand, or by the interval model where the hand check does not take them whole."""
    if field not in columns:
        return [None] * n
    column = _column(columns, field, n)
    if not any(column) and set(map(type, column)) <= EMPTY:  # the common case: none has any
        return [None] * n
    out = []
    for k, items in enumerate(column):
        if items is None or items == []:
            out.append(None)
            continue
        try:
            if type(items) is not list:
                raise TypeError(field)
            out.append(check(items))
        except (KeyError, TypeError):
            try:
                model = BatchInterval.model_validate({"uuid": "u", "start_us": 0, "end_us": 1, "energy_mj": 0,
                                                      "method": "counter", field: items})
            except ValidationError as exc:
                first = exc.errors()[0]
                raise InvalidInput(".".join(["intervals", field, str(k), *map(str, first["loc"][1:])]),
                                   first["msg"]) from exc
            out.append([m.model_dump() for m in getattr(model, field)] or None)
    return out
