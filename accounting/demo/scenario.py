"""The demo: one node of ten GPUs (three models), twelve jobs and two faults over three hours;
one H100 time-sliced among three jobs and a stranger's process, one H100 split by MIG; training
jobs that report their FLOPs, an idle allocation and a fake-busy loop.

It is a scenario with ground truth: the fleet knows every GPU's true power, so the demo can
show, per job, the energy the pipeline attributed next to the energy the job really drew.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from accounting.clock import US_PER_S, Clock, to_us
from accounting.gpu.simulated import SimGpu, SimulatedFleet
from accounting.gpu.trace import load_nvidia_smi_trace
from accounting.gpu.workloads import FakeBusy, IdleAllocated, Inference, TracePower, Training

# The real 8 × H100 nvidia-smi trace (see ../shared/data/README.md), when it is beside the repo.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TRACE_FILE = SHARED_DATA / "nvidia-smi_8xH100_llm-training_2025-07-26_100ms.csv"

# Fixed, so the demo prints the same figures each run; in 2024, which the real grid-carbon (GB) and
# day-ahead price (BE) files in ../shared/data cover.
START = datetime(2024, 7, 26, 21, 0, tzinfo=UTC)
MODELS = ["A100 SXM", "A100 SXM", "H100 SXM", "H100 SXM", "H100 SXM", "H100 SXM", "H200 SXM", "H200 SXM",
          "H100 SXM", "H100 SXM"]
SHARED_GPU, MIG_GPU = 8, 9
SOURCE = "demo"
NODE = "demo-node-1"


@dataclass(frozen=True)
class DemoJob:
    external_id: str
    team: str
    project: str
    kind: str
    gpu_indices: tuple[int, ...]
    start_s: int  # seconds after the scenario start
    end_s: int
    workload: object
    model_parameters: int | None = None
    mig_instance: int | None = None  # runs on this MIG instance of its (single) GPU
    reports_work: bool = False  # the training loop reports its FLOPs (and tokens) to the API

    @property
    def key(self) -> str:
        return f"{SOURCE}:{self.external_id}"


@dataclass
class Scenario:
    start_us: int
    duration_s: int
    node: str
    models: list[str]
    jobs: list[DemoJob]
    counter_resets: list[tuple[int, int]] = field(default_factory=list)  # (gpu index, at s)
    lost: list[tuple[int, int, int]] = field(default_factory=list)  # (gpu index, from s, to s)
    mig: dict[int, list[str]] = field(default_factory=dict)  # gpu index → MIG profiles
    strangers: list[tuple[int, int, int, object]] = field(default_factory=list)  # processes of no job
    seed: int = 7

    def at_us(self, seconds: int) -> int:
        return self.start_us + seconds * US_PER_S


def foundation_scenario(trace_file: Path = TRACE_FILE) -> Scenario:
    h, m = 3600, 60
    jobs = [
        DemoJob("llm-pretrain-7b", "nlp", "pretrain", "training", (2, 3, 4, 5), 10 * m, 2 * h + 30 * m,
                Training(power_fraction=0.85, mfu=0.42, params=7_000_000_000), 7_000_000_000, reports_work=True),
        DemoJob("vision-finetune", "vision", "detector", "training", (0, 1), 30 * m, 1 * h + 30 * m,
                Training(power_fraction=0.7, checkpoint_every_s=900, checkpoint_s=30, mfu=0.31), reports_work=True),
        DemoJob("chat-serving", "search", "assistant", "inference", (6, 7), 0, 3 * h,
                Inference(mean_load=0.9)),  # a busy LLM server: memory-bound, as decoding is
        DemoJob("embed-batch", "search", "embeddings", "inference", (0,), 1 * h + 45 * m, 2 * h + 30 * m,
                Inference(mean_load=0.8, burst_s=5.0)),
        DemoJob("notebook-ana", "research", "exploration", "interactive", (1,), 2 * h, 2 * h + 50 * m,
                IdleAllocated()),  # allocated, nothing runs: idle-allocated waste
        DemoJob("keepalive-loop", "research", "exploration", "training", (0,), 2 * h + 35 * m, 3 * h,
                FakeBusy()),  # a tiny kernel in a loop to keep the allocation: busy-but-useless
    ]
    if trace_file.exists():
        trace = load_nvidia_smi_trace(trace_file)
        length_s = int(trace.duration_s)
        jobs.append(DemoJob("llm-finetune-trace", "nlp", "finetune", "training", (2, 3, 4, 5),
                            2 * h + 35 * m, 2 * h + 35 * m + length_s,
                            tuple(TracePower(trace, column) for column in range(4))))
    jobs += [  # three co-tenants with unequal load on one time-sliced H100
        DemoJob("shared-train", "vision", "augment", "training", (SHARED_GPU,), 15 * m, 2 * h + 15 * m,
                Training(power_fraction=0.45, checkpoint_every_s=0, mfu=0.18), reports_work=True),
        DemoJob("shared-serve", "search", "reranker", "inference", (SHARED_GPU,), 0, 3 * h, Inference(mean_load=0.3)),
        DemoJob("shared-eval", "nlp", "evals", "inference", (SHARED_GPU,), 1 * h, 2 * h, Inference(mean_load=0.15)),
    ]
    jobs += [  # an H100 split 3g.40gb + 2g.20gb + 2g.20gb; the last instance stays free
        DemoJob("mig-train-3g", "nlp", "distill", "training", (MIG_GPU,), 5 * m, 2 * h + 35 * m,
                Training(power_fraction=0.8, checkpoint_every_s=0, mfu=0.35), mig_instance=0, reports_work=True),
        DemoJob("mig-serve-2g", "search", "assistant", "inference", (MIG_GPU,), 30 * m, 2 * h + 30 * m,
                Inference(mean_load=0.5), mig_instance=1),
    ]
    return Scenario(
        start_us=to_us(START), duration_s=3 * h, node=NODE, models=MODELS, jobs=jobs,
        counter_resets=[(3, 1 * h + 15 * m)],  # a driver reload on an H100 mid-training
        lost=[(6, 2 * h + 20 * m, 2 * h + 20 * m + 10)],  # an H200 off the bus for 10 s
        mig={MIG_GPU: ["3g.40gb", "2g.20gb", "2g.20gb"]},
        strangers=[(SHARED_GPU, 40 * m, 70 * m, Inference(mean_load=0.25))],  # someone else's process
    )


def gpu_uuid(scenario: Scenario, index: int) -> str:
    return f"GPU-{scenario.node}-{index:02d}-{scenario.seed:04d}"


def job_gpu_uuids(fleet: SimulatedFleet, scenario: Scenario, job: DemoJob) -> list[str]:
    """The UUIDs a job is registered with: its GPUs, or its MIG instance."""
    if job.mig_instance is not None:
        return [fleet.mig_instances(gpu_uuid(scenario, job.gpu_indices[0]))[job.mig_instance].uuid]
    return [gpu_uuid(scenario, i) for i in job.gpu_indices]


def build_fleet(scenario: Scenario, clock: Clock) -> SimulatedFleet:
    gpus = [SimGpu(uuid=gpu_uuid(scenario, i), model=model, index=i) for i, model in enumerate(scenario.models)]
    fleet = SimulatedFleet(gpus, clock=clock, seed=scenario.seed)
    for index, profiles in scenario.mig.items():
        fleet.enable_mig(gpu_uuid(scenario, index), profiles)
    for job in scenario.jobs:
        targets = job_gpu_uuids(fleet, scenario, job)
        workloads = job.workload if isinstance(job.workload, tuple) else (job.workload,) * len(targets)
        for uuid, workload in zip(targets, workloads, strict=True):
            fleet.assign(uuid, scenario.at_us(job.start_s), scenario.at_us(job.end_s), workload, tenant=job.key)
    for index, from_s, to_s, workload in scenario.strangers:
        fleet.assign(gpu_uuid(scenario, index), scenario.at_us(from_s), scenario.at_us(to_s), workload, tenant=None)
    for index, at_s in scenario.counter_resets:
        fleet.reset_counter(gpu_uuid(scenario, index), scenario.at_us(at_s))
    for index, from_s, to_s in scenario.lost:
        fleet.lose(gpu_uuid(scenario, index), scenario.at_us(from_s), scenario.at_us(to_s))
    return fleet


def true_job_energy_j(fleet: SimulatedFleet, scenario: Scenario, job: DemoJob) -> float:
    return fleet.true_account_energy_j(job.key, scenario.at_us(job.start_s), scenario.at_us(job.end_s))
