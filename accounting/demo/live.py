"""A simulated fleet that runs in real time for `wattledger up` and `wattledger sampler`
on machines without a GPU: each GPU alternates between training, inference and idle
stretches, deterministically from the seed, for a week ahead of start-up."""

from __future__ import annotations

import random

from accounting.clock import US_PER_S, Clock
from accounting.gpu.simulated import SimGpu, SimulatedFleet
from accounting.gpu.workloads import Inference, Training

LIVE_MODELS = ("H100 SXM", "H100 SXM", "H200 SXM", "A100 SXM")
HORIZON_S = 7 * 24 * 3600


def live_fleet(clock: Clock, *, gpus: int, node: str, seed: int = 1) -> SimulatedFleet:
    fleet = SimulatedFleet(
        [SimGpu(uuid=f"GPU-sim-{node}-{i:02d}", model=LIVE_MODELS[i % len(LIVE_MODELS)], index=i)
         for i in range(gpus)],
        clock=clock, seed=seed,
    )
    rng = random.Random(seed)
    start_us = clock.now_us()
    for gpu in fleet.gpus():
        t_s = rng.randint(0, 300)
        while t_s < HORIZON_S:
            length_s = rng.randint(600, 3 * 3600)
            workload = rng.choice(
                [Training(power_fraction=rng.uniform(0.6, 0.9)), Inference(mean_load=rng.uniform(0.2, 0.7)), None]
            )
            if workload is not None:
                fleet.assign(gpu.uuid, start_us + t_s * US_PER_S, start_us + (t_s + length_s) * US_PER_S, workload)
            t_s += length_s + rng.randint(60, 900)
    return fleet
