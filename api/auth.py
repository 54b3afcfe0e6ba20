"""Who is calling: `Authorization: Bearer <key>` → a Principal, and which roles a route allows.

Missing, malformed, unknown or revoked keys are a 401 with `WWW-Authenticate: Bearer`; a valid
key whose role the route does not allow is a 403 naming the roles that are. Team isolation
inside a route (another team's job is a 404, exactly as a job that does not exist) is the
route's business, with `visible_job` and `Principal.sees_team`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlmodel import Session

from accounting.auth.models import Role
from accounting.auth.service import Principal, authenticate
from accounting.errors import NotFound
from accounting.jobs.models import Job
from accounting.jobs.service import get_job

from .deps import SessionDep


class Refusal(BaseModel):
    detail: str


# Documented on every /v1 route (and on the probes, which a setting can make private).
RESPONSES = {
    401: {"model": Refusal, "description": "No API key, or a malformed, unknown or revoked one "
          "(with `WWW-Authenticate: Bearer`)."},
    403: {"model": Refusal, "description": "The key's role may not do this; the detail names the roles that may."},
}
bearer = HTTPBearer(auto_error=False, description="An API key: `wattledger keys create --role …` prints one.")
BEARER = {"WWW-Authenticate": "Bearer"}


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers=BEARER)


def get_principal(session: SessionDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    if credentials is None:
        raise _unauthorized("an API key is required: send `Authorization: Bearer <key>` "
                            "(`wattledger keys create --role …` makes one)")
    principal = authenticate(session, credentials.credentials)
    if principal is None:
        raise _unauthorized("the API key is not valid (malformed, unknown or revoked)")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(*roles: Role):
    """A dependency that lets only `roles` through (403 naming them) and gives the Principal."""
    allowed = ", ".join(r.value for r in roles)

    def _check(principal: PrincipalDep) -> Principal:
        if principal.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                detail=f"{principal.role.value} keys may not do this; allowed roles: {allowed}")
        return principal

    return _check


READERS = (Role.admin, Role.finance, Role.team)
Reader = Annotated[Principal, Depends(require(*READERS))]
FleetReader = Annotated[Principal, Depends(require(Role.admin, Role.finance))]
Admin = Annotated[Principal, Depends(require(Role.admin))]


def forbid_team(principal: Principal, detail: str) -> None:
    """403 for team keys where the answer would mix teams."""
    if principal.is_team:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"team keys: {detail}")


def visible_job(session: Session, principal: Principal, job_id: int, *, for_update: bool = False) -> Job:
    """The job, or a 404 — the same answer for another team's job as for one that does not exist,
    so a team key learns nothing about other teams' jobs."""
    job = get_job(session, job_id, for_update=for_update)
    if not principal.sees_team(job.team):
        raise NotFound("job", job_id)
    return job


def maybe_principal(request: Request, session: Session, public: bool) -> Principal | None:
    """For routes that a setting makes public: None when public, else the caller (401 without a key)."""
    if public:
        return None
    credentials = request.headers.get("authorization", "")
    scheme, _, token = credentials.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("an API key is required here (this server's /healthz, /readyz or /metrics "
                            "is not public): send `Authorization: Bearer <key>`")
    principal = authenticate(session, token)
    if principal is None:
        raise _unauthorized("the API key is not valid (malformed, unknown or revoked)")
    return principal
