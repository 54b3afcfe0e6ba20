"""The FastAPI service: REST under /v1, OpenAPI at /docs, health probes."""
