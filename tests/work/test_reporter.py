"""The WorkReporter against the real app over HTTP (PostgreSQL): sums arrive exactly once, the
loop is never slowed or broken by a service that is down, slow or refusing."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time

import httpx
import pytest

from accounting.config import Settings
from accounting.work.reporter import WorkReporter
from api.main import create_app
from tests.api import conftest as api_conftest
from tests.api.conftest import new_key, register
from tests.conftest import PG_URL, T0_US
from workers.processes import ApiServer, free_port

# The API tests' fixtures (one server per session on PostgreSQL, its fake clock, a client).
api, api_clock, api_server = api_conftest.api, api_conftest.api_clock, api_conftest.api_server


@pytest.fixture
def server_time(api_clock):
    """The reporter's clock: the API server's (fake) time, so `at` is never in its future."""
    return lambda: api_clock.now_us() / 1e6


@pytest.fixture
def key(api, pg_engine) -> str:
    """A team key of the jobs' team (`register` makes jobs of team nlp), as a job would hold."""
    return new_key(pg_engine, "team", "nlp")


@pytest.fixture
def reporters():
    made: list[WorkReporter] = []
    yield made
    for reporter in made:
        reporter.close(wait_s=0)


@pytest.fixture
def serve(pg_engine, api_clock, tmp_path):
    """Start another server of the app (optionally wrapped) on a given port; stopped after the test."""
    servers: list[ApiServer] = []

    def _serve(port: int, wrap=lambda app: app) -> ApiServer:
        app = create_app(Settings(home=tmp_path, database_url=PG_URL), engine=pg_engine, clock=api_clock)
        server = ApiServer(wrap(app), port=port).__enter__()
        servers.append(server)
        return server

    yield _serve
    for server in servers:
        server.__exit__(None, None, None)


def work_of(api: httpx.Client, job_id: int) -> dict:
    response = api.get(f"/v1/jobs/{job_id}/work")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(condition, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_importing_the_reporter_pulls_in_none_of_the_stack():
    code = ("import sys, accounting.work.reporter; "
            "print(sorted(m for m in ('sqlmodel', 'sqlalchemy', 'fastapi', 'pydantic', 'httpx') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_loop_of_1000_increments_is_stored_as_exactly_their_sum(api, api_server, server_time, key):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    rng = random.Random(7)
    sums = dict.fromkeys(("flops", "tokens", "samples", "steps"), 0)
    with WorkReporter(api_server.url, job_id, api_key=key, flush_interval_s=0.02, clock=server_time) as reporter:
        for n in range(1000):
            increment = {"flops": rng.randrange(10**22), "tokens": rng.randrange(10**6), "samples": 8, "steps": 1}
            reporter.report(**increment)
            sums = {k: sums[k] + increment[k] for k in sums}
            if n % 100 == 0:
                time.sleep(0.03)  # let several flushes happen mid-loop
    assert reporter.close() is True

    work = work_of(api, job_id)
    assert {k: work["totals"][k] for k in sums} == sums
    assert sums["flops"] > 2**63
    assert work["totals"]["reports"] == reporter.stats["reports_sent"] > 1
    assert all(r["key"].startswith(reporter.reporter_id) for r in work["reports"])
    assert reporter.stats["failed_posts"] == reporter.stats["duplicates"] == 0


def test_with_the_api_down_the_loop_never_blocks_and_the_work_arrives_once_it_is_up(api, serve, server_time,
                                                                                   reporters, key):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    port = free_port()  # nobody listens here yet
    reporter = WorkReporter(f"http://127.0.0.1:{port}", job_id, api_key=key, flush_interval_s=0.05,
                            max_backoff_s=0.2, max_queue=500, timeout_s=0.5, clock=server_time)
    reporters.append(reporter)

    # report() only queues: with nobody listening, 10,000 calls return (a blocking call would
    # hang here until the test's timeout). Their speed is a benchmark figure, not asserted here.
    for n in range(10_000):
        reporter.report(tokens=n, samples=1, flops=10**18)
    assert reporter.stats["reports_sent"] == 0
    assert len(reporter._queue) <= 500  # bounded: the rest is folded, not kept one by one

    wait_for(lambda: reporter.stats["failed_posts"] >= 2)
    assert work_of(api, job_id)["totals"]["reports"] == 0

    serve(port)
    expected = {"tokens": sum(range(10_000)), "samples": 10_000, "flops": 10_000 * 10**18}
    wait_for(lambda: all(work_of(api, job_id)["totals"][k] == v for k, v in expected.items()))
    assert reporter.close(wait_s=5) is True
    totals = work_of(api, job_id)["totals"]
    assert {k: totals[k] for k in expected} == expected  # once, not once per retry
    assert totals["reports"] == reporter.stats["reports_sent"]


def test_a_full_queue_folds_its_oldest_increments_and_loses_no_work(api, api_server, server_time, reporters,
                                                                    key):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    reporter = WorkReporter(api_server.url, job_id, api_key=key, flush_interval_s=0.05, max_queue=100,
                            clock=server_time)
    reporters.append(reporter)
    reporter._drain = lambda: None  # a thread that cannot keep up: the queue fills
    for n in range(10_000):
        reporter.report(tokens=n, steps=1)
    assert len(reporter._queue) == 100
    assert reporter._overflow.increments == 9_900
    del reporter._drain  # it catches up

    assert reporter.close(wait_s=5) is True
    totals = work_of(api, job_id)["totals"]
    assert (totals["tokens"], totals["steps"]) == (sum(range(10_000)), 10_000)


class SlowFirstAnswer:
    """ASGI wrapper: the first POST is processed (and committed) but answered only after
    `delay_s`, so the client times out and retries what the server already has."""

    def __init__(self, app, delay_s: float) -> None:
        self.app, self.delay_s = app, delay_s
        self.posts: list[dict] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        seen = {"body": b"", "auth": dict(scope["headers"]).get(b"authorization")}
        self.posts.append(seen)
        first = len(self.posts) == 1

        async def receive_body():
            message = await receive()
            seen["body"] += message.get("body", b"")
            return message

        async def send_late(message):
            if first and message["type"] == "http.response.start":
                await asyncio.sleep(self.delay_s)
            await send(message)

        await self.app(scope, receive_body, send_late)


def test_a_post_that_times_out_is_retried_with_its_key_and_counted_once(api, serve, server_time, reporters,
                                                                         key):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    slow: list[SlowFirstAnswer] = []
    server = serve(free_port(), wrap=lambda app: slow.append(SlowFirstAnswer(app, delay_s=1.5)) or slow[0])
    reporter = WorkReporter(server.url, job_id, api_key=key, flush_interval_s=0.05, max_backoff_s=0.1,
                            timeout_s=0.3, clock=server_time)
    reporters.append(reporter)
    for _ in range(3):
        reporter.report(flops=10**24, tokens=100)

    wait_for(lambda: reporter.stats["duplicates"] >= 1)
    assert reporter.close(wait_s=5) is True
    keys = [json.loads(post["body"])["key"] for post in slow[0].posts]
    assert keys[0] == keys[1]  # the retry carries the timed-out POST's key
    assert reporter.stats["failed_posts"] >= 1
    assert {post["auth"] for post in slow[0].posts} == {f"Bearer {key}".encode()}
    totals = work_of(api, job_id)["totals"]
    assert (totals["flops"], totals["tokens"]) == (3 * 10**24, 300)
    assert totals["reports"] == len(set(keys))


def test_an_aggregate_the_service_refuses_is_dropped_not_retried_forever(api, api_server, reporters, key):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    reporter = WorkReporter(api_server.url, job_id, api_key=key, flush_interval_s=0.02,
                            clock=lambda: 4_000_000_000.0)  # 2096
    reporters.append(reporter)
    reporter.report(tokens=1)
    wait_for(lambda: reporter.stats["rejected_reports"] == 1)
    assert reporter.close(wait_s=2) is True
    assert work_of(api, job_id)["totals"]["reports"] == 0


@pytest.mark.parametrize("which", ["no key", "another team's key"])
def test_work_sent_without_the_right_key_is_refused_and_stored_nowhere(api, api_server, server_time, reporters,
                                                                       pg_engine, which):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    wrong = None if which == "no key" else new_key(pg_engine, "team", "vision")
    reporter = WorkReporter(api_server.url, job_id, api_key=wrong, flush_interval_s=0.02, clock=server_time)
    reporters.append(reporter)
    reporter.report(tokens=5)
    # 401 without a key is refused for good; another team's job answers 404, which the reporter
    # retries (a job may be registered a moment after it starts), so it is only ever a failed post.
    stat = "rejected_reports" if wrong is None else "failed_posts"
    wait_for(lambda: reporter.stats[stat] >= 1)
    assert work_of(api, job_id)["totals"]["reports"] == 0


def test_nonsense_increments_are_counted_and_left_out_without_raising(reporters):
    reporter = WorkReporter(f"http://127.0.0.1:{free_port()}", 1, flush_interval_s=60)
    reporters.append(reporter)
    for bad in ({"tokens": -1}, {"flops": float("nan")}, {"steps": True}, {"samples": "many"},
                {"flops": 10**31}, {"tokens": object()}):
        reporter.report(**bad)
    reporter.report()  # nothing at all: nothing to do
    reporter.report(flops=4.2e19, tokens=2.0)  # floats of whole numbers are fine
    assert reporter.stats["invalid_increments"] == 6
    assert len(reporter._queue) == 1
    assert reporter.close(wait_s=0.2) is False  # nobody to send it to
    reporter.report(tokens=1)
    assert reporter.stats["dropped_after_close"] == 1


def test_from_environment_reads_url_job_and_key(monkeypatch, reporters):
    monkeypatch.setenv("WATTLEDGER_API_URL", "http://wattledger:8000/")
    monkeypatch.setenv("WATTLEDGER_JOB_ID", "42")
    monkeypatch.setenv("WATTLEDGER_API_KEY", "k")
    reporter = WorkReporter.from_environment(flush_interval_s=60)
    reporters.append(reporter)
    assert (reporter.url, reporter.job_id, reporter._api_key) == ("http://wattledger:8000/v1/jobs/42/work", 42, "k")

    monkeypatch.setenv("WATTLEDGER_JOB_ID", "run-7")
    with pytest.raises(ValueError, match="WATTLEDGER_JOB_ID"):
        WorkReporter.from_environment()
    monkeypatch.delenv("WATTLEDGER_API_URL")
    with pytest.raises(ValueError, match="WATTLEDGER_API_URL"):
        WorkReporter.from_environment()
