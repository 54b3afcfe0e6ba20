"""The rebound ("ambition creep") decomposition: why fleet energy rose although chips got better.

Per cohort g (a GPU model, a team, team × model …) and period, E_g = W · S_g · (1/U_g) · e_g:

- W    total useful work of the period (FLOPs; tokens in the token variant), Σ_g work_g
- S_g  share of W done on g, work_g / W                                  → the `mix` effect
- U_g  work_g / capacity_g: MFU, with capacity = peak FLOP/s × allocated s → `utilization`
- e_g  energy_g / capacity_g, joules per peak FLOP (= mean power ÷ peak)   → `chip_intensity`

and W → `scale`. The product is energy_g identically. The additive LMDI-I (Ang 2004; Ang 2005, "The
LMDI approach to decomposition analysis: a practical guide", Energy Policy 33, 867–871) splits
E^T − E^0 into ΔE_x = Σ_g L(E_g^T, E_g^0) · ln(x_g^T / x_g^0), L(a, b) = (a − b)/(ln a − ln b),
L(a, a) = a, with no residual; the multiplicative LMDI-I has D_x = exp(ΔE_x / L(E^T, E^0)) (the
weights Σ_g L(E_g^T, E_g^0)/L(E^T, E^0) · ln(x ratio) of the guide), and Π_x D_x = E^T / E^0.

Zero values (Ang & Liu 2007, "Handling zero values in the logarithmic mean Divisia index
decomposition approach", Energy Policy 35, 238–246, after Ang, Zhang & Choi 1998 and Wood & Lenzen
2006): no small constant stands in for a zero (Wood & Lenzen show that strategy can mislead, and it
converges only like 1/ln(1/δ)); the terms take their analytical limits. Where a cohort's productive
energy is zero in one period, the other factors stay finite as its energy goes to zero, so L → 0
like 1/ln(1/δ) times finite logs gives them 0, while L · ln(x^T/x^0) → the cohort's whole change for
the one factor that is zero. Which factor that is follows from shrinking the empty period's
extensive quantities (energy, work, capacity) uniformly to zero, so that the ratios stay put:
  1. the period has no useful work at all (W = 0): W is the zero      → `scale` gets the change;
  2. else the cohort did no work there (absent, new or vanished): S_g  → `mix`;
  3. else it did work but drew no energy (unmetered): e_g              → `chip_intensity`.
Hence a cohort new in the current period adds E_g^T to one effect and a vanished one takes E_g^0
off it; U_g and e_g of an absent cohort are undefined and are not guessed. A consequence worth
knowing: with cohorts by GPU model, moving the work from A100s to H200s is a *mix* effect (work
moved to another cohort); the chip effect shows within a cohort that spans both periods, such as a
team or a workload. Energy with no work behind it (work_g = 0, energy_g > 0, MFU 0) does not fit
the identity at all: S_g = 0 and 1/U_g = ∞, and as work → 0 at fixed energy the mix and
utilization terms run to −∞ and +∞, so no limit exists. That energy is its own effect, `no_work`
= Σ_g (no-work energy_g^T − no-work energy_g^0), outside the factorization, and the cohort's
productive energy counts as zero in that period (rule 1 or 2 then applies).

Every per-cohort contribution is exact by construction (the four logs telescope to ln(E^T/E^0),
and each zero rule moves exactly the cohort's change), so the effects sum to E^T − E^0 up to
rounding, and every quantity is computed sign-symmetrically: swapping the periods negates every
effect exactly. Identical periods give all effects exactly 0.

Token variant (`work="tokens"`): work_g is tokens, capacity is still peak FLOPs, so U_g is tokens
per peak FLOP. Its absolute value is not MFU and not comparable across models; only its change
between periods means something, which is all the decomposition uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from accounting.errors import InvalidInput

WorkKind = Literal["flops", "tokens"]
WORK_KINDS: tuple[str, ...] = ("flops", "tokens")
FACTORS = ("scale", "mix", "utilization", "chip_intensity")
EFFECTS = (*FACTORS, "no_work")
J_PER_KWH = 3_600_000.0


class InvalidCohort(InvalidInput, ValueError):
    """A cohort or argument that cannot be decomposed; `field` names the culprit."""


@dataclass(frozen=True)
class Cohort:
    """One cohort's totals over one period. `work`: useful FLOPs (tokens in the token variant);
    `capacity`: peak FLOPs it could have done, peak FLOP/s × allocated s."""

    key: str
    energy_j: float
    work: float
    capacity: float

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise InvalidCohort("key", f"must be a non-empty string, got {self.key!r}")
        for name in ("energy_j", "work", "capacity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidCohort(name, f"must be a number, got {value!r} (cohort {self.key!r})")
            if not math.isfinite(value) or value < 0:
                raise InvalidCohort(name, f"must be finite and ≥ 0, got {value!r} (cohort {self.key!r})")
            object.__setattr__(self, name, float(value))
        if self.work > 0 and self.capacity == 0:
            raise InvalidCohort("capacity", f"must be > 0 where work is done (cohort {self.key!r})")


@dataclass(frozen=True)
class CohortPeriod:
    """A cohort's figures in one period (all zero where it is absent). `share` is None when the
    period has no work; `utilization` (MFU for FLOPs) and `j_per_peak_flop` when no capacity."""

    energy_j: float
    work: float
    capacity: float
    share: float | None
    utilization: float | None
    j_per_peak_flop: float | None


@dataclass(frozen=True)
class CohortRow:
    key: str
    baseline: CohortPeriod
    current: CohortPeriod
    effects_j: dict[str, float]  # this cohort's part of each effect

    @property
    def status(self) -> str:
        """'both', 'new', 'vanished' or 'idle' (no energy and no work in either period)."""
        was = self.baseline.energy_j > 0 or self.baseline.work > 0
        is_ = self.current.energy_j > 0 or self.current.work > 0
        return {(True, True): "both", (False, True): "new", (True, False): "vanished"}.get((was, is_), "idle")


@dataclass(frozen=True)
class Decomposition:
    """E^T − E^0 split into effects (J), additive and multiplicative. `ratios` (D_x, one per
    effect, Π D_x = total_ratio) is None unless both periods used energy."""

    work: str
    baseline_energy_j: float
    current_energy_j: float
    total_change_j: float
    effects_j: dict[str, float]
    total_ratio: float | None
    ratios: dict[str, float] | None
    rows: tuple[CohortRow, ...]


def decompose(baseline: Sequence[Cohort], current: Sequence[Cohort], *, work: WorkKind = "flops") -> Decomposition:
    """The additive and multiplicative LMDI-I of current − baseline energy over the cohorts."""
    if work not in WORK_KINDS:
        raise InvalidCohort("work", f"must be one of {WORK_KINDS}, got {work!r}")
    before, after = _by_key(baseline, "baseline"), _by_key(current, "current")
    work_0 = math.fsum(c.work for c in before.values())
    work_t = math.fsum(c.work for c in after.values())
    rows = []
    for key in sorted(before.keys() | after.keys()):
        c_0, c_t = before.get(key) or _absent(key), after.get(key) or _absent(key)
        effects = _cohort_effects(c_0, c_t, work_0, work_t)
        rows.append(CohortRow(key, _period(c_0, work_0), _period(c_t, work_t), effects))
    effects_j = {name: math.fsum(row.effects_j[name] for row in rows) for name in EFFECTS}
    energy_0 = math.fsum(c.energy_j for c in before.values())
    energy_t = math.fsum(c.energy_j for c in after.values())
    total_ratio = ratios = None
    if energy_0 > 0 and energy_t > 0:
        weight = _log_mean(energy_t, energy_0)
        total_ratio = energy_t / energy_0
        ratios = {name: _exp(effects_j[name] / weight) for name in EFFECTS}
    return Decomposition(
        work=str(work),  # a StrEnum member becomes its plain value
        baseline_energy_j=energy_0,
        current_energy_j=energy_t,
        # the exactly rounded difference, finer than energy_t − energy_0 when a small change rides on big totals
        total_change_j=math.fsum([*(c.energy_j for c in after.values()), *(-c.energy_j for c in before.values())]),
        effects_j=effects_j,
        total_ratio=total_ratio,
        ratios=ratios,
        rows=tuple(rows),
    )


def _by_key(cohorts: Sequence[Cohort], period: str) -> dict[str, Cohort]:
    found: dict[str, Cohort] = {}
    for cohort in cohorts:
        if not isinstance(cohort, Cohort):
            raise InvalidCohort(period, f"expected Cohort, got {type(cohort).__name__}")
        if cohort.key in found:
            raise InvalidCohort("key", f"{cohort.key!r} appears twice in the {period}")
        found[cohort.key] = cohort
    return found


def _absent(key: str) -> Cohort:
    return Cohort(key, 0.0, 0.0, 0.0)


def _productive_j(cohort: Cohort) -> float:
    """The energy the factorization covers: all of it where work was done, none otherwise."""
    return cohort.energy_j if cohort.work > 0 else 0.0


def _no_work_j(cohort: Cohort) -> float:
    return cohort.energy_j if cohort.work == 0 else 0.0


def _cohort_effects(c_0: Cohort, c_t: Cohort, work_0: float, work_t: float) -> dict[str, float]:
    effects = dict.fromkeys(EFFECTS, 0.0)
    effects["no_work"] = _no_work_j(c_t) - _no_work_j(c_0)
    e_0, e_t = _productive_j(c_0), _productive_j(c_t)
    if e_0 > 0 and e_t > 0:
        weight = _log_mean(e_t, e_0)
        # ln of the four factor ratios as differences of the same logs, so that they telescope to
        # ln(E^T/E^0): S = work/W, 1/U = capacity/work, e = energy/capacity.
        ln_w = _ln_ratio(work_t, work_0)
        ln_work = _ln_ratio(c_t.work, c_0.work)
        ln_capacity = _ln_ratio(c_t.capacity, c_0.capacity)
        ln_energy = _ln_ratio(e_t, e_0)
        effects["scale"] = weight * ln_w
        effects["mix"] = weight * (ln_work - ln_w)
        effects["utilization"] = weight * (ln_capacity - ln_work)
        effects["chip_intensity"] = weight * (ln_energy - ln_capacity)
    elif e_t > 0:  # new (productive) in the current period: the limit gives the zero factor E^T
        effects[_zero_factor(c_0, work_0)] += e_t
    elif e_0 > 0:  # vanished: the zero factor takes −E^0
        effects[_zero_factor(c_t, work_t)] -= e_0
    return effects


def _zero_factor(empty: Cohort, total_work: float) -> str:
    """The factor that is zero in the period where the cohort has no productive energy."""
    if total_work == 0:
        return "scale"
    if empty.work == 0:
        return "mix"
    return "chip_intensity"  # work was done with no energy metered: e = 0


def _period(cohort: Cohort, total_work: float) -> CohortPeriod:
    has_capacity = cohort.capacity > 0
    return CohortPeriod(
        energy_j=cohort.energy_j,
        work=cohort.work,
        capacity=cohort.capacity,
        share=cohort.work / total_work if total_work > 0 else None,
        utilization=cohort.work / cohort.capacity if has_capacity else None,
        j_per_peak_flop=cohort.energy_j / cohort.capacity if has_capacity else None,
    )


def _ln_ratio(a: float, b: float) -> float:
    """ln(a/b) for a, b > 0, accurate near 1 and exactly antisymmetric: _ln_ratio(b, a) == −_ln_ratio(a, b)."""
    if a == b:
        return 0.0
    if a < b:
        return -_ln_ratio(b, a)
    ratio = a / b
    if ratio < 2.0:
        return math.log1p((a - b) / b)
    if math.isinf(ratio):
        return math.log(a) - math.log(b)
    return math.log(ratio)


def _log_mean(a: float, b: float) -> float:
    """L(a, b) = (a − b)/(ln a − ln b), L(a, a) = a, for a, b > 0; symmetric to the last bit."""
    high, low = max(a, b), min(a, b)
    if high == low:
        return high
    return (high - low) / _ln_ratio(high, low)


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:  # a factor ratio beyond 1e308; the additive effect is still finite
        return math.inf


_PHRASES = {  # effect → (when it added energy, when it saved energy, when exactly zero)
    "scale": ("more useful work", "less useful work", "useful work"),
    "chip_intensity": ("less efficient chips", "more efficient chips", "chip efficiency"),
    "utilization": ("lower MFU", "higher MFU", "MFU"),
    "mix": ("the mix", "the mix", "the mix"),
    "no_work": ("more energy that did no useful work", "less energy that did no useful work", ""),
}
_TOKEN_PHRASES = {
    "scale": ("more tokens", "fewer tokens", "tokens"),
    "utilization": ("fewer tokens per peak FLOP", "more tokens per peak FLOP", "tokens per peak FLOP"),
}


def summary(decomposition: Decomposition) -> str:
    """One plain-language line in kWh, e.g. 'energy +399,306 kWh (×12.5): +473,611 kWh from more useful
    work, −109,583 kWh from more efficient chips, +35,278 kWh from lower MFU, 0 kWh from the mix'."""
    d = decomposition
    if d.total_change_j == 0 and not any(d.effects_j.values()):
        return f"energy unchanged at {_kwh(d.current_energy_j)} kWh"
    phrases = _PHRASES | (_TOKEN_PHRASES if d.work == "tokens" else {})
    head = f"energy {_signed_kwh(d.total_change_j)} kWh"
    if d.total_ratio is not None:
        head += f" (×{d.total_ratio:.3g})"
    parts = []
    for name in ("scale", "chip_intensity", "utilization", "mix", "no_work"):
        value = d.effects_j[name]
        if name == "no_work" and value == 0:
            continue
        up, down, flat = phrases[name]
        parts.append(f"{_signed_kwh(value)} kWh from {up if value > 0 else down if value < 0 else flat}")
    return f"{head}: {', '.join(parts)}"


def _kwh(energy_j: float) -> str:
    kwh = abs(energy_j) / J_PER_KWH
    return f"{kwh:,.0f}" if kwh >= 10 else f"{kwh:.3g}"


def _signed_kwh(energy_j: float) -> str:
    sign = "+" if energy_j > 0 else "−" if energy_j < 0 else ""
    return sign + _kwh(energy_j)
