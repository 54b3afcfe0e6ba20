"""Replay a window of the Alibaba openb GPU cluster trace through the pipeline, in process, on
SQLite, and compare every job's ledger energy with the simulated fleet's truth.

The same path as tests/demo/test_alibaba.py (accounting.demo.alibaba.replay: a Sampler per node,
batches ingested with ingest_batch, jobs created and finished with the jobs service), on a
larger window. The work is fixed by the arguments: GPUs × simulated seconds ÷ --sample-s readings.

    python bench/alibaba_replay.py --nodes 16 --window-h 6 [--compression 6] [--at-boundaries]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a bare checkout

from sqlmodel import Session  # noqa: E402

from accounting import migrations  # noqa: E402
from accounting.clock import US_PER_S, FakeClock  # noqa: E402
from accounting.db import make_engine  # noqa: E402
from accounting.demo.alibaba import alibaba_scenario, replay  # noqa: E402
from accounting.gpu.sharing import IDLE  # noqa: E402
from accounting.ledger.reports import conservation_errors, fleet_totals, job_energy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=16, help="nodes of the simulated fleet (default 16)")
    parser.add_argument("--window-h", type=float, default=6.0, help="trace hours to replay (default 6)")
    parser.add_argument("--window-start-s", type=int, default=None, help="trace second to start at (default: busiest)")
    parser.add_argument("--compression", type=float, default=6.0, help="trace s per simulated s (default 6)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="simulated s between readings (default 5)")
    parser.add_argument("--batch-s", type=float, default=300.0, help="simulated s between batches (default 300)")
    parser.add_argument("--at-boundaries", action="store_true", help="also read the GPUs at every job boundary")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    scenario = alibaba_scenario(window_start_s=args.window_start_s, window_s=round(args.window_h * 3_600),
                                max_nodes=args.nodes, time_compression=args.compression, seed=args.seed)  # fmt: skip
    shared = sum(j.shared for j in scenario.jobs)
    print(f"window: trace s {scenario.window_start_s}..{scenario.window_start_s + scenario.window_s} "
          f"({args.window_h:g} h ÷ {args.compression:g} = {scenario.duration_s / 3_600:.2f} simulated h)")
    print(f"fleet: {len(scenario.nodes)} nodes, {len(scenario.gpus)} GPUs; jobs: {len(scenario.jobs)} "
          f"({shared} shared, {len(scenario.jobs) - shared} whole-GPU), {len(scenario.unplaced)} found no room")
    with tempfile.TemporaryDirectory(prefix="wl-alibaba-") as home:
        url = f"sqlite:///{home}/ledger.db"
        migrations.upgrade(url)
        engine = make_engine(url)
        with Session(engine) as session:
            began = time.perf_counter()
            result = replay(scenario, session=session, clock=FakeClock(scenario.start_us),
                            spool_dir=Path(home) / "spool", sample_s=args.sample_s, batch_s=args.batch_s,
                            at_boundaries=args.at_boundaries, after_batch=session.commit)  # fmt: skip
            session.commit()
            wall_s = time.perf_counter() - began
            truth = result.fleet.true_account_energies_j(scenario.start_us, scenario.end_us)
            errors = []
            for job in scenario.jobs:
                attributed_j = job_energy(session, result.job_ids[job.external_id]).energy_mj / 1_000
                errors.append((abs(attributed_j - truth[job.tenant]) / truth[job.tenant], job))
            totals, conservation = fleet_totals(session), conservation_errors(session)
        engine.dispose()
    errors.sort(key=lambda e: e[0], reverse=True)
    off = [(e, j) for e, j in errors if e > 0.02]
    idle_error = abs(totals.idle_mj / 1_000 - truth.get(IDLE, 0.0)) / truth[IDLE] if truth.get(IDLE) else 0.0
    print(f"replay: {result.readings} readings, {result.batches} batches in {wall_s:.1f} s wall "
          f"({result.readings / wall_s:,.0f} readings/s, {scenario.duration_s / wall_s:.0f}× real time)")
    longest_off_s = max(((j.end_us - j.start_us) / US_PER_S for _, j in off), default=0.0)
    print(f"per-job error: max {errors[0][0]:.3%}, median {statistics.median(e for e, _ in errors):.4%}; "
          f"{len(off)} jobs above 2 %, the longest of them {longest_off_s:.1f} simulated s")
    print(f"idle: ledger vs truth {idle_error:.3%}; conservation: {'exact' if not conservation else conservation[:3]}; "
          f"ledger balanced: {totals.balanced}")
    return 0 if not conservation and totals.balanced else 1


if __name__ == "__main__":
    sys.exit(main())
