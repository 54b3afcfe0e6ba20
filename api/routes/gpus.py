"""GPUs known to the ledger."""

from __future__ import annotations

from fastapi import APIRouter

from accounting.jobs.models import GpuPublic
from accounting.jobs.service import list_gpus

from ..auth import Reader
from ..deps import SessionDep

router = APIRouter(tags=["gpus"])


@router.get("/gpus", response_model=list[GpuPublic])
def get_gpus(session: SessionDep, _: Reader):
    return list_gpus(session)
