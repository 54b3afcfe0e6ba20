"""Sites: PUE, time zone, grid zone, prices; and which GPUs are where."""

from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from accounting.chargeback import sites
from accounting.chargeback.models import Site

from ..deps import ClockDep, SessionDep

router = APIRouter(tags=["sites"])


@router.post("/sites", response_model=Site, status_code=status.HTTP_201_CREATED)
def create_site(data: sites.SiteCreate, session: SessionDep):
    site = sites.create_site(session, data)
    session.commit()
    return site


@router.get("/sites", response_model=list[Site])
def list_sites(session: SessionDep):
    return sites.list_sites(session)


class Placement(BaseModel):
    gpu_uuids: list[str] = Field(min_length=1, max_length=10_000)


@router.post("/sites/{name}/gpus")
def place_gpus(name: str, data: Placement, session: SessionDep, clock: ClockDep) -> dict:
    placed = sites.place_gpus(session, name, data.gpu_uuids, clock=clock)
    session.commit()
    return {"site": name, "gpus": placed}
