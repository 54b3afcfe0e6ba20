"""The one pint UnitRegistry, and the energy conversions the API offers."""

from __future__ import annotations

from enum import StrEnum

import pint

ureg = pint.UnitRegistry()
Q_ = ureg.Quantity


class EnergyUnit(StrEnum):
    J = "J"
    kWh = "kWh"
    MWh = "MWh"


_PINT_NAMES = {EnergyUnit.J: "joule", EnergyUnit.kWh: "kilowatt_hour", EnergyUnit.MWh: "megawatt_hour"}


def energy_from_mj(energy_mj: int, unit: EnergyUnit | str) -> float:
    """Stored millijoules → a float in `unit` (J, kWh or MWh)."""
    unit = EnergyUnit(unit)
    return Q_(energy_mj, "millijoule").to(_PINT_NAMES[unit]).magnitude


def mj_to_j(energy_mj: int) -> float:
    return energy_mj / 1_000
