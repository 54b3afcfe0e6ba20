"""Celery app, queues, thin tasks, beat schedule, the node sampler process and the CLI."""
