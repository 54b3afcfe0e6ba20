"""The node sampler process: read this node's GPUs, spool batches, ship them to ingest."""

from __future__ import annotations

import logging
import signal
import threading

from accounting.clock import SystemClock
from accounting.config import Settings
from accounting.demo.live import live_fleet
from accounting.gpu.backend import ProcessResolver
from accounting.gpu.factory import open_backend
from accounting.metering.discovery import ProcResolver
from accounting.metering.loop import run_sampler
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool, fresh_first_seq

from .celery_app import make_celery
from .metrics import start_sampler_metrics
from .processes import batch_confirmer, batch_sender

log = logging.getLogger(__name__)


def build_sampler(settings: Settings) -> Sampler:
    clock = SystemClock()
    backend = open_backend(
        settings.gpu_backend,
        clock=clock,
        simulated_factory=lambda: live_fleet(clock, gpus=settings.simulated_gpus, node=settings.node_name),
    )
    log.info("sampling %d GPUs on %s through %s", len(backend.gpus()), settings.node_name, backend.kind)
    # The simulated fleet knows its own processes; on a real node, /proc says whose they are.
    resolver = backend if isinstance(backend, ProcessResolver) else ProcResolver()
    return Sampler(backend=backend, spool=Spool(settings.resolved_spool_dir), clock=clock, node=settings.node_name,
                   resolver=resolver, first_seq=fresh_first_seq(clock))


def run(settings: Settings, stop: threading.Event | None = None) -> None:
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    sampler = build_sampler(settings)
    if settings.sampler_metrics_port:
        start_sampler_metrics(sampler.spool, settings.node_name, settings.sampler_metrics_port)
    confirm = batch_confirmer(make_celery(settings))
    if confirm is not None:
        log.info("shipped batches wait in the spool for the ledger's confirmation; re-sent after %.0f s",
                 settings.resolved_resend_after_s)
    try:
        run_sampler(
            sampler,
            send=batch_sender(make_celery(settings, results=False)),
            confirm=confirm,
            resend_after_s=settings.resolved_resend_after_s,
            sample_interval_s=settings.sample_interval_s,
            flush_interval_s=settings.flush_interval_s,
            stop=stop,
            sleep=stop.wait,
        )
    finally:
        sampler.backend.close()
