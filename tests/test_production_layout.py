"""The production layout, end to end: gunicorn, a Celery worker of two processes and beat, as README's
Production section runs them, on the test database and a Redis server of their own.

Billing histories of several customers (payments before their invoices, amendments, credit notes,
refunds, voids, applications, write-offs; each customer's events in order, the customers interleaved)
are sent over HTTP, one request after the other as a source system would, and must come to exactly the
outcome of processing the same history one event at a time in this process. Half-way the worker is
SIGKILLed with its children and a new one started later: nothing is lost (beat's sweeps re-schedule
what the dead worker held) and nothing is booked twice. Ordering, recovery and sweeps only show here.
"""
import os
import random
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from django.db import connection
from rest_framework.test import APIClient

from billing_sync import tokens
from billing_sync.models import Event
from ledger.models import Journal, JournalLine
from tests.conftest import _stop, _test_database_url
from tests.fixtures import setup_us01
from tests.helpers import PrivateRedis, free_port, wait_until
from tests.histories import customer_events, eager, interleave, outcome, settled

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

BIN = Path(sys.executable).parent
BASE_DIR = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60
SETTLE_TIMEOUT = 120


class Stack:
    """gunicorn + `celery worker --pool=prefork -c 2` + `celery beat`, each in its own process group."""

    def __init__(self, tmp: Path, database_url: str, redis_url: str):
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ)
        self.env.update(
            DJANGO_SETTINGS_MODULE="config.settings.prod", SECRET_KEY="production-layout-test-" + "x" * 32,
            DATABASE_URL=database_url, REDIS_URL=redis_url, CELERY_BROKER_URL=redis_url,
            ALLOWED_HOSTS="127.0.0.1,localhost", PORT=str(self.port), HOST="127.0.0.1", WEB_CONCURRENCY="2",
            GUNICORN_THREADS="4", GUNICORN_ACCESSLOG="", LOG_LEVEL="WARNING", LOG_JSON="false",
            TIEOUT_OUTBOX_SWEEP_AFTER_SECONDS="2", TIEOUT_TOKEN_CACHE_SECONDS="5", PYTHONUNBUFFERED="1",
        )
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(argv, cwd=BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def start_worker(self, name="worker") -> None:
        self.start(name, [str(BIN / "celery"), "-A", "config", "worker", "-Q", "celery,posting,callbacks",
                          "--pool=prefork", "-c", "2", "-l", "warning", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h",
                          "--without-gossip", "--without-mingle"])

    def kill(self, name: str) -> None:
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait()

    def log_tail(self, lines=40) -> str:
        out = []
        for path in sorted(self.tmp.glob("*.log")):
            out.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def ready(self) -> bool:
        """/readyz answers 200; a process of the stack that exited fails the test at once."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}\n{self.log_tail()}")
        try:
            return requests.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self) -> None:
        wait_until(self.ready, timeout=START_TIMEOUT, interval=0.3,
                   message=lambda: f"the stack did not answer /readyz\n{self.log_tail()}")

    def stop(self) -> None:
        # All at once: the graceful shutdowns (gunicorn's, the worker's warm one) overlap.
        with ThreadPoolExecutor(max_workers=len(self.processes) or 1) as pool:
            list(pool.map(_stop, self.processes.values()))


@pytest.fixture
def stack_redis(tmp_path_factory):
    """A redis-server of the stack's own (per xdist process, no database number to share or flush)."""
    server = PrivateRedis(tmp_path_factory.mktemp("stack-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stack(transactional_db, tmp_path, stack_redis):
    handle = Stack(tmp_path, _test_database_url(connection.settings_dict), stack_redis.url)
    setup_us01()
    handle.token = tokens.token_issue(username="billing-system", role="integration", actor="test")
    handle.start("web", [str(BIN / "gunicorn"), "-c", "config/gunicorn.conf.py", "config.wsgi"])
    handle.start_worker()
    handle.start("beat", [str(BIN / "celery"), "-A", "config", "beat", "-l", "warning",
                          "-s", str(tmp_path / "beat-schedule")])
    try:
        handle.wait_ready()
        yield handle
    finally:
        handle.stop()


def _history(prefix: str, seed: int) -> list[dict]:
    """Six customers' histories drawn from a fixed seed, each in order, interleaved."""
    rng = random.Random(seed)
    ops = []
    for _ in range(6):
        customer = []
        for _ in range(rng.randint(4, 9)):
            kind = rng.choice(["invoice", "invoice", "payment", "payment", "credit", "refund", "apply", "void",
                               "write_off"])
            if kind == "invoice":
                customer.append((kind, rng.randrange(3), rng.randint(1_000, 40_000)))
            elif kind == "payment":
                customer.append((kind, rng.randrange(3), rng.randint(1_000, 40_000), rng.randint(0, 40_000)))
            elif kind == "credit":
                customer.append((kind, rng.randrange(3), rng.randint(100, 20_000)))
            elif kind == "refund":
                customer.append((kind, rng.randrange(4), rng.randint(100, 20_000), rng.random() < 0.5))
            elif kind == "apply":
                customer.append((kind, rng.randrange(4), rng.randrange(3), rng.randint(100, 20_000)))
            elif kind == "void":
                customer.append((kind, rng.randrange(3)))
            else:
                customer.append((kind, rng.randrange(3), rng.randint(100, 20_000)))
        ops.append((rng.random() < 0.7, customer))
    picks = [rng.randrange(6) for _ in range(80)]
    return interleave([customer_events(prefix, c, first, o) for c, (first, o) in enumerate(ops)], picks)


def _wait_settled(prefix: str, count: int, stack: Stack) -> None:
    streak = 0

    def at_rest() -> bool:
        nonlocal streak
        streak = streak + 1 if settled(prefix, count) else 0
        return streak >= 3  # still at rest after a few polls: nothing was in flight

    def diagnose() -> str:
        left = list(Event.objects.filter(event_id__startswith=prefix, status="accepted")
                    .values_list("event_id", "type"))
        unposted = list(Journal.objects.filter(event__event_id__startswith=prefix, status__in=["ready", "posting"])
                        .values_list("kind", "status"))
        return f"not settled: accepted {left}, unposted {unposted}\n{stack.log_tail()}"

    wait_until(at_rest, timeout=SETTLE_TIMEOUT, interval=0.3, message=diagnose)


@pytest.mark.parametrize("seed", [20261203, 7])
def test_histories_over_http_with_a_worker_killed_half_way_match_one_at_a_time(stack, settings, seed):
    reference_prefix, prefix = f"r{uuid.uuid4().hex[:6]}_", f"p{uuid.uuid4().hex[:6]}_"

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {stack.token}")
    with eager(settings):
        for payload in _history(reference_prefix, seed):
            assert api.post("/api/v1/events", payload, format="json").status_code == 202
    reference = outcome(reference_prefix)

    history = _history(prefix, seed)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {stack.token}"
    half = len(history) // 2
    for n, payload in enumerate(history):
        if n == half:
            stack.kill("worker")  # with whatever it held: reserved messages, a task half done
        response = session.post(f"{stack.url}/api/v1/events", json=payload, timeout=30)
        assert response.status_code == 202, response.text
    stack.start_worker("worker2")
    _wait_settled(prefix, len(history), stack)

    assert outcome(prefix) == reference
    # Nothing booked twice, and the books balance over everything posted.
    posted = JournalLine.objects.filter(journal__status="posted", journal__event__event_id__startswith=prefix)
    assert sum(line.debit for line in posted) == sum(line.credit for line in posted)
    assert Journal.objects.filter(event__event_id__startswith=prefix).count() == \
        Journal.objects.filter(event__event_id__startswith=reference_prefix).count()
