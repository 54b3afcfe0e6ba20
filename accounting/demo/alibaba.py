"""A fleet scenario from a real GPU cluster trace, Alibaba's openb pod and node lists: reading the
CSV files (shared/data/README.md, section 3), choosing a busy window, placing its GPU tasks on a
small simulated fleet, and replaying them, with truth per job, through sampler → ingest → ledger.

- Models: V100M16/V100M32 → "V100 SXM", T4 → "T4", A10 → "A10". G1, G2, G3 are undisclosed
  internal codes, ASSUMED here to be "A100 SXM" (8-GPU nodes of a 2023 cluster): a guess, not a
  fact. P100 (pre-Volta) has no energy counter, which the simulated fleet cannot model: left out.
- A task runs from scheduled_time to deletion_time (trace seconds). Pending pods have no schedule:
  skipped. An end may be the trace's cut-off (right-censored): tasks are clipped to the window.
  There is no team, user or utilization column: the team is a hash of the pod name.
- Workload (`workload_for`): a task on several GPUs, or a non-LS one (BE, Burstable, Guaranteed)
  traced for an hour or more, is Training at a power fraction drawn from [0.6, 0.95]; the rest
  (LS = latency-sensitive serving, short batch) is Inference at a mean load drawn from [0.2, 0.8];
  draws are seeded by (seed, pod name); a shared task's figure is scaled by gpu_milli / 1000.
- Placement (`place`): tasks in start order, first fit over the nodes in order. num_gpu == 1 with
  gpu_milli < 1000 is a co-tenant on one time-sliced GPU while its shares stay ≤ 1000 milli at
  every instant; any other task takes num_gpu whole GPUs of one node that nobody else uses
  meanwhile; gpu_spec ("V100M16|V100M32") limits the node models. Tasks with no room are left out.
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlmodel import Session

from accounting.clock import US_PER_S, FakeClock, to_datetime, to_us
from accounting.demo.scenario import SHARED_DATA
from accounting.errors import AccountingError
from accounting.gpu.backend import GpuInfo
from accounting.gpu.simulated import SimGpu, SimulatedFleet
from accounting.gpu.workloads import STEP_US, Inference, Training, Workload
from accounting.jobs.models import JobCreate, JobKind
from accounting.jobs.service import create_job, finish_job
from accounting.ledger.ingest import ingest_batch
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool

POD_FILE = SHARED_DATA / "alibaba_openb_pod_list_default.csv"
NODE_FILE = SHARED_DATA / "alibaba_openb_node_list_gpu_node.csv"
POD_HEADER = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec", "qos", "pod_phase",
              "creation_time", "deletion_time", "scheduled_time")  # fmt: skip
NODE_HEADER = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
QOS = ("LS", "BE", "Burstable", "Guaranteed")
PHASES = ("Running", "Failed", "Pending", "Succeeded")
CATALOG_MODEL = {"V100M16": "V100 SXM", "V100M32": "V100 SXM", "T4": "T4", "A10": "A10", "P100": "P100",
                 "G1": "A100 SXM", "G2": "A100 SXM", "G3": "A100 SXM"}  # G1–G3: an assumption, see above
NO_COUNTER = frozenset({"P100"})  # pre-Volta: left out of simulated fleets
TEAMS = ("search", "ads", "recommend", "vision", "speech", "nlp", "risk", "platform")  # the trace has none
SOURCE = "alibaba"
START_US = to_us(datetime(2025, 7, 27, tzinfo=UTC))  # an hour boundary: replays start here
MILLI = 1_000


class TraceFormatError(AccountingError, ValueError):
    """A trace file that is not in the openb format: the file, line and what is wrong."""

    def __init__(self, path: Path, line: int, message: str) -> None:
        super().__init__(f"{path.name} line {line}: {message}")
        self.path, self.line = path, line


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: tuple[str, ...]  # allowed trace GPU models; () = any
    qos: str
    phase: str
    creation_s: int
    deletion_s: int
    scheduled_s: int | None  # None: never scheduled (Pending)

    @property
    def shared(self) -> bool:  # a fractional GPU request: a co-tenant on one time-sliced GPU
        return self.num_gpu == 1 and self.gpu_milli < MILLI


@dataclass(frozen=True, slots=True)
class Node:
    sn: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str  # the trace's code, e.g. "G2", "V100M32"


class _Row:
    """One data row of a trace file, with its line number for errors."""

    def __init__(self, path: Path, line: int, values: dict[str, str]) -> None:
        self.path, self.line, self.values = path, line, values

    def fail(self, message: str) -> TraceFormatError:
        return TraceFormatError(self.path, self.line, message)

    def text(self, name: str, allowed: tuple[str, ...] | None = None) -> str:
        value = self.values[name].strip()
        if not value or (allowed is not None and value not in allowed):
            raise self.fail(f"{name} {value!r} is not one of {list(allowed)}" if allowed else f"empty {name}")
        return value

    def integer(self, name: str, lo: int = 0, hi: int | None = None) -> int:
        text = self.values[name].strip()
        try:
            value = int(text)
        except ValueError:
            raise self.fail(f"{name} is not an integer: {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise self.fail(f"{name} = {value} is outside [{lo}, {'∞' if hi is None else hi}]")
        return value


def _rows(path: Path, header: tuple[str, ...]) -> Iterator[_Row]:
    if not path.exists():
        raise FileNotFoundError(f"trace file not found: {path} (see shared/data/README.md, section 3)")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        if (first := tuple(next(reader, ()))) != header:
            raise TraceFormatError(path, 1, f"header is {list(first)}, expected {list(header)}")
        for values in reader:
            if len(values) != len(header):
                raise TraceFormatError(path, reader.line_num, f"{len(values)} fields, expected {len(header)}")
            yield _Row(path, reader.line_num, dict(zip(header, values, strict=True)))


def load_pods(path: Path = POD_FILE) -> list[Pod]:
    """Every row of an openb pod list; TraceFormatError names the first malformed one."""
    pods = []
    for row in _rows(path, POD_HEADER):
        num_gpu = row.integer("num_gpu", 0, 8)
        scheduled = row.integer("scheduled_time") if row.values["scheduled_time"].strip() else None
        creation, deletion = row.integer("creation_time"), row.integer("deletion_time")
        if deletion < max(creation, scheduled or 0):
            raise row.fail(f"deletion_time {deletion} precedes the pod's creation or schedule")
        spec = tuple(s for s in row.values["gpu_spec"].split("|") if s)
        if unknown := [s for s in spec if s not in CATALOG_MODEL]:
            raise row.fail(f"gpu_spec names unknown GPU models {unknown}")
        pods.append(Pod(row.text("name"), row.integer("cpu_milli"), row.integer("memory_mib"), num_gpu,
                        row.integer("gpu_milli", 1 if num_gpu else 0, MILLI), spec, row.text("qos", QOS),
                        row.text("pod_phase", PHASES), creation, deletion, scheduled))  # fmt: skip
    return pods


def load_nodes(path: Path = NODE_FILE) -> list[Node]:
    """Every row of an openb node list; TraceFormatError names the first malformed one."""
    return [Node(row.text("sn"), row.integer("cpu_milli"), row.integer("memory_mib"), row.integer("gpu", 1, 16),
                 row.text("model", tuple(CATALOG_MODEL))) for row in _rows(path, NODE_HEADER)]  # fmt: skip


def gpu_tasks(pods: list[Pod]) -> list[Pod]:
    """Pods that ran on at least one GPU: scheduled, not Pending, for a positive time."""
    return [p for p in pods
            if p.num_gpu and p.phase != "Pending" and p.scheduled_s is not None and p.scheduled_s < p.deletion_s]


def busiest_window(tasks: list[Pod], window_s: int) -> int:
    """The start of the window_s-long window with the most GPU tasks running on average (the most
    task-seconds inside it); the earliest of equals."""
    if not tasks:
        raise ValueError("no GPU task to choose a window from")
    starts = np.sort(np.array([p.scheduled_s for p in tasks], dtype=np.int64))
    ends = np.sort(np.array([p.deletion_s for p in tasks], dtype=np.int64))
    cum_s, cum_e = np.concatenate(([0], np.cumsum(starts))), np.concatenate(([0], np.cumsum(ends)))

    def running_s(t: np.ndarray) -> np.ndarray:  # ∫₀ᵗ tasks running = Σ max(0, t − start) − Σ max(0, t − end)
        ks, ke = np.searchsorted(starts, t), np.searchsorted(ends, t)
        return ks * t - cum_s[ks] - (ke * t - cum_e[ke])

    # The task-seconds inside are piecewise linear in the window's start: the best start puts the
    # window's start or end on a task's start or end.
    edges = np.concatenate((starts, ends, starts - window_s, ends - window_s))
    candidates = np.unique(np.clip(edges, starts[0], max(ends[-1] - window_s, starts[0])))
    return int(candidates[int(np.argmax(running_s(candidates + window_s) - running_s(candidates)))])


def team_of(name: str) -> str:
    return TEAMS[int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") % len(TEAMS)]


def workload_for(pod: Pod, seed: int) -> tuple[JobKind, Workload]:
    """The made-up workload of a task; see the module docstring for the rule."""
    rng = random.Random(f"{seed}:{pod.name}")
    share = pod.gpu_milli / MILLI if pod.shared else 1.0
    if pod.num_gpu > 1 or (pod.qos != "LS" and pod.deletion_s - (pod.scheduled_s or 0) >= 3_600):
        return JobKind.training, Training(power_fraction=round(share * rng.uniform(0.6, 0.95), 4))
    return JobKind.inference, Inference(mean_load=round(share * rng.uniform(0.2, 0.8), 4))


@dataclass(frozen=True, slots=True)
class FleetGpu:
    uuid: str
    model: str  # catalog key
    node: str
    index: int
    trace_model: str


@dataclass(frozen=True, slots=True)
class ScenarioJob:
    external_id: str  # the pod name
    team: str
    kind: JobKind
    gpu_uuids: tuple[str, ...]
    start_us: int
    end_us: int
    workload: Workload
    gpu_milli: int  # per GPU; < 1000: a co-tenant on a shared GPU
    clipped: bool  # cut at the window's start or end

    @property
    def tenant(self) -> str:  # its job key: the fleet's truth account and its processes' owner
        return f"{SOURCE}:{self.external_id}"

    @property
    def shared(self) -> bool:
        return self.gpu_milli < MILLI


@dataclass
class FleetScenario:
    start_us: int
    duration_s: float  # simulated, a whole number of 100 ms steps
    window_start_s: int  # trace seconds
    window_s: int
    time_compression: float
    seed: int
    gpus: list[FleetGpu]
    jobs: list[ScenarioJob]
    unplaced: list[str] = field(default_factory=list)  # pods of the window that found no room

    @property
    def end_us(self) -> int:
        return self.start_us + round(self.duration_s * US_PER_S)

    @property
    def nodes(self) -> list[str]:
        return list(dict.fromkeys(g.node for g in self.gpus))

    def build_fleet(self, clock: FakeClock) -> SimulatedFleet:
        """The fleet, every job assigned under its tenant key; the clock at or before start_us (its boot)."""
        fleet = SimulatedFleet([SimGpu(g.uuid, g.model, g.index) for g in self.gpus], clock=clock, seed=self.seed)
        for job in self.jobs:
            for uuid in job.gpu_uuids:
                fleet.assign(uuid, job.start_us, job.end_us, job.workload, tenant=job.tenant)
        return fleet


def pick_nodes(nodes: list[Node], max_nodes: int) -> list[Node]:
    """max_nodes nodes whose model mix follows the inventory's (Sainte-Laguë over the models with
    an energy counter), each model's nodes in sn order."""
    by_model: dict[str, list[Node]] = {}
    for node in sorted(nodes, key=lambda n: n.sn):
        if node.model not in NO_COUNTER:
            by_model.setdefault(node.model, []).append(node)
    taken = dict.fromkeys(by_model, 0)
    picked: list[Node] = []
    while len(picked) < max_nodes and (left := [m for m in by_model if taken[m] < len(by_model[m])]):
        model = max(left, key=lambda m: (len(by_model[m]) / (2 * taken[m] + 1), m))
        picked.append(by_model[model][taken[model]])
        taken[model] += 1
    return picked


def _peak_milli(uses: list[tuple[int, int, int]], start: int, end: int) -> int:
    """The most milli in use at any instant of [start, end) on one GPU: at its start or at a use's."""
    uses = [u for u in uses if u[0] < end and start < u[1]]
    points = {start, *(s for s, _, _ in uses if s > start)}
    return max((sum(m for s, e, m in uses if s <= t < e) for t in points), default=0)


def place(tasks: list[tuple[Pod, int, int]], gpus: list[FleetGpu]) -> tuple[dict[str, list[str]], list[str]]:
    """First-fit placement of (pod, start_us, end_us) in order: pod name → GPU uuids, and the pods
    that found no room."""
    uses: dict[str, list[tuple[int, int, int]]] = {g.uuid: [] for g in gpus}
    nodes = {n: [g for g in gpus if g.node == n] for n in dict.fromkeys(g.node for g in gpus)}
    placed: dict[str, list[str]] = {}
    for pod, start, end in tasks:
        milli = pod.gpu_milli if pod.shared else MILLI
        for node_gpus in nodes.values():
            if pod.gpu_spec and node_gpus[0].trace_model not in pod.gpu_spec:
                continue
            # A whole GPU's 1000 milli leaves no room: a whole-GPU task never shares, nor joins a shared GPU.
            free = [g.uuid for g in node_gpus if _peak_milli(uses[g.uuid], start, end) + milli <= MILLI]
            if len(free) >= pod.num_gpu:
                placed[pod.name] = free[: pod.num_gpu]
                for uuid in placed[pod.name]:
                    uses[uuid].append((start, end, milli))
                break
    return placed, [pod.name for pod, _, _ in tasks if pod.name not in placed]


def alibaba_scenario(*, window_start_s: int | None = None, window_s: int = 6 * 3_600, max_nodes: int = 16,
                     time_compression: float = 12.0, seed: int = 7, start_us: int = START_US,
                     pods: list[Pod] | None = None, nodes: list[Node] | None = None) -> FleetScenario:  # fmt: skip
    """A window of the trace (by default the busiest, see busiest_window) on max_nodes nodes, from
    start_us on: trace seconds ÷ time_compression = simulated seconds, rounded to the simulator's
    100 ms steps (a task keeps at least one). pods and nodes default to the shared data files."""
    if window_s <= 0 or max_nodes <= 0 or time_compression <= 0:
        raise ValueError("window_s, max_nodes and time_compression must be positive")
    tasks = gpu_tasks(load_pods() if pods is None else pods)
    if window_start_s is None:
        window_start_s = busiest_window(tasks, window_s)
    window_end_s = window_start_s + window_s
    gpus = [FleetGpu(f"GPU-{SOURCE}-{n.sn}-{i}", CATALOG_MODEL[n.model], n.sn, i, n.model)
            for n in pick_nodes(load_nodes() if nodes is None else nodes, max_nodes) for i in range(n.gpus)]

    def sim_us(t_s: int) -> int:
        return start_us + round((t_s - window_start_s) * US_PER_S / time_compression / STEP_US) * STEP_US

    timed = []
    for p in sorted(tasks, key=lambda p: (p.scheduled_s, p.name)):
        if p.scheduled_s < window_end_s and p.deletion_s > window_start_s:
            start = sim_us(max(p.scheduled_s, window_start_s))
            timed.append((p, start, max(sim_us(min(p.deletion_s, window_end_s)), start + STEP_US)))
    placed, unplaced = place(timed, gpus)
    jobs = []
    for p, start, end in [t for t in timed if t[0].name in placed]:
        kind, workload = workload_for(p, seed)
        clipped = p.scheduled_s < window_start_s or p.deletion_s > window_end_s
        jobs.append(ScenarioJob(p.name, team_of(p.name), kind, tuple(placed[p.name]), start, end, workload,
                                p.gpu_milli if p.shared else MILLI, clipped))  # fmt: skip
    return FleetScenario(start_us, (sim_us(window_end_s) - start_us) / US_PER_S, window_start_s, window_s,
                         time_compression, seed, gpus, jobs, unplaced)  # fmt: skip


class NodeBackend:
    """One node's GPUs of the fleet, as that node's sampler sees them; the rest is the fleet's."""

    def __init__(self, fleet: SimulatedFleet, uuids: list[str]) -> None:
        self._fleet, self._infos = fleet, [g for g in fleet.gpus() if g.uuid in set(uuids)]

    def gpus(self) -> list[GpuInfo]:
        return list(self._infos)

    def __getattr__(self, name: str):  # kind, read, mig_instances, close
        return getattr(self._fleet, name)


@dataclass
class Replay:
    fleet: SimulatedFleet
    job_ids: dict[str, int]  # pod name → job id in the ledger
    readings: int = 0
    batches: int = 0


def replay(scenario: FleetScenario, *, session: Session, clock: FakeClock, spool_dir: Path, sample_s: float = 5.0,
           batch_s: float = 300.0, at_boundaries: bool = False,
           after_batch: Callable[[], None] | None = None) -> Replay:  # fmt: skip
    """The scenario through the pipeline, in process: a Sampler per node (the fleet resolves pids to
    job keys) reading every sample_s, a batch per node every batch_s ingested into `session`, each
    job created at its start and finished at its end (source "alibaba", external id = pod name).
    at_boundaries adds readings as each job starts, one 100 ms step before it ends and as it ends
    (what prolog/epilog hooks could trigger). Services don't commit; `after_batch` may."""
    if clock.now_us() < scenario.start_us:
        clock.set(scenario.start_us)
    fleet = scenario.build_fleet(clock)
    samplers = [Sampler(backend=NodeBackend(fleet, [g.uuid for g in scenario.gpus if g.node == node]),
                        spool=Spool(Path(spool_dir) / node), clock=clock, node=node, resolver=fleet)
                for node in scenario.nodes]  # fmt: skip
    # (time, order, what, job): at one instant jobs end, then start, then GPUs are read, then batches go.
    events: list[tuple[int, int, str, ScenarioJob | None]] = [(j.start_us, 1, "start", j) for j in scenario.jobs]
    events += [(j.end_us, 0, "end", j) for j in scenario.jobs]
    sample_us, batch_us = round(sample_s * US_PER_S), round(batch_s * US_PER_S)
    reads = {*range(scenario.start_us, scenario.end_us, sample_us), scenario.end_us}  # a time is read once
    reads |= {t for j in scenario.jobs for t in (j.start_us, j.end_us - STEP_US, j.end_us)} if at_boundaries else set()
    events += [(t, 2, "sample", None) for t in reads] + [(scenario.end_us, 3, "flush", None)]
    events += [(t, 3, "flush", None) for t in range(scenario.start_us + batch_us, scenario.end_us, batch_us)]
    result = Replay(fleet, {})
    for t, _, what, job in sorted(events, key=lambda e: e[:2]):
        clock.set(max(t, clock.now_us()))
        if what == "start":
            result.job_ids[job.external_id] = create_job(session, JobCreate(
                external_id=job.external_id, source=SOURCE, team=job.team, kind=job.kind,
                gpu_uuids=list(job.gpu_uuids), started_at=to_datetime(job.start_us)), clock=clock).id
        elif what == "end":
            finish_job(session, result.job_ids[job.external_id], to_datetime(job.end_us), clock=clock)
        elif what == "sample":
            result.readings += sum(s.sample() for s in samplers)
        else:
            for s in samplers:
                s.flush()
                result.batches += s.ship(lambda batch: ingest_batch(session, batch, clock=clock))
            if after_batch is not None:
                after_batch()
    return result
