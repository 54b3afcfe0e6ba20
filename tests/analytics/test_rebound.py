"""The rebound decomposition: a hand-worked A100 → H200 example with the figures written out, the
zero-value limits, and hypothesis properties (the effects add up; swapping the periods negates them)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accounting.analytics.rebound import EFFECTS, Cohort, Decomposition, decompose, summary
from accounting.errors import InvalidInput

# ── the hand-worked example ─────────────────────────────────────────────────────────────
# One cohort, the pretraining team, in both periods (a cohort that spans the chip change).
# Baseline: a 7B model on A100s (312 TFLOP/s dense BF16).
#   W0 = 4.0e22 FLOP, capacity 1.0e23 peak FLOP (3.205e8 A100-seconds)  → U0 = 0.40
#   E0 = 1.25e11 J (34,722.2 kWh)                                         → e0 = 1.25e-12 J/FLOP (390 W mean)
# Current: a 70B model on H200s (989 TFLOP/s dense BF16).
#   WT = 8.0e23 FLOP (×20), capacity 2.5e24 peak FLOP                     → UT = 0.32 (1/U ×1.25)
#   ET = 1.5625e12 J (434,027.8 kWh)                                      → eT = 6.25e-13 J/FLOP (×0.5; 618 W mean)
# Check: ET/E0 = 20 × 1 × 1.25 × 0.5 = 12.5.   ΔE = 1.4375e12 J = 399,305.6 kWh.
# L(ET, E0) = 1.4375e12 / ln 12.5 = 1.4375e12 / 2.5257286443082556 = 5.691426920462793e11 J
#   scale          = L · ln 20   = L · 2.995732273553991   = +1.7049991308204392e12 J  (+473,610.9 kWh)
#   mix            = L · ln 1    =                           0
#   utilization    = L · ln 1.25 = L · 0.22314355131420976 = +1.270005215077364e11 J   (+35,277.9 kWh)
#   chip intensity = L · ln 0.5  = L · −0.6931471805599453 = −3.944996523281757e11 J   (−109,583.2 kWh)
#   sum: (2.99573 + 0.22314 − 0.69315) / 2.52573 × 1.4375e12 = 1.4375e12 J ✓
# Multiplicative: D_x = exp(ΔE_x / L): D_scale = 20, D_mix = 1, D_util = 1.25, D_chip = 0.5; product 12.5.
A100_7B = Cohort("pretraining", energy_j=1.25e11, work=4.0e22, capacity=1.0e23)
H200_70B = Cohort("pretraining", energy_j=1.5625e12, work=8.0e23, capacity=2.5e24)


def test_hand_worked_a100_7b_to_h200_70b():
    d = decompose([A100_7B], [H200_70B])
    L = 1.4375e12 / math.log(12.5)
    assert L == pytest.approx(5.691426920462793e11, rel=1e-12)
    assert d.total_change_j == pytest.approx(1.4375e12, rel=1e-12)
    assert d.effects_j["scale"] == pytest.approx(1.7049991308204392e12, rel=1e-9)
    assert d.effects_j["scale"] == pytest.approx(L * math.log(20), rel=1e-9)
    assert d.effects_j["mix"] == 0.0
    assert d.effects_j["utilization"] == pytest.approx(1.270005215077364e11, rel=1e-9)
    assert d.effects_j["chip_intensity"] == pytest.approx(-3.944996523281757e11, rel=1e-9)
    assert d.effects_j["no_work"] == 0.0
    # the rebound: newer chips save energy, and more work eats the saving many times over
    assert d.effects_j["chip_intensity"] < 0 < d.total_change_j < d.effects_j["scale"]
    assert math.fsum(d.effects_j.values()) == pytest.approx(d.total_change_j, rel=1e-12)
    assert d.total_ratio == 12.5
    assert d.ratios == pytest.approx({"scale": 20, "mix": 1, "utilization": 1.25, "chip_intensity": 0.5,
                                      "no_work": 1}, rel=1e-9)
    (row,) = d.rows
    assert row.status == "both"
    for period, figures in ((row.baseline, (1.0, 0.4, 1.25e-12)), (row.current, (1.0, 0.32, 6.25e-13))):
        assert (period.share, period.utilization, period.j_per_peak_flop) == pytest.approx(figures, rel=1e-12)


def test_hand_worked_with_a_new_cohort():
    # The same, plus an eval cohort new in the current period: 3.6e9 J (1,000 kWh), 4e21 FLOP on 1e22.
    # WT = 8.04e23, so pretraining's share falls from 1 to 8.0/8.04 = 20/20.1; L is unchanged (its own
    # energies) = 5.691426920462793e11 J.
    #   pretraining scale = L · ln(8.04e23/4e22) = L · ln 20.1 = L · 3.0007198150650303 = 1.7078377536227246e12 J
    #   pretraining mix   = L · ln(20/20.1)      = L · −0.004987541511039162              = −2.838622802285397e9 J
    #   eval mix          = its whole energy (new: S^0 = 0, the Ang & Liu limit)          = +3.6e9 J
    #   mix = 3.6e9 − 2.838622802285397e9 = +7.613771977146034e8 J; utilization and chip as before.
    eval_l40s = Cohort("eval", energy_j=3.6e9, work=4.0e21, capacity=1.0e22)
    d = decompose([A100_7B], [H200_70B, eval_l40s])
    assert d.total_change_j == pytest.approx(1.5661e12 - 1.25e11, rel=1e-12)
    assert d.effects_j["scale"] == pytest.approx(1.7078377536227246e12, rel=1e-9)
    assert d.effects_j["mix"] == pytest.approx(7.613771977146034e8, rel=1e-9)
    assert d.effects_j["utilization"] == pytest.approx(1.270005215077364e11, rel=1e-9)
    assert d.effects_j["chip_intensity"] == pytest.approx(-3.944996523281757e11, rel=1e-9)
    rows = {row.key: row for row in d.rows}
    assert rows["eval"].status == "new"
    assert rows["eval"].effects_j == {"scale": 0, "mix": 3.6e9, "utilization": 0, "chip_intensity": 0, "no_work": 0}
    assert rows["eval"].baseline.share == 0.0 and rows["eval"].baseline.utilization is None
    assert math.fsum(d.effects_j.values()) == pytest.approx(d.total_change_j, rel=1e-12)


def test_summary_of_the_hand_worked_example():
    assert summary(decompose([A100_7B], [H200_70B])) == (
        "energy +399,306 kWh (×12.5): +473,611 kWh from more useful work, −109,583 kWh from more efficient chips, "
        "+35,278 kWh from lower MFU, 0 kWh from the mix"
    )
    assert summary(decompose([H200_70B], [A100_7B])) == (
        "energy −399,306 kWh (×0.08): −473,611 kWh from less useful work, +109,583 kWh from less efficient chips, "
        "−35,278 kWh from higher MFU, 0 kWh from the mix"
    )


def test_token_variant_carries_its_label_and_wording():
    # An inference fleet: 1e12 tokens on 1e21 peak FLOPs, then 3e12 tokens on 2e21; 1e10 J → 1.5e10 J.
    # tokens per peak FLOP 1e-9 → 1.5e-9 (not an MFU, only its change counts): 1/U ×(2/3).
    d = decompose([Cohort("serving", 1e10, 1e12, 1e21)], [Cohort("serving", 1.5e10, 3e12, 2e21)], work="tokens")
    assert d.work == "tokens"
    L = 5e9 / math.log(1.5)
    assert d.effects_j["scale"] == pytest.approx(L * math.log(3), rel=1e-9)
    assert d.effects_j["utilization"] == pytest.approx(L * math.log(2 / 3), rel=1e-9)
    assert d.effects_j["chip_intensity"] == pytest.approx(L * math.log(0.75), rel=1e-9)
    assert d.rows[0].current.utilization == 1.5e-9
    text = summary(d)
    assert "from more tokens," in text and "from more tokens per peak FLOP" in text and "MFU" not in text


# ── zero values and edge cases ──────────────────────────────────────────────────────────

def test_cohorts_by_gpu_model_put_a_chip_migration_in_the_mix():
    a100 = Cohort("A100", A100_7B.energy_j, A100_7B.work, A100_7B.capacity)
    h200 = Cohort("H200", H200_70B.energy_j, H200_70B.work, H200_70B.capacity)
    d = decompose([a100], [h200])
    assert d.effects_j == {"scale": 0, "mix": 1.4375e12, "utilization": 0, "chip_intensity": 0, "no_work": 0}
    assert [row.status for row in d.rows] == ["vanished", "new"]


def test_the_analytic_limit_is_what_the_small_value_strategy_creeps_towards():
    eval_l40s = Cohort("eval", energy_j=3.6e9, work=4.0e21, capacity=1.0e22)
    exact = decompose([A100_7B], [H200_70B, eval_l40s]).effects_j
    errors = []
    for delta in (1e-20, 1e-100, 1e-300):  # the eval cohort shrunk uniformly in the baseline
        tiny = Cohort("eval", 3.6e9 * delta, 4.0e21 * delta, 1.0e22 * delta)
        approx = decompose([A100_7B, tiny], [H200_70B, eval_l40s]).effects_j
        errors.append(max(abs(approx[name] - exact[name]) for name in EFFECTS))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01 * 3.6e9  # it converges only like 1 / ln(1/δ): no constant is exact


def test_identical_periods_have_no_effects():
    fleet = [A100_7B, Cohort("eval", 3.6e9, 4e21, 1e22), Cohort("idle", 5e8, 0, 1e21)]
    d = decompose(fleet, list(reversed(fleet)))
    assert d.total_change_j == 0 and all(value == 0 for value in d.effects_j.values())
    assert d.ratios == dict.fromkeys(EFFECTS, 1.0)
    assert summary(d) == "energy unchanged at 35,861 kWh"  # 1.291e11 J


def test_a_single_cohort_has_no_mix_effect():
    d = decompose([Cohort("x", 7.0, 3.0, 11.0)], [Cohort("x", 2.0, 5.0, 13.0)])
    assert d.effects_j["mix"] == 0.0
    assert math.fsum(d.effects_j.values()) == pytest.approx(-5.0, rel=1e-12)


def test_energy_that_did_no_work_is_its_own_effect():
    # A cohort that went from useful (1e10 J) to busy-but-useless (4e10 J, no work): −1e10 J leaves
    # through the mix (its share fell to 0), +4e10 J arrives as no-work energy.
    busy = Cohort("busy", 4e10, 0.0, 1e21)
    d = decompose([A100_7B, Cohort("busy", 1e10, 1e20, 1e21)], [A100_7B, busy])
    rows = {row.key: row for row in d.rows}
    assert rows["busy"].effects_j == {"scale": 0, "mix": -1e10, "utilization": 0, "chip_intensity": 0,
                                      "no_work": 4e10}
    assert rows["busy"].current.utilization == 0.0
    assert "+11,111 kWh from more energy that did no useful work" in summary(decompose([A100_7B], [A100_7B, busy]))
    assert all(math.isfinite(v) for v in d.effects_j.values())


def test_no_useful_work_in_the_baseline_puts_the_new_work_in_scale():
    d = decompose([Cohort("A100", 2e9, 0.0, 1e21)], [A100_7B])  # W0 = 0: nothing but idle energy
    assert d.effects_j == {"scale": 1.25e11, "mix": 0, "utilization": 0, "chip_intensity": 0, "no_work": -2e9}
    assert d.rows[0].baseline.share is None


def test_work_with_no_metered_energy_is_a_chip_intensity_limit():
    d = decompose([Cohort("x", 0.0, 1e20, 1e21)], [Cohort("x", 5e9, 1e20, 1e21)])  # e0 = 0
    assert d.effects_j["chip_intensity"] == 5e9 and d.ratios is None and d.total_ratio is None


def test_empty_periods():
    d = decompose([], [])
    assert d.total_change_j == 0 and d.effects_j == dict.fromkeys(EFFECTS, 0.0) and d.rows == ()
    assert decompose([], [A100_7B]).effects_j["scale"] == 1.25e11  # W0 = 0


@pytest.mark.parametrize("field", ["energy_j", "work", "capacity"])
@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "3"])
def test_bad_numbers_name_their_field(field, bad):
    values = {"energy_j": 1.0, "work": 1.0, "capacity": 1.0} | {field: bad}
    with pytest.raises(ValueError, match=field) as caught:
        Cohort("x", **values)
    assert isinstance(caught.value, InvalidInput) and caught.value.field == field


def test_other_invalid_inputs():
    with pytest.raises(ValueError, match="capacity"):
        Cohort("x", 1.0, 1.0, 0.0)  # work with no capacity: MFU would be infinite
    with pytest.raises(ValueError, match="key"):
        decompose([A100_7B, A100_7B], [])
    with pytest.raises(ValueError, match="key"):
        Cohort("", 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="work"):
        decompose([], [], work="joules")
    assert Cohort("idle", 1.0, 0.0, 0.0).energy_j == 1.0  # energy outside any allocation is allowed


# ── properties ──────────────────────────────────────────────────────────────────────────

positive = st.floats(1e-3, 1e15)
ENERGY = st.one_of(st.just(0.0), positive, st.floats(1e-3, 1e15).map(lambda x: round(x)))
WORK = st.one_of(st.just(0.0), st.floats(1e-3, 1e25))
CAPACITY = st.floats(1e-3, 1e26)


@st.composite
def cohort_values(draw) -> tuple[float, float, float]:
    work = draw(WORK)
    capacity = draw(CAPACITY if work > 0 else st.one_of(st.just(0.0), CAPACITY))
    return draw(ENERGY), work, capacity


# few keys, so that cohorts are shared, new and vanished; periods may be empty
PERIOD = st.dictionaries(st.sampled_from(["A100", "H100", "H200", "L40S", "nlp×H100", "vision×A100"]),
                         cohort_values(), max_size=6).map(
    lambda d: [Cohort(key, *values) for key, values in d.items()])


def all_finite(d: Decomposition) -> bool:
    numbers = [d.total_change_j, *d.effects_j.values(), *(d.ratios or {}).values(), d.total_ratio or 0.0]
    for row in d.rows:
        numbers += row.effects_j.values()
        for p in (row.baseline, row.current):
            numbers += [v for v in (p.share, p.utilization, p.j_per_peak_flop) if v is not None]
    return all(math.isfinite(v) for v in numbers)


@given(PERIOD, PERIOD, st.sampled_from(["flops", "tokens"]))
def test_the_effects_add_up_to_the_total_change(baseline, current, work):
    d = decompose(baseline, current, work=work)
    assert all_finite(d)
    assert set(d.effects_j) == set(EFFECTS)
    in_play = d.baseline_energy_j + d.current_energy_j  # relative to the energy in play: 0 only if no effect
    assert abs(math.fsum(d.effects_j.values()) - d.total_change_j) <= 1e-9 * in_play
    for row in d.rows:
        change = row.current.energy_j - row.baseline.energy_j
        assert abs(math.fsum(row.effects_j.values()) - change) <= 1e-9 * (row.current.energy_j + row.baseline.energy_j)


@given(PERIOD, PERIOD)
def test_swapping_the_periods_negates_every_effect(baseline, current):
    forward, backward = decompose(baseline, current), decompose(current, baseline)
    assert backward.total_change_j == -forward.total_change_j
    assert backward.effects_j == {name: -value for name, value in forward.effects_j.items()}
    for row_f, row_b in zip(forward.rows, backward.rows, strict=True):
        assert row_b.effects_j == {name: -value for name, value in row_f.effects_j.items()}
        assert (row_b.baseline, row_b.current) == (row_f.current, row_f.baseline)


@given(PERIOD, PERIOD)
def test_the_ratios_multiply_to_the_energy_ratio(baseline, current):
    d = decompose(baseline, current)
    if d.baseline_energy_j > 0 and d.current_energy_j > 0:
        assert math.prod(d.ratios.values()) == pytest.approx(d.current_energy_j / d.baseline_energy_j, rel=1e-9)
        backward = decompose(current, baseline)
        for name in EFFECTS:
            assert d.ratios[name] * backward.ratios[name] == pytest.approx(1.0, rel=1e-9)
    else:
        assert d.ratios is None and d.total_ratio is None


@given(PERIOD, PERIOD)
def test_summary_always_reads(baseline, current):
    text = summary(decompose(baseline, current))
    assert text.startswith("energy ") and "nan" not in text and "inf" not in text
