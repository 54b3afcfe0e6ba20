"""MIG layouts of simulated GPUs: the instances carved from a physical GPU, their identities and
what NVML shows of them.

A layout is static: it holds for the simulated GPU's whole timeline (reconfiguring MIG needs a GPU
reset, which the simulator does not model). Instance UUIDs are a pure function of the parent's
UUID, the instance's position and its profile, so a rebuilt fleet names them the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from accounting.gpu.backend import GpuInfo
from accounting.gpu.specs import MIG_SLICES, mig_slices


@dataclass(frozen=True, slots=True)
class MigInstance:
    uuid: str  # "MIG-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
    parent_uuid: str
    index: int  # its position within the parent
    profile: str  # e.g. "3g.40gb"
    slices: int  # compute slices, of MIG_SLICES

    @property
    def share(self) -> float:
        """Its part of the GPU: of the idle baseline, and of the dynamic power range."""
        return self.slices / MIG_SLICES

    def info(self, parent_name: str) -> GpuInfo:
        return GpuInfo(self.uuid, f"{parent_name} MIG {self.profile}", self.index,
                       parent_uuid=self.parent_uuid, mig_profile=self.profile, mig_slices=self.slices)  # fmt: skip


def instance_uuid(parent_uuid: str, index: int, profile: str) -> str:
    h = hashlib.blake2b(repr((parent_uuid, index, profile)).encode(), digest_size=16).hexdigest()
    return f"MIG-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def layout(parent_uuid: str, model: str, profiles: Sequence[str]) -> tuple[MigInstance, ...]:
    """The instances for `profiles`, in order; ValueError for a model without MIG, an unknown
    profile, no profiles at all, or more than MIG_SLICES compute slices in total."""
    if isinstance(profiles, str):
        raise TypeError("profiles must be a sequence of profile names, not one string")
    if not profiles:
        raise ValueError("a MIG layout needs at least one instance")
    slices = [mig_slices(model, p) for p in profiles]
    if sum(slices) > MIG_SLICES:
        raise ValueError(f"{list(profiles)} needs {sum(slices)} compute slices; a {model} has {MIG_SLICES}")
    return tuple(
        MigInstance(instance_uuid(parent_uuid, i, p), parent_uuid, i, p, s)
        for i, (p, s) in enumerate(zip(profiles, slices, strict=True))
    )
