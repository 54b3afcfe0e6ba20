"""WattLedger's domain: GPU metering, attribution, the energy ledger.

Pure Python: nothing here imports FastAPI, Celery, `api` or `workers`.
"""

__version__ = "0.1.0"
