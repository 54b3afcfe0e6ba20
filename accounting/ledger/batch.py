"""The sampler → ingest batch format, validated at the door of the ledger (by the pydantic models,
and for speed by a hand check of each interval that takes exactly what they take)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from accounting.validation import MAX_BIGINT, NO_NUL

_US_MAX = 4_102_444_800_000_000  # 2100-01-01: anything later is a unit mistake
# Bounds on a batch's lists: far above what a node sends in one flush (even after a long
# outage of the spool), low enough that a corrupt or hostile batch cannot exhaust the worker.
MAX_GPUS, MAX_INTERVALS, MAX_EVENTS, MAX_PIDS = 4096, 200_000, 100_000, 4096
MAX_PROCESSES, MAX_MIG = 4096, 8
# An interval's integer fields and their highest value (all from 0): the one place the interval
# model, its hand check and the column check (columnar.py) read them from.
MAX_ENERGY_MJ = 10**15
INTEGER_MAX = {"power_mw": 10**8, "gpu_util_pct": 100, "memory_util_pct": 100, "memory_used_bytes": MAX_BIGINT,
               "sm_clock_mhz": 100_000}


class BatchGpu(BaseModel):
    model_config = ConfigDict(extra="ignore")
    uuid: str = Field(min_length=1, max_length=96, pattern=NO_NUL)
    name: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    index: int | None = Field(default=None, ge=0, le=4096)
    parent_uuid: str | None = Field(default=None, min_length=1, max_length=96, pattern=NO_NUL)
    mig_profile: str | None = Field(default=None, max_length=32, pattern=NO_NUL)
    mig_slices: int | None = Field(default=None, ge=1, le=8)


class BatchProcess(BaseModel):
    """A process on the GPU. Neither job_key nor user: the node could not look it up
    (no resolver), so it says nothing about who used the GPU."""

    model_config = ConfigDict(extra="ignore")
    pid: int = Field(ge=0, le=2**31)
    sm_pct: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    job_key: str | None = Field(default=None, min_length=3, max_length=300, pattern=r"^[^:\x00]+:[^\x00]+$")
    user: str | None = Field(default=None, max_length=200, pattern=NO_NUL)

    @property
    def resolved(self) -> bool:
        return self.job_key is not None or self.user is not None


class BatchMig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    uuid: str = Field(min_length=1, max_length=96, pattern=NO_NUL)
    activity_pct: float = Field(ge=0, le=100, allow_inf_nan=False)


class BatchInterval(BaseModel):
    model_config = ConfigDict(extra="ignore")
    uuid: str = Field(min_length=1, max_length=96, pattern=NO_NUL)
    start_us: int = Field(ge=0, le=_US_MAX)
    end_us: int = Field(ge=0, le=_US_MAX)
    energy_mj: int = Field(ge=0, le=MAX_ENERGY_MJ)
    method: Literal["counter", "power-integral", "missing"]
    power_mw: int | None = Field(default=None, ge=0, le=INTEGER_MAX["power_mw"])
    gpu_util_pct: int | None = Field(default=None, ge=0, le=INTEGER_MAX["gpu_util_pct"])
    memory_util_pct: int | None = Field(default=None, ge=0, le=INTEGER_MAX["memory_util_pct"])
    memory_used_bytes: int | None = Field(default=None, ge=0, le=INTEGER_MAX["memory_used_bytes"])
    sm_clock_mhz: int | None = Field(default=None, ge=0, le=INTEGER_MAX["sm_clock_mhz"])
    sm_active_pct: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    tensor_active_pct: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    dram_bw_pct: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    pids: list[Annotated[int, Field(ge=0, le=2**31)]] = Field(default_factory=list, max_length=MAX_PIDS)
    processes: list[BatchProcess] = Field(default_factory=list, max_length=MAX_PROCESSES)
    mig: list[BatchMig] = Field(default_factory=list, max_length=MAX_MIG)

    @model_validator(mode="after")
    def _ordered(self) -> BatchInterval:
        if self.end_us <= self.start_us:
            raise ValueError("end_us must be after start_us")
        return self


class BatchEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")
    uuid: str | None = Field(default=None, max_length=96, pattern=NO_NUL)
    at_us: int = Field(ge=0, le=_US_MAX)
    kind: str = Field(min_length=1, max_length=32, pattern=NO_NUL)
    detail: str = Field(default="", max_length=2000, pattern=NO_NUL)


class Batch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: Literal[1] = 1
    node: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    seq: int = Field(ge=0, le=MAX_BIGINT)
    created_us: int | None = Field(default=None, ge=0, le=_US_MAX)
    gpus: list[BatchGpu] = Field(default_factory=list, max_length=MAX_GPUS)
    intervals: list[BatchInterval] = Field(default_factory=list, max_length=MAX_INTERVALS)
    events: list[BatchEvent] = Field(default_factory=list, max_length=MAX_EVENTS)


# The hot path. Validating every interval into a BatchInterval costs more than storing it, so
# `checked_batch` checks each interval by hand and builds a Reading tuple; an interval the hand
# check does not take whole (a float where an int is due, a bool, a missing key …) goes to
# BatchInterval itself. The hand check only ever accepts what BatchInterval accepts, and yields
# the same values, so the batch format stays exactly as strict; any error is raised by `Batch`,
# naming the field as before.

class Reading(NamedTuple):
    """One validated interval, in the order of the `sample` columns after the GPU."""

    uuid: str
    start_us: int
    end_us: int
    energy_mj: int
    method: str
    power_mw: int | None
    gpu_util_pct: int | None
    memory_util_pct: int | None
    memory_used_bytes: int | None
    sm_clock_mhz: int | None
    sm_active_pct: float | None
    tensor_active_pct: float | None
    dram_bw_pct: float | None
    processes: list[dict] | None  # [{"pid", "sm_pct", "job_key", "user"}]; None: none
    mig: list[dict] | None  # [{"uuid", "activity_pct"}]; None: none


# The hand check and the column check build a Reading's integers in INTEGER_MAX's order.
assert tuple(INTEGER_MAX) == Reading._fields[5:10]


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    """A validated batch: its head as the Batch model gives it, its intervals as Readings."""

    node: str
    seq: int
    created_us: int | None
    gpus: list[BatchGpu]
    events: list[BatchEvent]
    readings: list[Reading]


METHODS = frozenset(("counter", "power-integral", "missing"))
_NONE: list = []  # an absent list field (never changed)


def checked_batch(raw: dict) -> ParsedBatch:
    """The batch, validated; raises pydantic's ValidationError exactly as `Batch` would."""
    try:
        return _parse(raw)
    except ValidationError:
        batch = Batch.model_validate(raw)  # raises the error, located in the whole batch
        return _parsed(batch, [_from_model(i) for i in batch.intervals])


def _parse(raw: dict) -> ParsedBatch:
    intervals = raw.get("intervals") if type(raw) is dict else None
    if type(intervals) is not list or len(intervals) > MAX_INTERVALS:
        batch = Batch.model_validate(raw)
        return _parsed(batch, [_from_model(i) for i in batch.intervals])
    head = Batch.model_validate({**raw, "intervals": []})
    readings = []
    for item in intervals:
        try:
            reading = _checked(item)
        except (KeyError, TypeError):
            reading = None
        readings.append(reading or _from_model(BatchInterval.model_validate(item)))
    return _parsed(head, readings)


def _parsed(batch: Batch, readings: list[Reading]) -> ParsedBatch:
    return ParsedBatch(batch.node, batch.seq, batch.created_us, batch.gpus, batch.events, readings)


def _from_model(i: BatchInterval) -> Reading:
    return Reading(i.uuid, i.start_us, i.end_us, i.energy_mj, i.method, i.power_mw, i.gpu_util_pct,
                   i.memory_util_pct, i.memory_used_bytes, i.sm_clock_mhz, i.sm_active_pct, i.tensor_active_pct,
                   i.dram_bw_pct, [p.model_dump() for p in i.processes] or None,
                   [m.model_dump() for m in i.mig] or None)


def _text(value, low: int, high: int) -> bool:
    return type(value) is str and low <= len(value) <= high and "\x00" not in value


def _pct(value) -> float:
    """A percentage as BatchInterval takes it: a finite float or an int, 0–100, made float.
    TypeError for anything else (BatchInterval judges it)."""
    if (type(value) is float or type(value) is int) and 0 <= value <= 100:  # NaN fails the comparison
        return float(value)
    raise TypeError("not a plain percentage")


def _checked(d: dict) -> Reading | None:
    """The Reading of a plainly well-formed interval dict; None, KeyError or TypeError for any
    other, which BatchInterval then judges."""
    uuid, start, end, energy, method = d["uuid"], d["start_us"], d["end_us"], d["energy_mj"], d["method"]
    if not (_text(uuid, 1, 96) and type(start) is int and type(end) is int and type(energy) is int
            and 0 <= start < end <= _US_MAX and 0 <= energy <= MAX_ENERGY_MJ
            and type(method) is str and method in METHODS):
        return None
    get = d.get
    integers = [get(field) for field in INTEGER_MAX]  # power, utilizations, memory used, clock
    if not all(v is None or type(v) is int and 0 <= v <= high
               for v, high in zip(integers, INTEGER_MAX.values(), strict=True)):
        return None
    sm, tensor, dram = get("sm_active_pct"), get("tensor_active_pct"), get("dram_bw_pct")
    pids, processes, mig = get("pids", _NONE), get("processes", _NONE), get("mig", _NONE)
    if type(pids) is not list or type(processes) is not list or type(mig) is not list:
        return None
    if pids and not (len(pids) <= MAX_PIDS and all(type(p) is int and 0 <= p <= 2**31 for p in pids)):
        return None
    return Reading(uuid, start, end, energy, method, *integers,
                   None if sm is None else _pct(sm), None if tensor is None else _pct(tensor),
                   None if dram is None else _pct(dram),
                   _processes(processes) if processes else None, _mig(mig) if mig else None)


def _processes(items: list) -> list[dict]:
    if len(items) > MAX_PROCESSES:
        raise TypeError("not a plain list of processes")
    out = []
    for p in items:
        pid, sm, key, user = p["pid"], p.get("sm_pct"), p.get("job_key"), p.get("user")
        if not (type(pid) is int and 0 <= pid <= 2**31 and (user is None or _text(user, 0, 200))
                and (key is None or (_text(key, 3, 300) and key.find(":") > 0 and key.find(":") < len(key) - 1))):
            raise TypeError("not a plain process")
        out.append({"pid": pid, "sm_pct": None if sm is None else _pct(sm), "job_key": key, "user": user})
    return out


def _mig(items: list) -> list[dict]:
    if len(items) > MAX_MIG:
        raise TypeError("not a plain list of MIG instances")
    out = []
    for m in items:
        if not _text(m["uuid"], 1, 96):
            raise TypeError("not a plain MIG instance")
        out.append({"uuid": m["uuid"], "activity_pct": _pct(m["activity_pct"])})
    return out
