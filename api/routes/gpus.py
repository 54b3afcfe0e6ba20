"""GPUs known to the ledger."""

from __future__ import annotations

from fastapi import APIRouter

from accounting.jobs.models import GpuPublic
from accounting.jobs.service import list_gpus

from ..deps import SessionDep

router = APIRouter(tags=["gpus"])


@router.get("/gpus", response_model=list[GpuPublic])
def get_gpus(session: SessionDep):
    return list_gpus(session)
