"""Every table, imported in one place for Alembic and for `create_all` in tests."""

from sqlmodel import SQLModel

from accounting.auth.models import ApiKey
from accounting.chargeback.models import CarbonIntensity, EmbodiedCarbon, PricePoint, Site, Statement, Tariff
from accounting.jobs.models import Allocation, Gpu, Job
from accounting.ledger.models import ChangeLog, GpuEvent, IngestedBatch, LedgerEntry, Sample, UnattributedUse
from accounting.work.models import WorkReport

metadata = SQLModel.metadata

__all__ = [
    "Allocation", "Gpu", "GpuEvent", "IngestedBatch", "Job", "LedgerEntry", "Sample", "UnattributedUse", "WorkReport",
    "metadata", "ApiKey", "ChangeLog", "CarbonIntensity", "EmbodiedCarbon", "PricePoint", "Site", "Statement", "Tariff",
]
