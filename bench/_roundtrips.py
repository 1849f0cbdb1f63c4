"""Round trips per request, counted in-process (run by the bench scripts, bench environment).

Drives the real URL through Django's test client (full middleware, authentication, throttling and the
after-commit Celery publish) and counts, for one warm request: the statements Django sent to PostgreSQL
(`CaptureQueriesContext`, which lists BEGIN and COMMIT too), and the Redis round trips (every
`send_packed_command` of redis-py, which both the cache and Celery's Redis transport use). Mode
`processing` counts the worker's two steps for one invoice instead; mode `chunk` the statements per event
processed one at a time (`event_process`) and in chunks (`events_process`). Prints one JSON object on the
last line of stdout.
"""
import json
import os
import re
import sys
import time
from collections import Counter, deque
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.prod")

import django  # noqa: E402

django.setup()

import redis.connection  # noqa: E402
from django.db import close_old_connections, connection, connections  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from _common import customer_body, invoice_body, run_id  # noqa: E402
from django.conf import settings  # noqa: E402
from billing_sync import services as billing  # noqa: E402
from billing_sync.services import processing as processing_module  # noqa: E402
from ledger import services as ledger  # noqa: E402
from ledger.services import outbox as outbox_module  # noqa: E402
from billing_sync.models import Event  # noqa: E402
from ledger.models import Journal  # noqa: E402

redis_calls: list[str] = []
_original = redis.connection.AbstractConnection.send_packed_command


def _counting(self, command, check_health=True):
    first = command[0] if isinstance(command, list) and command else command
    text = bytes(first[:60]) if isinstance(first, (bytes, bytearray, memoryview)) else b""
    # RESP: *<n>\r\n$<len>\r\n<NAME>\r\n ... -> the command name; several in one packet for a pipeline.
    parts = text.split(b"\r\n")
    redis_calls.append(parts[2].decode(errors="replace").upper() if len(parts) > 2 else "?")
    return _original(self, command, check_health=check_health)


redis.connection.AbstractConnection.send_packed_command = _counting


def _classify(sql: str) -> str:
    """`INSERT audit_auditentry`, `SELECT billing_sync_event`, `BEGIN`, ... (values are inlined: look early)."""
    verb = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
    head = sql[:400] if verb in ("INSERT", "UPDATE") else sql[:4000]
    if sql.endswith("(health check)"):
        return sql
    if verb == "WITH":  # one statement writing several tables (data-modifying CTEs)
        tables = dict.fromkeys(re.sub(r"^(billing_sync|audit)_", "", t) for t in re.findall(r"INSERT\s+INTO\s+\"?(\w+)", sql[:20000]))
        return f"WITH: INSERT {'+'.join(tables)} (one statement)" if tables else "WITH"
    pattern = {"INSERT": r"INTO\s+\"?(\w+)", "UPDATE": r"UPDATE\s+\"?(\w+)"}.get(verb, r"FROM\s+\"?(\w+)")
    match = re.search(pattern, head, re.IGNORECASE)
    locked = " FOR UPDATE" if verb == "SELECT" and sql.rstrip().upper().endswith("FOR UPDATE") else ""
    return f"{verb} {match.group(1)}{locked}" if match else verb


health_checks: list[int] = []
_wrapper_class = type(connections["default"])
_is_usable = _wrapper_class.is_usable


def _counting_is_usable(self):
    health_checks.append(1)
    return _is_usable(self)


# CONN_HEALTH_CHECKS: the first query of a request on a kept connection is preceded by Django's `SELECT 1`
# (`is_usable`), which CaptureQueriesContext does not list. Counted here.
_wrapper_class.is_usable = _counting_is_usable


def measure(client: Client, path: str, body: bytes) -> dict:
    redis_calls.clear()
    health_checks.clear()
    close_old_connections()  # what `request_started` does in a server (the test client leaves it out)
    with CaptureQueriesContext(connection) as ctx:
        response = client.post(path, body, content_type="application/json")
    # Django lists transaction control too ("BEGIN" when autocommit goes off, psycopg sending it before
    # the first statement; "COMMIT"): every entry is one round trip to PostgreSQL.
    sql = [q["sql"] for q in ctx.captured_queries] + ["SELECT 1 (health check)"] * len(health_checks)
    return {"status": response.status_code, "db_round_trips": len(sql), "redis_round_trips": len(redis_calls),
            "sql": dict(Counter(_classify(s) for s in sql)), "redis": dict(Counter(redis_calls))}


def _count(fn) -> dict:
    redis_calls.clear()
    with CaptureQueriesContext(connection) as ctx:
        fn()
    sql = [q["sql"] for q in ctx.captured_queries]
    return {"db_round_trips": len(sql), "redis_round_trips": len(redis_calls),
            "sql": dict(Counter(_classify(s) for s in sql)), "redis": dict(Counter(redis_calls))}


def ingest(client: Client) -> dict:
    run = run_id()
    out = {}
    # Warm up: token cache, Celery producer pool, Django's connection.
    for n in range(3):
        client.post("/api/v1/events", invoice_body(f"w{run}", n), content_type="application/json")
    out["single_new"] = measure(client, "/api/v1/events", invoice_body(run, 0))
    out["single_replay"] = measure(client, "/api/v1/events", invoice_body(run, 0))
    events = [json.loads(invoice_body(f"b{run}", n)) for n in range(1000)]
    out["batch_1000_new"] = measure(client, "/api/v1/events/batch", json.dumps({"events": events}).encode())

    # Server-side cost of one request in this single process (no HTTP, no concurrency).
    n_requests = 300
    started = time.perf_counter()
    for n in range(n_requests):
        client.post("/api/v1/events", invoice_body(f"t{run}", n), content_type="application/json")
    out["single_in_process_ms"] = round((time.perf_counter() - started) * 1000 / n_requests, 2)
    return out


def processing(client: Client) -> dict:
    """What the worker does for one invoice event: event_process (with its after-commit relay), journal_post."""
    run = run_id()
    with mock.patch.object(processing_module, "events_schedule", lambda ids, routes=None: None):
        ids = [json.loads(client.post("/api/v1/events", invoice_body(f"p{run}", n),
                                      content_type="application/json").content)["id"] for n in range(203)]
    # Processing as the worker runs it, after-commit relay included (it publishes post_journal to the
    # bench broker, where no worker listens any more); the journal is then posted here.
    for event_id in ids[:2]:  # warm
        billing.event_process(event_id=event_id)
        for journal_id in Journal.objects.filter(event_id=event_id).values_list("pk", flat=True):
            ledger.journal_post(journal_id=journal_id)
    out = {"event_process": _count(lambda: billing.event_process(event_id=ids[2]))}
    journal_id = Journal.objects.get(event_id=ids[2]).pk
    out["journal_post"] = _count(lambda: ledger.journal_post(journal_id=journal_id))
    started = time.perf_counter()
    for event_id in ids[3:]:
        billing.event_process(event_id=event_id)
    middle = time.perf_counter()
    for journal_id in Journal.objects.filter(event_id__in=ids[3:]).order_by("created_at").values_list(
            "pk", flat=True):
        ledger.journal_post(journal_id=journal_id)
    ended = time.perf_counter()
    out["process_event_ms"] = round((middle - started) * 1000 / len(ids[3:]), 2)
    out["journal_post_ms"] = round((ended - middle) * 1000 / len(ids[3:]), 2)
    return out


def chunk(client: Client) -> dict:
    """Statements per invoice event processed: one at a time (`event_process` each, its own transaction) vs
    one chunk of TIEOUT_PROCESS_CHUNK (`events_process`), after-commit relays included in both."""
    run, size = run_id(), settings.TIEOUT_PROCESS_CHUNK
    # Django keeps the last 9,000 statements (`queries_limit`) and CaptureQueriesContext counts within them:
    # a chunk's statements would overflow it and count as none.
    connection.queries_log = deque(maxlen=1_000_000)

    def accept(tag: str, count: int) -> list[str]:
        with mock.patch.object(processing_module, "events_schedule", lambda ids, routes=None: None):
            return [json.loads(client.post("/api/v1/events", invoice_body(f"{tag}{run}", n),
                                           content_type="application/json").content)["id"] for n in range(count)]

    with mock.patch.object(processing_module, "events_schedule", lambda ids, routes=None: None):
        customer = json.loads(client.post("/api/v1/events", customer_body(), content_type="application/json").content)
    billing.event_process(event_id=customer["id"])
    billing.events_process(event_ids=accept("w", 3))  # warm: caches, prepared plans, the Celery producer
    out = {"events": size}

    def one_at_a_time(ids):
        for event_id in ids:
            billing.event_process(event_id=event_id)

    def chunked(ids):
        billing.events_process(event_ids=ids)

    # With the built-in ledger's inline posting after commit (what a worker does), then processing alone
    # (the outbox relay left out: the journals stay ready).
    for relay, suffix in ((outbox_module.outbox_relay, ""), (lambda ids: None, "_processing_only")):
        with mock.patch.object(outbox_module, "outbox_relay", relay):
            for name, work in (("one_at_a_time", one_at_a_time), ("chunked", chunked)):
                ids = accept(f"{name[0]}{suffix[:2]}", size)
                started = time.perf_counter()
                counted = _count(lambda: work(ids))  # noqa: B023 (called at once)
                counted["ms_per_event"] = round((time.perf_counter() - started) * 1000 / size, 2)
                counted["db_round_trips_per_event"] = round(counted["db_round_trips"] / size, 2)
                counted["processed"] = Event.objects.filter(pk__in=ids).exclude(status="accepted").count()
                out[name + suffix] = counted
    return out


def main() -> None:
    token = os.environ["BENCH_TOKEN"]
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_HOST="127.0.0.1")
    mode = sys.argv[1] if len(sys.argv) > 1 else "ingest"
    modes = {"ingest": ingest, "processing": processing, "chunk": chunk}
    print(json.dumps(modes[mode](client)))


if __name__ == "__main__":
    main()
