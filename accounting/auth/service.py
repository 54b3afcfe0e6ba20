"""Creating, checking, listing and revoking API keys. Services don't commit."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlmodel import Session, select

from accounting.clock import Clock, to_datetime
from accounting.errors import InvalidInput, NotFound

from .models import ApiKey, Role

PREFIX = "wl"
KEY_ID_BYTES = 9  # 12 URL-safe characters: unique enough to find a row, not a secret
SECRET_BYTES = 32  # 256 random bits
# wl_<key_id>_<secret>: the key id is alphanumeric, so the first two underscores split the key
# (the secret may hold "_" and "-").
_KEY = re.compile(r"^wl_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, role and (for the team role) team."""

    key_id: str
    role: Role
    team: str | None = None

    def sees_team(self, team: str | None) -> bool:
        """May this caller see data of `team`? Team keys see their own team only."""
        return self.role != Role.team or (team is not None and team == self.team)

    @property
    def is_team(self) -> bool:
        return self.role == Role.team


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _new_key_id() -> str:
    while True:  # alphanumeric only, so the key splits at its underscores without doubt
        candidate = secrets.token_urlsafe(KEY_ID_BYTES)
        if candidate.isalnum():
            return candidate


def _check(role: Role | str, team: str | None) -> Role:
    try:
        role = Role(role)
    except ValueError:
        raise InvalidInput("role", f"one of {', '.join(r.value for r in Role)}, not {role!r}") from None
    if role == Role.team and not (team and team.strip()):
        raise InvalidInput("team", "a team key needs its team")
    if role != Role.team and team is not None:
        raise InvalidInput("team", f"only team keys have a team; {role.value} keys see every team")
    if team is not None and len(team) > 200:
        raise InvalidInput("team", "at most 200 characters")
    return role


def create_key(session: Session, *, role: Role | str, team: str | None = None, name: str | None = None,
               clock: Clock) -> tuple[ApiKey, str]:
    """A new key: the stored row and the key itself, which is never stored nor shown again."""
    role = _check(role, team)
    if name is not None and len(name) > 200:
        raise InvalidInput("name", "at most 200 characters")
    key_id = _new_key_id()
    plaintext = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    row = ApiKey(key_id=key_id, secret_sha256=_sha256(plaintext), role=role.value, team=team, name=name,
                 created_at=to_datetime(clock.now_us()))
    session.add(row)
    session.flush()
    return row, plaintext


def authenticate(session: Session, presented: str) -> Principal | None:
    """The caller a presented key stands for; None when it is malformed, unknown or revoked."""
    match = _KEY.match(presented.strip()) if presented else None
    if match is None:
        return None
    row = session.exec(select(ApiKey).where(ApiKey.key_id == match.group(1))).first()
    # compare_digest even when the row is missing would change nothing: the key id is public.
    if row is None or not hmac.compare_digest(row.secret_sha256, _sha256(presented.strip())):
        return None
    if row.revoked_at is not None:
        return None
    return Principal(key_id=row.key_id, role=Role(row.role), team=row.team)


def revoke(session: Session, key_id: str, *, clock: Clock) -> ApiKey:
    """Revoke a key from now on (revoking again keeps the first time); NotFound if there is none."""
    row = session.exec(select(ApiKey).where(ApiKey.key_id == key_id)).first()
    if row is None:
        raise NotFound("API key", key_id)
    if row.revoked_at is None:
        row.revoked_at = to_datetime(clock.now_us())
        session.add(row)
        session.flush()
    return row


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.exec(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)).all())


def has_active_admin(session: Session) -> bool:
    return session.exec(select(ApiKey.id).where(ApiKey.role == Role.admin.value,
                                                 ApiKey.revoked_at.is_(None))).first() is not None
