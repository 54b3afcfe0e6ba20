"""NVML check on a real GPU node: does the energy counter agree with integrated power?

Reads every GPU through NvmlBackend each 100 ms while (when torch is importable) a matrix-
multiply load runs on every CUDA device between an idle lead-in and an idle tail, then compares
the energy counter's delta with the integral of sampled power (the 1 s average and the instant
field). Prints a table and writes JSON (summary and raw samples) to --out.

    python bench/nvml_check.py --out OUT.json [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a bare checkout

from accounting.clock import US_PER_S, SystemClock  # noqa: E402
from accounting.errors import GpuError  # noqa: E402
from accounting.gpu.nvml import NvmlBackend  # noqa: E402

IDLE_EDGE_S = 2.0  # idle before and after the load, so the step shows in the samples
MATMUL_N = 8192


def start_load(load_s: float) -> tuple[list[threading.Thread], dict[str, Any]]:
    """One matmul thread per CUDA device, started once all are warm; none without torch."""
    stats: dict[str, Any] = {"torch": False, "devices": 0, "matmuls": 0, "load_s": 0.0}
    try:
        import torch
    except ImportError:
        return [], stats
    if not torch.cuda.is_available():
        return [], stats
    stats.update(torch=True, devices=torch.cuda.device_count(), load_s=load_s)
    ready = threading.Barrier(stats["devices"] + 1)
    lock = threading.Lock()

    def run(device: int) -> None:
        try:
            a = torch.randn(MATMUL_N, MATMUL_N, device=f"cuda:{device}", dtype=torch.bfloat16)
            b, c = torch.randn_like(a), torch.empty_like(a)
            torch.cuda.synchronize(device)
        except Exception as err:  # a broken device must not hang the others at the barrier
            stats[f"error_cuda_{device}"] = repr(err)
            ready.abort()
            return
        ready.wait()
        time.sleep(IDLE_EDGE_S)
        stop_at = time.monotonic() + load_s
        done = 0
        while time.monotonic() < stop_at:
            for _ in range(20):
                torch.matmul(a, b, out=c)
            torch.cuda.synchronize(device)  # keeps the queue short, so the load stops on time
            done += 20
        with lock:
            stats["matmuls"] += done

    threads = [
        threading.Thread(target=run, args=(d,), daemon=True) for d in range(stats["devices"])
    ]
    for t in threads:
        t.start()
    try:
        ready.wait(timeout=120)
    except threading.BrokenBarrierError:
        stats["torch"] = False  # no load after all; the errors say why
    return threads, stats


def sample(backend: NvmlBackend, seconds: float, period_s: float = 0.1) -> dict[str, list]:
    """Every GPU every period: the reading plus the instant power field, or the error."""
    clock = SystemClock()
    samples: dict[str, list] = {g.uuid: [] for g in backend.gpus()}
    next_at = time.monotonic()
    end_at = next_at + seconds
    while next_at < end_at:
        for uuid, rows in samples.items():
            try:
                r = backend.read(uuid)
                instant_mw = backend.instant_power_mw(uuid)
                rows.append(
                    {
                        "t_us": r.timestamp_us,
                        "instant_t_us": clock.now_us(),
                        "energy_mj": r.energy_mj,
                        "power_mw": r.power_mw,
                        "instant_mw": instant_mw,
                        "gpu_util_pct": r.gpu_util_pct,
                        "sm_clock_mhz": r.sm_clock_mhz,
                    }
                )
            except GpuError as err:
                rows.append({"t_us": clock.now_us(), "error": f"{type(err).__name__}: {err}"})
        next_at += period_s
        time.sleep(max(0.0, next_at - time.monotonic()))
    return samples


def integral_j(rows: list[dict], t_key: str, p_key: str) -> float | None:
    """Trapezoid integral of power over the samples that have it (mW·µs → J)."""
    pts = [(r[t_key], r[p_key]) for r in rows if r.get(p_key) is not None]
    if len(pts) < 2:
        return None
    mw_us = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in pairwise(pts))
    return mw_us / 1e3 / US_PER_S


def summarize(info: Any, rows: list[dict], limit_mw: int | None) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    energy = [r for r in ok if r["energy_mj"] is not None]
    power = [r["power_mw"] for r in ok if r["power_mw"] is not None]
    instant = [r["instant_mw"] for r in ok if r["instant_mw"] is not None]
    util = [r["gpu_util_pct"] for r in ok if r["gpu_util_pct"] is not None]
    counter_j = (energy[-1]["energy_mj"] - energy[0]["energy_mj"]) / 1e3 if energy else None
    power_j = integral_j(ok, "t_us", "power_mw")
    return {
        "uuid": info.uuid,
        "name": info.name,
        "index": info.index,
        "samples": len(rows),
        "errors": len(rows) - len(ok),
        "power_limit_mw": limit_mw,
        "energy_first_mj": energy[0]["energy_mj"] if energy else None,
        "energy_last_mj": energy[-1]["energy_mj"] if energy else None,
        "counter_delta_j": counter_j,
        "power_integral_j": power_j,
        "instant_integral_j": integral_j(ok, "instant_t_us", "instant_mw"),
        "counter_over_power_integral": counter_j / power_j if counter_j and power_j else None,
        "power_mean_mw": round(statistics.fmean(power)) if power else None,
        "power_max_mw": max(power, default=None),
        "instant_mean_mw": round(statistics.fmean(instant)) if instant else None,
        "instant_max_mw": max(instant, default=None),
        "util_mean_pct": round(statistics.fmean(util), 1) if util else None,
        "util_max_pct": max(util, default=None),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    def f(v: Any, fmt: str = "") -> str:
        return "-" if v is None else format(v, fmt)

    head = (
        "idx uuid                                      name                       energy_last_mJ "
    )
    head += "  avgP_mW  instP_mW util%  counter_J  Pint_J  instInt_J  ratio  err"
    print(head)
    for s in rows:
        print(
            f"{s['index']:>3} {s['uuid']:<41} {s['name'][:26]:<26} {f(s['energy_last_mj']):>14} "
            f"{f(s['power_mean_mw']):>9} {f(s['instant_mean_mw']):>9} {f(s['util_mean_pct']):>5} "
            f"{f(s['counter_delta_j'], '.1f'):>10} {f(s['power_integral_j'], '.1f'):>7} "
            f"{f(s['instant_integral_j'], '.1f'):>10} "
            f"{f(s['counter_over_power_integral'], '.3f'):>6} {s['errors']:>4}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result path")
    parser.add_argument("--seconds", type=float, default=20.0, help="sampling time (default 20)")
    args = parser.parse_args(argv)
    try:
        backend = NvmlBackend(SystemClock())
    except GpuError as err:
        print(f"NVML unavailable: {err}", file=sys.stderr)
        args.out.write_text(json.dumps({"error": str(err)}, indent=2))
        return 2
    try:
        load_s = max(0.0, args.seconds - 2 * IDLE_EDGE_S)
        threads, load = start_load(load_s)
        samples = sample(backend, args.seconds)
        for t in threads:
            t.join(timeout=30)
        infos = backend.gpus()
        summary = [summarize(i, samples[i.uuid], backend.power_limit_mw(i.uuid)) for i in infos]
    finally:
        backend.close()
    if load["torch"] and load["load_s"]:
        flops = 2 * MATMUL_N**3 * load["matmuls"]
        load["tflops_per_s_all_devices"] = round(flops / load["load_s"] / 1e12, 1)
    print(f"load: {load}")
    print_table(summary)
    result = {"seconds": args.seconds, "load": load, "gpus": summary, "samples": samples}
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
