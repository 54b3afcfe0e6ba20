"""Settings: one pydantic-settings object, environment prefix WATTLEDGER_.

Embedded defaults need nothing installed: a SQLite database file, Celery's SQLAlchemy
transport on a second SQLite file, and the simulated fleet when NVML is absent. Production
sets WATTLEDGER_DATABASE_URL (PostgreSQL), WATTLEDGER_BROKER_URL (Redis) and
WATTLEDGER_GPU_BACKEND=nvml.
"""

from __future__ import annotations

import socket
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, PositiveFloat, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict


class BackendChoice(StrEnum):
    auto = "auto"  # NVML when it initializes, else the simulated fleet
    nvml = "nvml"
    simulated = "simulated"


DEFAULT_HOME = Path(".wattledger")
GPUS_PER_NODE = 8  # what ingest groups are sized for (an HGX/DGX node); the fleet may differ
INGEST_GROUP_READINGS = 10_000  # readings a worker aims to take into one transaction


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WATTLEDGER_", extra="ignore")

    home: Path = Field(DEFAULT_HOME, description="Directory for the embedded database, broker and spool.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<home>/wattledger.db")
    broker_url: str | None = Field(
        None, description="Celery broker URL; default sqla+sqlite:///<home>/broker.db"
    )
    broker_visibility_timeout_s: PositiveInt = Field(
        120, description="Redis: seconds before an unacknowledged ingest batch is redelivered."
    )
    gpu_backend: BackendChoice = BackendChoice.auto
    node_name: str = Field(default_factory=socket.gethostname, max_length=200)
    sample_interval_s: PositiveFloat = Field(1.0, description="Seconds between GPU readings.")
    flush_interval_s: PositiveFloat = Field(10.0, description="Seconds between shipped batches.")
    spool_dir: Path | None = Field(None, description="Sampler spool; default <home>/spool")
    ingest_group_readings: PositiveInt = Field(
        INGEST_GROUP_READINGS, le=1_000_000, description="Ingest: readings a worker aims to take into one "
        "transaction."
    )
    ingest_group_batches: PositiveInt | None = Field(
        None, le=10_000, description="Ingest: most sampler batches a worker takes into one transaction (and "
        "holds unacknowledged, per worker process); default: ingest_group_readings over the readings in an "
        "8-GPU node's batch (8 × flush_interval_s ÷ sample_interval_s), 125 at the defaults."
    )
    ingest_group_wait_s: PositiveFloat = Field(
        0.5, le=60, description="Ingest: seconds a worker waits for more batches before it ingests what it has."
    )
    sample_retention_days: PositiveInt = Field(14, description="Raw samples older than this expire.")
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_public_health: bool = Field(True, description="Serve /healthz and /readyz without an API key.")
    api_public_metrics: bool = Field(True, description="Serve /metrics without an API key (it carries no "
                                     "team or job labels); when false, any valid key may scrape it.")
    api_max_body_bytes: PositiveInt = Field(1_048_576, description="Largest request body the API reads (413 above).")
    api_team_max_backdate_s: PositiveInt = Field(
        3_600, description="A team key registers a job at most this many seconds after it started "
        "(agent and admin keys, e.g. the Slurm prolog or a backfill, are not limited)."
    )
    api_max_future_s: PositiveInt = Field(
        86_400, description="A time more than this many seconds after now is refused (422 naming the field)."
    )
    simulated_gpus: PositiveInt = Field(8, description="GPUs in the simulated fleet of `up`.")
    sampler_metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Port of the sampler's own /metrics (spool depth); off when unset."
    )
    resend_after_s: PositiveFloat | None = Field(
        None, description="Redis: seconds a shipped batch waits for the ledger's confirmation before the "
        "sampler sends it again; default 2 × the visibility timeout + 60 s."
    )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'wattledger.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.home / 'broker.db').resolve()}"

    @property
    def resolved_spool_dir(self) -> Path:
        return self.spool_dir or self.home / "spool"

    @property
    def resolved_ingest_group_batches(self) -> int:
        # By message count: a worker's prefetch is counted in messages, and a group larger than
        # a worker may hold unacknowledged would only ever be flushed by its timer.
        if self.ingest_group_batches:
            return self.ingest_group_batches
        node_batch_readings = GPUS_PER_NODE * self.flush_interval_s / self.sample_interval_s
        return max(1, min(10_000, round(self.ingest_group_readings / node_batch_readings)))

    @property
    def resolved_resend_after_s(self) -> float:
        # Past the visibility timeout twice over: a batch the broker still holds is redelivered
        # (and confirmed) before the sampler would send it again.
        return self.resend_after_s or 2.0 * self.broker_visibility_timeout_s + 60.0


@lru_cache
def get_settings() -> Settings:
    return Settings()
