"""The api_key table: a key's public id, the SHA-256 of the whole key (never the key), its role
and team, and when it was revoked."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel

from accounting.db import UTCDateTime


class Role(StrEnum):
    admin = "admin"  # everything
    finance = "finance"  # reads everything, finalizes statements
    team = "team"  # reads and writes its own team's jobs, work and statements
    agent = "agent"  # Slurm prolog/epilog on the nodes: registers and finishes jobs


class ApiKey(SQLModel, table=True):
    """An API key, shown once when created. The key is `wl_<key_id>_<secret>`; `key_id` finds the
    row, the hash proves the secret. The secret is 256 random bits, so a fast hash is right: there
    is nothing to brute-force that a slow one (bcrypt, argon2) would protect, and every request
    pays for the hash."""

    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    key_id: str = Field(max_length=32, unique=True, index=True)
    secret_sha256: str = Field(max_length=64)  # hex SHA-256 of the whole key
    role: str = Field(max_length=16)  # a Role
    team: str | None = Field(default=None, max_length=200)  # set iff role is team
    name: str | None = Field(default=None, max_length=200)  # a label: who or what holds it
    created_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
