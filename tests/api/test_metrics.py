"""GET /metrics over real HTTP: values and units, bounded labels, and `promtool check metrics`."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
import redis
from celery import Celery
from celery.signals import task_failure
from prometheus_client.parser import text_string_to_metric_families

from accounting.clock import US_PER_S
from accounting.metering.spool import Spool
from accounting.metrics import TASK_FAILURES_KEY
from api.routes.metrics import task_failure_store
from tests.conftest import REDIS_URL, T0_US
from tests.factories import batch
from workers.metrics import install_task_failure_counter, start_sampler_metrics
from workers.processes import free_port

from .conftest import API_NOW_US, batch_mj, finish, register

H100 = "NVIDIA H100 80GB HBM3"


def scrape(client: httpx.Client, path: str = "/metrics") -> str:
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) → value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def series_count(text: str) -> int:
    return len(samples(text))


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: install Debian's `prometheus` package "
                    "(apt-get install -y prometheus), or run scripts/services.sh")
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_an_empty_ledger_exposes_zeroes_and_passes_promtool(api):
    text = scrape(api)
    assert value(text, "wattledger_jobs_running") == 0
    for kind in ("job", "idle", "unattributed"):
        assert value(text, "wattledger_account_energy_joules", account_kind=kind) == 0
    promtool_check(text)


def test_power_energy_and_ingest_figures_in_their_units(api, ingest):
    ingest(batch("node-1", 0, "GPU-a", T0_US, 10, name=H100))
    ingest(batch("node-1", 1, "GPU-a", T0_US + 10 * US_PER_S, 10, name=H100))
    ingest(batch("node-2", 0, "GPU-b", T0_US, 5, name=H100, mj_per_s=200_000))
    text = scrape(api)

    # The newest sample of GPU-a holds 300 009 mJ over 1 s (no power reading: its mean power).
    power = {dict(k[1])["gpu_uuid"]: (dict(k[1]), v) for k, v in samples(text).items()
             if k[0] == "wattledger_gpu_power_watts"}
    labels_a, watts_a = power["GPU-a"]
    assert watts_a == pytest.approx(300.009)
    assert labels_a["node"] == "node-1" and labels_a["site"] == "" and labels_a["gpu_model"]
    assert power["GPU-b"][1] == pytest.approx(200.004)

    energy_a = (batch_mj(0, 9) + batch_mj(0, 9)) / 1000
    assert value(text, "wattledger_gpu_energy_joules_total", gpu_uuid="GPU-a", gpu_model=labels_a["gpu_model"],
                 node="node-1") == pytest.approx(energy_a)
    energy_b = batch_mj(0, 4, base=200_000) / 1000
    assert value(text, "wattledger_account_energy_joules", account_kind="idle") == pytest.approx(
        energy_a + energy_b)

    assert value(text, "wattledger_ingested_batches_total", node="node-1") == 2
    assert value(text, "wattledger_ingested_batches_total", node="node-2") == 1
    assert value(text, "wattledger_ingest_lag_seconds", node="node-1") == pytest.approx(
        (API_NOW_US - (T0_US + 20 * US_PER_S)) / 1e6)
    assert value(text, "wattledger_ingest_lag_seconds", node="node-2") == pytest.approx(
        (API_NOW_US - (T0_US + 5 * US_PER_S)) / 1e6)
    promtool_check(text)


def test_jobs_running_and_job_energy_without_a_series_per_job(api, ingest):
    running = register(api, "run-1", ["GPU-a"], T0_US)
    ingest(batch("node-1", 0, "GPU-a", T0_US, 10))
    text = scrape(api)
    assert value(text, "wattledger_jobs_running") == 1
    assert value(text, "wattledger_account_energy_joules", account_kind="job") == pytest.approx(
        batch_mj(0, 9) / 1000)
    assert value(text, "wattledger_account_energy_joules", account_kind="idle") == 0
    before = series_count(text)

    for k in range(50):
        created = register(api, f"done-{k}", ["GPU-b"], T0_US + k * US_PER_S, team=f"team-{k}")
        assert finish(api, created["id"], T0_US + k * US_PER_S + US_PER_S // 2).status_code == 200
    text = scrape(api)
    assert value(text, "wattledger_jobs_running") == 1
    assert series_count(text) == before, "finished jobs (and their teams) must add no series"
    assert "done-" not in text and "team-" not in text

    assert finish(api, running["id"], T0_US + 20 * US_PER_S).status_code == 200
    assert value(scrape(api), "wattledger_jobs_running") == 0
    promtool_check(text)


@pytest.fixture
def failure_redis(api_server):
    """Point /metrics at the test Redis for task failures, with the counter hash empty."""
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(TASK_FAILURES_KEY)
    app = api_server.server.config.app
    app.dependency_overrides[task_failure_store] = lambda: REDIS_URL
    yield client
    app.dependency_overrides.pop(task_failure_store, None)
    client.delete(TASK_FAILURES_KEY)
    client.close()


def test_celery_task_failures_are_counted_per_task(api, failure_redis):
    assert "wattledger_task_failures" in scrape(api)  # the family is there (empty) once Redis is the store
    celery_app = Celery("metrics-test", broker=REDIS_URL, set_as_current=False)

    @celery_app.task(name="ledger.ingest_batch", shared=False)
    def boom():  # pragma: no cover — never run; only its failure signal is sent
        raise RuntimeError

    assert install_task_failure_counter(celery_app)
    try:
        for _ in range(2):
            task_failure.send(sender=boom, task_id="t", exception=RuntimeError("x"), args=[], kwargs={},
                              traceback=None, einfo=None)
        other = Celery("other", broker=REDIS_URL, set_as_current=False)

        @other.task(name="x.other", shared=False)
        def elsewhere():  # pragma: no cover — another app's task: not ours to count
            raise RuntimeError

        task_failure.send(sender=elsewhere, task_id="u", exception=None)
    finally:
        task_failure.disconnect(dispatch_uid=f"wattledger-task-failures-{id(celery_app)}")
    text = scrape(api)
    assert value(text, "wattledger_task_failures_total", task="ledger.ingest_batch") == 2
    assert ("wattledger_task_failures_total", (("task", "x.other"),)) not in samples(text)
    promtool_check(text)


def test_no_redis_broker_means_no_failure_counter():
    assert not install_task_failure_counter(Celery("embedded", broker="sqla+sqlite:///x.db", set_as_current=False))


def test_the_sampler_serves_its_spool_depth(tmp_path):
    spool = Spool(tmp_path / "spool")
    for seq in range(3):
        spool.put({"seq": seq, "node": "node-1"})
    port = free_port()
    server = start_sampler_metrics(spool, "node-1", port, addr="127.0.0.1")
    try:
        text = scrape(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10))
        assert value(text, "wattledger_sampler_spool_depth", node="node-1") == 3
        spool.remove(0)
        text = scrape(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10))
        assert value(text, "wattledger_sampler_spool_depth", node="node-1") == 2
        promtool_check(text)
    finally:
        server.shutdown()
        server.server_close()
