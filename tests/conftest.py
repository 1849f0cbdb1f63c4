"""Test infrastructure: pytest-django on a real PostgreSQL, and a real Celery worker on a real Redis.

What here is not obvious:

* Our migrations install triggers that refuse TRUNCATE (and UPDATE/DELETE) on the audit log and on
  journals. Django flushes the test database with TRUNCATE after every `transaction=True` /
  `transactional_db` test, so, in tests only, the flush runs with `session_replication_role = replica`
  (we connect as a superuser), which keeps ordinary triggers from firing for those statements alone.
  The flush leaves the reference data that migrations wrote (content types, permissions, the role
  groups and their permissions): every test sees them, as production always has them.
* `celery_worker_proc` starts one real `celery worker` (prefork, two processes) per test session (per
  xdist process), pointed at the pytest-django test database and at a dedicated Redis database, so that
  asynchronous behaviour is tested as it runs in production. Tests use it through `live_worker`, which
  also turns eager mode off (the test settings run tasks eagerly by default) and needs committed data
  (`transactional_db`).
* Under pytest-xdist (`make test` runs `-n auto`) every process has its own test database (pytest-django
  appends `_gw0`, `_gw1`, ...), its own Redis database (`TIEOUT_TEST_BROKER_DB`, default 15, counting
  down: 15 for gw0, 14 for gw1, ...) and its own worker. The test database is named per run
  (`test_<name>_<pid>`, config/settings/test.py) and dropped at the end; with `--reuse-db` it is named per
  checkout instead (`test_<name>_keep_<hash of the checkout's path>`), kept, and flushed once at the start.
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis
import structlog
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.backends.postgresql.operations import DatabaseOperations

from config import lanes
from config.celery import app
from tests.helpers import wait_until

pytest_plugins = ["tests.fixtures"]

BASE_DIR = Path(__file__).resolve().parent.parent
WORKER_QUEUES = ("celery", "posting", "callbacks", "reconciliation")  # `-Q`; the worker adds the event lanes


def watched_queues() -> list[str]:
    """Every queue a test worker consumes: those of `-Q` and the event lanes it adds (config.lanes)."""
    return [*WORKER_QUEUES, *lanes.all_queues()]
WORKER_START_TIMEOUT = 60
# Rows that migrations write and that no test changes: kept by the flush, so that every test, and a run
# on a database kept by `--reuse-db`, finds them as a freshly migrated database has them.
KEEP_ON_FLUSH = frozenset({"django_content_type", "auth_permission", "auth_group", "auth_group_permissions"})


# Flush with the append-only triggers off -----------------------------------------------------------


def _flush_without_triggers() -> None:
    original = DatabaseOperations.sql_flush
    if getattr(original, "tieout_replica_flush", False):
        return

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        tables = [table for table in tables if table not in KEEP_ON_FLUSH]
        statements = original(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        if not statements:
            return statements
        # execute_sql_flush runs these in one transaction: if the TRUNCATE fails, the SET rolls back too.
        return ["SET session_replication_role = replica", *statements, "SET session_replication_role = DEFAULT"]

    sql_flush.tieout_replica_flush = True
    DatabaseOperations.sql_flush = sql_flush


_flush_without_triggers()


# Logged tracebacks as plain text -----------------------------------------------------------------------


def _plain_tracebacks() -> None:
    """structlog's console renderer (config/logging.py, used by the test settings) draws a logged
    exception with rich: every frame, its locals, syntax-highlighted, about 2 s of CPU per traceback
    here. Django logs one for every PermissionDenied (each 403 of the admin), so the tests render them
    as plain tracebacks; what is logged stays the same."""
    for handler in logging.getLogger().handlers:
        for processor in getattr(handler.formatter, "processors", ()):
            if isinstance(processor, structlog.dev.ConsoleRenderer):
                processor.exception_formatter = structlog.dev.plain_traceback


_plain_tracebacks()


# Test databases: one per xdist process, per run or (--reuse-db) per checkout -----------------------


@pytest.fixture(scope="session")
def django_db_modify_db_settings_parallel_suffix(request, django_db_keepdb):
    """With `--reuse-db` the test database needs a name that the next run finds again; pytest-django
    then appends the xdist suffix (`_gw0`, ...) as it does to the per-run name."""
    if django_db_keepdb:
        database = settings.DATABASES["default"]
        checkout = hashlib.sha256(str(BASE_DIR).encode()).hexdigest()[:8]
        database.setdefault("TEST", {})["NAME"] = f"test_{database['NAME']}_keep_{checkout}"
    request.getfixturevalue("django_db_modify_db_settings_tox_suffix")
    request.getfixturevalue("django_db_modify_db_settings_xdist_suffix")


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker, django_db_keepdb):
    """A kept database (`--reuse-db`) is migrated to the current migrations by pytest-django; it may
    still hold what an interrupted run committed, so it is flushed once (reference data stays)."""
    if django_db_keepdb:
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)
    yield


# A real Celery worker --------------------------------------------------------------------------------


def _xdist_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... under pytest-xdist
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


def _broker_url(redis_url: str) -> str:
    """The tests' Redis, on a database of its own (15, 14, ... per xdist process): flushed at will.

    `make test` caps xdist at 8 processes, so the default base uses databases 15 to 8 at most; database
    0 (the application's default) is never used.
    """
    base = int(os.environ.get("TIEOUT_TEST_BROKER_DB", "15"))
    db = base - _xdist_index()
    if db < 1:
        raise RuntimeError(f"Redis database {db} for xdist process {_xdist_index()}: TIEOUT_TEST_BROKER_DB={base} "
                           "is lower than the number of processes; set it higher (Redis has 0 to 15)")
    parts = urlsplit(redis_url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def _test_database_url(settings_dict: dict) -> str:
    """DATABASE_URL with the test database's name (test_<name>), keeping host, socket and options."""
    name = quote(settings_dict["NAME"], safe="")
    url = os.environ.get("DATABASE_URL")
    if url:
        return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    user = quote(settings_dict.get("USER") or "", safe="")
    password = settings_dict.get("PASSWORD") or ""
    auth = f"{user}:{quote(password, safe='')}" if password else user
    host = quote(settings_dict.get("HOST") or "", safe="")
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"postgres://{auth}@{host}{port}/{name}"


def _reset_broker_pools(app) -> None:
    # The app caches connection and producer pools for the URL it first used; drop them so the next
    # publish connects to the broker now configured. The old pools stay in kombu's registry, unclosed.
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


class CeleryWorkerProcess:
    """Handle on the session's worker: its node name, broker, database, log file and subprocess."""

    def __init__(self, app, nodename: str, broker_url: str, database_url: str, log_path: Path):
        self.app = app
        self.nodename = nodename
        self.broker_url = broker_url
        self.database_url = database_url
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def ping(self, timeout: float = 1.0) -> bool:
        replies = self.app.control.ping(destination=[self.nodename], timeout=timeout)
        return any(self.nodename in reply for reply in replies)

    def inspect(self, timeout: float = 2.0):
        return self.app.control.inspect(destination=[self.nodename], timeout=timeout)

    def idle(self) -> bool:
        """Nothing waits in the worker's queues and nothing is running, reserved or scheduled on it.

        The queues are read first: a message taken from them after that shows up in the worker's answer.
        """
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            if any(channel._size(queue) for queue in watched_queues()):
                return False
        inspect = self.inspect()
        for method in (inspect.active, inspect.reserved, inspect.scheduled):
            replies = method() or {}
            if self.nodename not in replies or replies[self.nodename]:
                return False  # no answer is not idleness
        return True

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Wait until the worker is idle on two polls in a row (nothing in flight between them)."""
        streak = 0

        def settled() -> bool:
            nonlocal streak
            streak = streak + 1 if self.idle() else 0
            return streak >= 2

        wait_until(settled, timeout=timeout, interval=0.1, message=lambda: f"worker not idle\n{self.log_tail()}")

    def quiesce(self, timeout: float = 15.0) -> None:
        """Let running tasks finish, then drop what is queued or scheduled, so a test leaves nothing behind."""
        inspect = self.inspect()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = (inspect.active() or {}).get(self.nodename, [])
            if not active:
                break
            time.sleep(0.1)
        pending = []
        for request in (inspect.reserved() or {}).get(self.nodename, []):
            pending.append(request["id"])
        for entry in (inspect.scheduled() or {}).get(self.nodename, []):
            pending.append(entry["request"]["id"])
        if pending:
            self.app.control.revoke(pending, destination=[self.nodename])
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in watched_queues():
                channel.queue_purge(queue)


@pytest.fixture(scope="session")
def celery_worker_proc(django_db_setup, tmp_path_factory):
    """A real `celery worker` as production runs it (prefork, two processes; queues celery, posting and
    callbacks) on the test database.

    Session-scoped: starting a worker takes a couple of seconds. Prefer `live_worker` in tests.
    """
    broker_url = _broker_url(settings.REDIS_URL)
    database_url = _test_database_url(connection.settings_dict)
    nodename = f"tieout-test-{os.getpid()}@localhost"
    log_path = tmp_path_factory.mktemp("celery-worker") / "worker.log"
    handle = CeleryWorkerProcess(app, nodename, broker_url, database_url, log_path)

    # A dedicated Redis database: anything a previous run left in it goes, queues and all.
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    client.close()

    previous_broker = app.conf.broker_url
    app.conf.broker_url = broker_url
    _reset_broker_pools(app)

    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.test",
        CELERY_TASK_ALWAYS_EAGER="false",
        DATABASE_URL=database_url,
        REDIS_URL=broker_url,
        CELERY_BROKER_URL=broker_url,
        PYTHONUNBUFFERED="1",
    )
    argv = [
        str(Path(sys.executable).parent / "celery"), "-A", "config", "worker",
        "-Q", ",".join(WORKER_QUEUES), "--pool=prefork", "-c", "2", "-l", "warning",
        "-n", nodename, "--without-gossip", "--without-mingle",
    ]
    log_file = open(log_path, "wb")
    handle.process = subprocess.Popen(
        argv, cwd=BASE_DIR, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while not handle.ping(timeout=0.5):
            if handle.process.poll() is not None:
                raise RuntimeError(
                    f"celery worker exited with {handle.process.returncode}:\n{handle.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"celery worker not ready after {WORKER_START_TIMEOUT}s:\n{handle.log_tail()}")
        yield handle
    finally:
        _stop(handle.process)
        log_file.close()
        app.conf.broker_url = previous_broker
        _reset_broker_pools(app)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    # SIGTERM is Celery's warm shutdown: running tasks finish, unacknowledged messages go back.
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def live_worker(celery_worker_proc, transactional_db, settings):
    """Tasks go through Redis to the real worker for this test (eager mode off); data must be committed.

    Yields the `CeleryWorkerProcess` (nodename, ping(), inspect(), log_tail()). At the end, running
    tasks may finish and anything still queued or scheduled (retries with a countdown) is dropped.
    """
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = False
    settings.CELERY_TASK_ALWAYS_EAGER = False
    try:
        yield celery_worker_proc
    finally:
        app.conf.task_always_eager = previous
        celery_worker_proc.quiesce()
