"""The demo's useful-work part: efficiency per job and per GPU model, and the waste findings,
as the API answers them, next to the simulated truth where there is one."""

from __future__ import annotations

import httpx
from rich.console import Console
from rich.table import Table

from accounting.clock import to_datetime
from accounting.demo.scenario import Scenario


def work_report(scenario: Scenario, fleet, client: httpx.Client, job_ids: dict[str, int]) -> dict:
    period = {"from": to_datetime(scenario.start_us).isoformat(),
              "to": to_datetime(scenario.at_us(scenario.duration_s)).isoformat()}
    jobs = []
    for job in scenario.jobs:
        efficiency = client.get(f"/v1/jobs/{job_ids[job.external_id]}").json()["efficiency"]
        truth = fleet.true_work(job.key, scenario.at_us(job.start_s), scenario.at_us(job.end_s))
        jobs.append({
            "external_id": job.external_id, "flops": efficiency["flops"],
            "flops_provenance": efficiency["flops_provenance"], "mfu": efficiency["mfu"],
            "mfu_truth": truth["mfu"] if job.reports_work else None,
            "flop_per_j": efficiency["flop_per_j"], "tokens_per_j": efficiency["tokens_per_j"],
            "realized_vs_spec": efficiency["realized_vs_spec"], "duty_cycle_pct": efficiency["duty_cycle_pct"],
        })
    by_model = client.get("/v1/efficiency", params={**period, "group_by": "gpu_model"}).json()["groups"]
    waste = client.get("/v1/waste", params=period).json()
    return {
        "jobs": jobs,
        "gpu_models": [{k: g[k] for k in ("group", "jobs", "energy_j", "mfu", "flop_per_j", "spec_flop_per_j",
                                           "realized_vs_spec")} for g in by_model],
        "findings": [{k: f[k] for k in ("kind", "severity", "external_id", "team", "start", "end",
                                         "energy_at_stake_j", "evidence")} for f in waste["findings"]],
        "energy_at_stake_j": waste["energy_at_stake_j"],
    }


def _num(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def render_work(work: dict, console: Console) -> None:
    table = Table(title="Useful work per joule (per job)")
    for column in ("job", "FLOPs from", "MFU", "MFU truth", "FLOP/J", "tokens/J", "of spec FLOP/J", "duty (%)"):
        table.add_column(column, justify="left" if column in ("job", "FLOPs from") else "right")
    for job in work["jobs"]:
        table.add_row(job["external_id"], job["flops_provenance"] or "—", _num(job["mfu"], ".3f"),
                      _num(job["mfu_truth"], ".3f"), _num(job["flop_per_j"], ".3g"), _num(job["tokens_per_j"], ".3g"),
                      _num(job["realized_vs_spec"], ".1%"), _num(job["duty_cycle_pct"], ".0f"))
    console.print(table)
    models = Table(title="Per GPU model")
    for column in ("GPU model", "jobs", "energy (kWh)", "MFU", "FLOP/J", "spec FLOP/J", "of spec"):
        models.add_column(column, justify="left" if column == "GPU model" else "right")
    for g in work["gpu_models"]:
        models.add_row(g["group"], str(g["jobs"]), f"{g['energy_j'] / 3.6e6:.3f}", _num(g["mfu"], ".3f"),
                       _num(g["flop_per_j"], ".3g"), _num(g["spec_flop_per_j"], ".3g"),
                       _num(g["realized_vs_spec"], ".1%"))
    console.print(models)
    waste = Table(title=f"Waste findings — {work['energy_at_stake_j'] / 3.6e6:.3f} kWh at stake")
    for column in ("kind", "job", "team", "energy (kWh)", "evidence"):
        waste.add_column(column, justify="right" if column == "energy (kWh)" else "left", overflow="fold")
    for f in work["findings"]:
        # the signals that make the case first
        first = ("dram_bw_pct", "tensor_active_pct", "mfu", "peer_median_mfu", "duty_cycle_pct", "mean_power_w",
                 "idle_power_w")
        keys = sorted(f["evidence"], key=lambda k: (first.index(k) if k in first else len(first), k))
        evidence = ", ".join(f"{k}={f['evidence'][k]:.3g}" if isinstance(f["evidence"][k], float)
                             else f"{k}={f['evidence'][k]}" for k in keys[:4])
        waste.add_row(f"{f['kind']} ({f['severity']})", f["external_id"], f["team"],
                      f"{f['energy_at_stake_j'] / 3.6e6:.3f}", evidence)
    console.print(waste)
