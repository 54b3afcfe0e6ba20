"""The simulated fleet's ground truth: what each GPU truly drew, what each account's share of it
was, and the useful work each account truly did — the answers the metering pipeline is checked
against.

`GroundTruth` is mixed into SimulatedFleet (simulated.py) and reads the fleet's rendered chunks
through the host's `_lock`, `_gpus`, `_gpu(uuid)`, `_chunk(g, c)`, `_segments(g, t0, t1)` and
`_energy_nj(g, t)`. Accounts are a tenant's job key, "idle", "unattributed" (runs of no job) or a
legacy_account(...) of an exclusive run (see sharing.py).
"""

from __future__ import annotations

from typing import Any

from accounting.clock import US_PER_S
from accounting.gpu import sharing
from accounting.gpu.chunks import CHUNK_STEPS
from accounting.gpu.workloads import STEP_US


class GroundTruth:
    """True energy, power, per-account energy and useful work of a simulated fleet."""

    _lock: Any
    _gpus: dict[str, Any]

    # Energy ----------------------------------------------------------------------------------
    def true_energy_j(self, uuid: str, start_us: int, end_us: int) -> float:
        """The exact integral of true power over [start_us, end_us), partial steps included."""
        with self._lock:
            g = self._gpu(uuid)
            return (self._energy_nj(g, end_us) - self._energy_nj(g, start_us)) / 1e9

    def true_power_w(self, uuid: str, t_us: int) -> float:
        with self._lock:
            c, i = divmod(t_us // STEP_US, CHUNK_STEPS)
            return int(self._chunk(self._gpu(uuid), c).power_mw[i]) / 1_000

    def true_account_energy_j(self, account: str, start_us: int, end_us: int, *, uuid: str | None = None) -> float:
        """The true energy over [start_us, end_us) of one account — a tenant's job key, "idle",
        "unattributed" or a legacy_account(...) — on one physical GPU or, uuid None, all of them."""
        return self.true_account_energies_j(start_us, end_us, uuid=uuid).get(account, 0.0)

    def true_account_energies_j(self, start_us: int, end_us: int, *, uuid: str | None = None) -> dict[str, float]:
        """Every account's true energy over [start_us, end_us) (see sharing.py for the split);
        they add up to true_energy_j of the GPU(s), to float precision."""
        if end_us < start_us:
            raise ValueError("end_us must not precede start_us")
        with self._lock:
            gpus = list(self._gpus.values()) if uuid is None else [self._gpu(uuid)]
            totals: dict[str, float] = {}
            for g in gpus:
                for account, nj in sharing.account_nj(self._segments(g, start_us, end_us), g.mig).items():
                    totals[account] = totals.get(account, 0.0) + nj
            return {account: nj / 1e9 for account, nj in totals.items()}

    # Useful work -----------------------------------------------------------------------------
    def true_flops(self, account: str, start_us: int, end_us: int, *, uuid: str | None = None) -> float:
        """The useful FLOPs the runs of `account` (a tenant's job key, or a legacy_account(...) of an
        exclusive run) truly did over [start_us, end_us): the integral of their FLOP rates."""
        return self.true_work(account, start_us, end_us, uuid=uuid)["flops"]

    def true_work(self, account: str, start_us: int, end_us: int, *, uuid: str | None = None) -> dict[str, Any]:
        """What the runs of `account` truly did over [start_us, end_us), on one physical GPU or, uuid
        None, all of them:

        - flops: useful FLOPs (float: counts pass 2^63);
        - tokens: tokens processed by the runs whose workload models them (`params` given), None
          when none does;
        - gpu_s: the runs' allocated GPU-seconds in the window (a MIG instance counts its share;
          co-tenants of one GPU each count the GPU's time);
        - capacity_flops: those GPU-seconds × each GPU's peak dense BF16 FLOP/s;
        - mfu: flops ÷ capacity_flops, None when the account ran nowhere in the window.
        """
        if end_us < start_us:
            raise ValueError("end_us must not precede start_us")
        flops = gpu_s = capacity = 0.0
        tokens: float | None = None
        with self._lock:
            gpus = list(self._gpus.values()) if uuid is None else [self._gpu(uuid)]
            for g in gpus:
                for a in g.assignments:
                    lo, hi = max(start_us, a.start_step * STEP_US), min(end_us, a.end_step * STEP_US)
                    if a.account != account or lo >= hi:
                        continue
                    run = sum(float(seg.chunk.flops(seg.lo_us, seg.hi_us)[seg.assignments.index(a)])
                              for seg in self._segments(g, lo, hi))  # fmt: skip
                    flops += run
                    gpu_s += (hi - lo) / US_PER_S * a.share
                    capacity += (hi - lo) / US_PER_S * a.share * g.spec.peak_bf16_flops
                    per_flop = getattr(a.workload, "tokens_per_flop", None)
                    if per_flop is not None:
                        tokens = (tokens or 0.0) + run * per_flop
        return {"flops": flops, "tokens": tokens, "gpu_s": gpu_s, "capacity_flops": capacity,
                "mfu": flops / capacity if capacity else None}  # fmt: skip
