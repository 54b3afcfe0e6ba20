"""Sites: PUE, time zone, grid zone, prices; and which GPUs are where."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, Field

from accounting.chargeback import sites
from accounting.chargeback.models import EmbodiedCarbon, Site
from accounting.errors import InvalidInput
from accounting.gpu.specs import get_spec
from accounting.jobs.models import GpuUuid
from accounting.validation import NO_NUL

from ..auth import Admin, Reader
from ..deps import ClockDep, SessionDep
from ..errors import documented

router = APIRouter(tags=["sites"])


@router.post("/sites", response_model=Site, status_code=status.HTTP_201_CREATED, responses=documented(409))
def create_site(data: sites.SiteCreate, session: SessionDep, _: Admin):
    site = sites.create_site(session, data)
    session.commit()
    return site


@router.get("/sites", response_model=list[Site])
def list_sites(session: SessionDep, _: Reader):
    return sites.list_sites(session)


class Placement(BaseModel):
    gpu_uuids: list[GpuUuid] = Field(min_length=1, max_length=10_000)


SiteName = Annotated[str, Path(min_length=1, max_length=200, pattern=NO_NUL)]


@router.post("/sites/{name}/gpus", responses=documented(404))
def place_gpus(name: SiteName, data: Placement, session: SessionDep, clock: ClockDep, _: Admin) -> dict:
    placed = sites.place_gpus(session, name, data.gpu_uuids, clock=clock)
    session.commit()
    return {"site": name, "gpus": placed}


class EmbodiedIn(BaseModel):
    kg_co2e: float = Field(ge=0, le=1e6, description="Embodied carbon of one GPU (manufacture, transport), kg CO2e.")
    lifetime_hours: float = Field(gt=0, le=1e6, description="Service life it is amortized over, hours.")


@router.put("/embodied/{gpu_model}", response_model=EmbodiedCarbon)
def set_embodied(gpu_model: str, data: EmbodiedIn, session: SessionDep, _: Admin):
    """Scope 3: a GPU model's embodied carbon, charged per GPU-hour as a separate statement line."""
    if get_spec_or_none(gpu_model) is None:
        raise InvalidInput("gpu_model", f"not a catalog model: {gpu_model!r}")
    row = session.get(EmbodiedCarbon, gpu_model) or EmbodiedCarbon(gpu_model=gpu_model, kg_co2e=0, lifetime_hours=1)
    row.kg_co2e, row.lifetime_hours = data.kg_co2e, data.lifetime_hours
    session.add(row)
    session.commit()
    return row


def get_spec_or_none(model: str):
    try:
        return get_spec(model)
    except KeyError:
        return None
