"""Chargeback statements: the month's statement (final if stored, else open), finalizing, reading one."""

from __future__ import annotations

import copy
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import IntegrityError

from accounting.auth.models import Role
from accounting.auth.scope import team_view
from accounting.auth.service import Principal
from accounting.chargeback.statements import (
    build_statement,
    check_choices,
    final_statement,
    finalize,
    get_statement,
    parse_period,
    to_csv,
)

from ..auth import Reader, forbid_team, require
from ..deps import ClockDep, SessionDep, StatementId
from ..errors import documented

router = APIRouter(tags=["chargeback"])

PERIOD = Query(description="A UTC month, YYYY-MM.")
GROUP_BY = Query("team", description="team, project or cost_center.")
IDLE_POLICY = Query("separate", description="separate, proportional or none.")


class Format(StrEnum):
    json = "json"
    csv = "csv"
    pdf = "pdf"


class Unit(StrEnum):
    kWh = "kWh"
    MWh = "MWh"


def _in_mwh(node):
    """Every `*_kwh` figure as `*_mwh` (÷ 1000), everywhere in the statement."""
    if isinstance(node, list):
        return [_in_mwh(x) for x in node]
    if not isinstance(node, dict):
        return node
    return {(k[:-4] + "_mwh" if k.endswith("_kwh") else k):
            (v / 1000 if k.endswith("_kwh") and isinstance(v, int | float) else _in_mwh(v)) for k, v in node.items()}


def _answer(content: dict, *, statement_id: int | None, content_hash: str | None, unit: Unit) -> dict:
    body = _in_mwh(copy.deepcopy(content)) if unit == Unit.MWh else content
    return {"id": statement_id, "content_hash": content_hash, "unit": unit.value, "statement": body}


@router.get("/chargeback", responses=documented(501))
def get_chargeback(
    session: SessionDep,
    clock: ClockDep,
    principal: Reader,
    period: str = PERIOD,
    group_by: str = GROUP_BY,
    idle_policy: str = IDLE_POLICY,
    format: Format = Format.json,  # noqa: A002 (the query parameter's public name)
    unit: Unit = Unit.kWh,
):
    """Per group: IT and facility energy, GPU-hours, cost (per currency), location- and market-based
    CO2e, embodied CO2e, useful work, waste; the reconciliation to metered energy; adjustments for
    late data of finalized months. The final statement when one is stored, else the open one.
    A team key reads its own team's lines only (group_by=team), with a `scope` that says so."""
    parse_period(period)
    check_choices(group_by, idle_policy)
    if group_by != "team":
        forbid_team(principal, "projects and cost centers span teams; use group_by=team")
    stored = final_statement(session, period=period, group_by=group_by, idle_policy=idle_policy)
    if stored is not None:
        stored = get_statement(session, stored.id)  # verifies the hash
        content, statement_id, digest = stored.content, stored.id, stored.content_hash
    else:
        content = build_statement(session, period=period, group_by=group_by, idle_policy=idle_policy, clock=clock)
        statement_id = digest = None
    if principal.is_team:
        content = team_view(content, principal.team)
    name = f"chargeback-{period}-{group_by}-{idle_policy}"
    if format == Format.csv:
        return Response(to_csv(content), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
    if format == Format.pdf:
        try:
            from accounting.chargeback.pdf import render_pdf
        except ImportError:
            return JSONResponse(status_code=501, content={"detail": "PDF statements are not available here: "
                                                                    "accounting.chargeback.pdf cannot be imported"})
        return Response(render_pdf(content), media_type="application/pdf",
                        headers={"Content-Disposition": f'attachment; filename="{name}.pdf"'})
    return _answer(content, statement_id=statement_id, content_hash=digest, unit=unit)


@router.post("/statements/{period}/finalize", status_code=201)
def post_finalize(session: SessionDep, clock: ClockDep,
                  _: Annotated[Principal, Depends(require(Role.admin, Role.finance))],
                  period: str, group_by: str = GROUP_BY, idle_policy: str = IDLE_POLICY) -> dict:
    """Store the month's statement as final: immutable, with the sha256 of its canonical JSON.
    Finalizing again returns the stored statement."""
    parse_period(period)
    statement = finalize(session, period=period, group_by=group_by, idle_policy=idle_policy, clock=clock)
    try:
        session.commit()
    except IntegrityError:  # a concurrent finalize stored it first: answer with that one
        session.rollback()
        statement = final_statement(session, period=period, group_by=group_by, idle_policy=idle_policy)
    return {"id": statement.id, "content_hash": statement.content_hash, "period": statement.period,
            "group_by": statement.group_by, "idle_policy": statement.idle_policy,
            "finalized_at": statement.finalized_at.isoformat()}


@router.get("/statements/{statement_id}", responses=documented(404))
def get_stored_statement(session: SessionDep, principal: Reader, statement_id: StatementId,
                         unit: Unit = Unit.kWh) -> dict:
    """A stored statement as it was finalized (never recomputed), its hash verified. It holds every
    team's lines and its hash covers them all, so team keys read their part with GET /v1/chargeback."""
    forbid_team(principal, "a stored statement holds every team's lines; read your team's part with "
                "GET /v1/chargeback?period=YYYY-MM&group_by=team")
    statement = get_statement(session, statement_id)
    return _answer(statement.content, statement_id=statement.id, content_hash=statement.content_hash, unit=unit)
