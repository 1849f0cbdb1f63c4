"""Shared plumbing of the benchmarks: the bench database, the production-like processes, HTTP clients.

Every script uses the machine's PostgreSQL and Redis on 127.0.0.1 only (never the embedded ones that
`make` may export through DATABASE_URL / REDIS_URL): a dedicated database `tieout_bench`, created,
migrated and dropped by the script, and a dedicated Redis database (7 unless BENCH_REDIS_URL says
otherwise), flushed before and after; BENCH_KEEP=1 keeps the database and the process logs. The web
server is gunicorn with config/gunicorn.conf.py and config.settings.prod (a random SECRET_KEY,
ALLOWED_HOSTS=127.0.0.1, LOG_LEVEL=WARNING). Every process a script starts runs in its own process
group and is stopped on exit, on Ctrl-C and on SIGTERM.
"""
from __future__ import annotations

import atexit
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from celery import Celery

BASE_DIR = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
DB_NAME = os.environ.get("BENCH_DB", "tieout_bench")
SOURCE = "bench-billing"
KEEP = os.environ.get("BENCH_KEEP", "") not in ("", "0")  # keep the database and the logs (debugging)

for _url in (PG_URL, REDIS_URL):
    if urlsplit(_url).hostname not in ("127.0.0.1", "localhost"):
        sys.exit(f"bench: refusing a non-local target {_url!r}: benchmarks only run against 127.0.0.1")

_children: list[subprocess.Popen] = []
_workdir = Path(tempfile.mkdtemp(prefix="tieout-bench-"))


def say(message: str = "") -> None:
    print(message, flush=True)


def log_path(name: str) -> Path:
    return _workdir / name


# ------------------------------------------------------------------------------------------ processes
def _stop(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def stop(process: subprocess.Popen) -> None:
    _stop(process)
    if process in _children:
        _children.remove(process)


def stop_all() -> None:
    while _children:
        _stop(_children.pop())


def _on_signal(signum, frame):
    stop_all()
    sys.exit(128 + signum)


atexit.register(stop_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def spawn(argv: list[str], *, env: dict, log_name: str) -> subprocess.Popen:
    log = open(log_path(log_name), "wb")
    process = subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    _children.append(process)
    return process


def tail(log_name: str, lines: int = 30) -> str:
    try:
        return "\n".join(log_path(log_name).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ------------------------------------------------------------------------------------------ environment
def database_url(name: str = DB_NAME) -> str:
    return urlunsplit(urlsplit(PG_URL)._replace(path=f"/{name}"))


def bench_env(**extra) -> dict:
    """Production settings on the bench database and Redis database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_"))}
    alphabet = string.ascii_letters + string.digits + "!@#%^&*(-_=+)"
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.prod",
        SECRET_KEY="".join(secrets.choice(alphabet) for _ in range(50)),
        ALLOWED_HOSTS=HOST,
        LOG_LEVEL="WARNING",
        DATABASE_URL=database_url(),
        REDIS_URL=REDIS_URL,
        GUNICORN_LOGLEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def psql(sql: str, *, db: str = "postgres") -> str:
    with psycopg.connect(database_url(db), autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else None


def create_database() -> None:
    psql(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    psql(f'CREATE DATABASE "{DB_NAME}"')
    atexit.register(drop_database)


def drop_database() -> None:
    stop_all()
    if KEEP:
        print(f"bench: BENCH_KEEP set, database {DB_NAME} and logs in {_workdir} kept", file=sys.stderr)
        return
    try:
        psql(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    except Exception as exc:  # noqa: BLE001 - best effort at exit
        print(f"bench: could not drop {DB_NAME}: {exc}", file=sys.stderr)


def flush_redis() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()


def redis_queue_length(queue: str | None = None) -> int:
    """Messages waiting in one queue, or (no name) in the processing queues: `celery` and the event lanes."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        if queue is not None:
            return client.llen(queue)
        return client.llen("celery") + sum(client.llen(key) for key in client.scan_iter(match="events.*"))
    finally:
        client.close()


def manage(*args: str, env: dict) -> str:
    result = subprocess.run([str(BIN / "python"), "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def prepare(env: dict) -> str:
    """Fresh bench database, migrated, with entity US01 and an integration token (returned)."""
    create_database()
    flush_redis()
    atexit.register(flush_redis)
    started = time.monotonic()
    manage("migrate", "--noinput", "-v", "0", env=env)
    manage("setup_entity", "US01", "--currency", "USD", env=env)
    token = manage("issue_token", "bench", "--role", "integration", env=env).strip().splitlines()[-1]
    say(f"database {DB_NAME} created and migrated in {time.monotonic() - started:.1f} s")
    return token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_gunicorn(env: dict) -> tuple[subprocess.Popen, int]:
    port = free_port()
    genv = dict(env, GUNICORN_BIND=f"{HOST}:{port}", GUNICORN_ACCESSLOG=str(log_path("access.log")))
    process = spawn([str(BIN / "gunicorn"), "-c", "config/gunicorn.conf.py", "config.wsgi"], env=genv,
                    log_name="gunicorn.log")
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited with {process.returncode}:\n{tail('gunicorn.log')}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"gunicorn not ready after 60 s:\n{tail('gunicorn.log')}")
        time.sleep(0.2)
    workers = int(env.get("WEB_CONCURRENCY") or 2 * os.cpu_count())
    say(f"gunicorn on {HOST}:{port} ({workers} gthread workers x {env.get('GUNICORN_THREADS', '4')} threads, "
        "config.settings.prod)")
    return process, port


def start_celery_worker(env: dict, *, concurrency: int = 1) -> subprocess.Popen:
    nodename = f"tieout-bench-{os.getpid()}@localhost"
    process = spawn([str(BIN / "celery"), "-A", "config", "worker", "-Q", "celery,posting,callbacks",
                     "-c", str(concurrency), "--pool=prefork", "-l", "warning", "-n", nodename,
                     "--without-gossip", "--without-mingle"],
                    env=env, log_name="celery.log")
    probe = Celery(broker=REDIS_URL)
    deadline = time.monotonic() + 60
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"celery worker exited with {process.returncode}:\n{tail('celery.log')}")
            replies = probe.control.ping(destination=[nodename], timeout=0.5)
            if any(nodename in reply for reply in replies):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"celery worker not ready after 60 s:\n{tail('celery.log')}")
    finally:
        probe.close()
    say(f"celery worker {nodename}: -Q celery,posting,callbacks -c {concurrency} --pool=prefork")
    return process


def helper(*args: str, env: dict) -> dict:
    """Run bench/_roundtrips.py (in-process counts) and return its JSON answer."""
    result = subprocess.run([str(BIN / "python"), "bench/_roundtrips.py", *args], cwd=BASE_DIR, env=env,
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"bench/_roundtrips.py {' '.join(args)} failed:\n{result.stdout[-3000:]}\n"
                         f"{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def cleanup_workdir() -> None:
    if KEEP:
        return
    shutil.rmtree(_workdir, ignore_errors=True)


atexit.register(cleanup_workdir)


# ------------------------------------------------------------------------------------------ HTTP
class Client:
    """One keep-alive HTTP/1.1 connection (stdlib http.client: the least client overhead per request)."""

    def __init__(self, port: int, token: str, timeout: float = 60):
        self.port = port
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                        "Connection": "keep-alive"}
        self.conn = None

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", path, body=body, headers=self.headers)
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # gunicorn recycles a worker now and then (max_requests): reconnect once.
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        self.conn.request("GET", path, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ------------------------------------------------------------------------------------------ payloads
_INVOICE_TEMPLATE = None


def invoice_body(run: str, n: int, customer_id: str = "cus_bench") -> bytes:
    """A typical invoice.issued event (two lines with tax), unique by (run, n); built by string formatting."""
    global _INVOICE_TEMPLATE
    if _INVOICE_TEMPLATE is None:
        payload = invoice_payload("@@EVT@@", "@@INV@@", customer_id)
        _INVOICE_TEMPLATE = json.dumps(payload, separators=(",", ":"))
    return (_INVOICE_TEMPLATE.replace("@@EVT@@", f"evt_{run}_{n}")
            .replace("@@INV@@", f"inv_{run}_{n}").encode())


def invoice_payload(event_id: str, invoice_id: str, customer_id: str = "cus_bench") -> dict:
    return {
        "schema_version": "1", "source_system": SOURCE, "event_id": event_id, "type": "invoice.issued",
        "occurred_at": "2026-11-01T10:00:00Z", "entity": "US01",
        "data": {
            "invoice_id": invoice_id, "number": f"INV-{invoice_id}", "customer_id": customer_id, "currency": "USD",
            "issue_date": "2026-11-01", "due_date": "2026-11-30",
            "lines": [
                {"line_id": "li_1", "description": "Platform subscription", "amount": "100.00",
                 "taxes": [{"jurisdiction": "US-CA", "rate": "0.0725", "amount": "7.25"}]},
                {"line_id": "li_2", "description": "Extra seats", "amount": "40.00",
                 "taxes": [{"jurisdiction": "US-CA", "rate": "0.0725", "amount": "2.90"}]},
            ],
            "subtotal": "140.00", "tax_total": "10.15", "total": "150.15", "version": 1,
        },
    }


def customer_body(customer_id: str = "cus_bench") -> bytes:
    return json.dumps({"schema_version": "1", "source_system": SOURCE, "event_id": f"evt_{customer_id}",
                       "type": "customer.upserted", "occurred_at": "2026-10-01T10:00:00Z", "entity": "US01",
                       "data": {"customer_id": customer_id, "name": "Bench Customer", "email": "ap@bench.example",
                                "country": "US", "version": 1}}).encode()


def run_id() -> str:
    return uuid.uuid4().hex[:8]


# ------------------------------------------------------------------------------------------ figures
def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pgbench_path() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    return None


def machine() -> str:
    try:
        version = psql("SHOW server_version")[0][0]
    except Exception:  # noqa: BLE001
        version = "?"
    return (f"{os.cpu_count()} CPUs, PostgreSQL {version} on {HOST}, Python {sys.version.split()[0]}; "
            f"load average {load():.2f}")


def load() -> float:
    """1-minute load average: other work on the machine shows up here (the figures share its CPUs)."""
    return os.getloadavg()[0]


def throttle_history_bytes() -> int:
    """Size of the DRF throttle history values in the bench Redis (a list of every request timestamp)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return sum(client.strlen(key) for key in client.scan_iter(match="*throttle*"))
    finally:
        client.close()


def worker_ready(process: subprocess.Popen, name: str, nodename: str, timeout: float = 60) -> subprocess.Popen:
    """Wait until the Celery worker started as `process` answers a ping as `nodename`; its log tail if it dies."""
    probe = Celery(broker=REDIS_URL)
    deadline = time.monotonic() + timeout
    try:
        while not any(nodename in reply for reply in probe.control.ping(destination=[nodename], timeout=0.5)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker {name} did not start:\n{tail(f'{name}.log')}")
    finally:
        probe.close()
    return process
