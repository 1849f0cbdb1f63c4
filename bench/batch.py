"""Batch ingest throughput: events/s for 1,000-event batches via POST /api/v1/events/batch, against gunicorn.

20 batches of 1,000 new invoice events, 2 concurrent keep-alive clients. Side by side in the same run:
rows/s of one `INSERT ... SELECT` of 1,000 rows of the same shape (a scratch copy of the event table with
the same columns, defaults, constraints and indexes, filled from the events just received), committed,
repeated 20 times. No Celery worker runs: the processing tasks (one per 50 events) queue in Redis.
The endpoint writes the batch's receipt, events and audit entries in one statement (its own transaction).

Knobs (environment): BENCH_BATCHES (20), BENCH_BATCH_SIZE (1000), BENCH_BATCH_CLIENTS (2), and the
common ones (BENCH_PG_URL, BENCH_REDIS_URL, BENCH_DB, WEB_CONCURRENCY, GUNICORN_THREADS).
"""
import json
import os
import queue
import threading
import time

import psycopg

import _common as c

BATCHES = int(os.environ.get("BENCH_BATCHES", "20"))
SIZE = int(os.environ.get("BENCH_BATCH_SIZE", "1000"))
CLIENTS = int(os.environ.get("BENCH_BATCH_CLIENTS", "2"))


def batch_body(tag: str, size: int) -> bytes:
    return b'{"events":[' + b",".join(c.invoice_body(tag, n) for n in range(size)) + b"]}"


def send_batches(port: int, token: str, bodies: list[bytes]) -> dict:
    work: queue.Queue = queue.Queue()
    for body in bodies:
        work.put(body)
    lock = threading.Lock()
    latencies, accepted, problems = [], [0], []

    def client_loop():
        client = c.Client(port, token, timeout=300)
        try:
            while True:
                try:
                    body = work.get_nowait()
                except queue.Empty:
                    return
                started = time.perf_counter()
                status, data = client.post("/api/v1/events/batch", body)
                elapsed = time.perf_counter() - started
                if status != 200:
                    problems.append(f"HTTP {status}: {data[:200]!r}")
                    continue
                results = json.loads(data)["results"]
                ok = sum(1 for r in results if r["status"] == 202)
                with lock:
                    latencies.append(elapsed)
                    accepted[0] += ok
                    if ok != len(results):
                        problems.append(f"{len(results) - ok} of {len(results)} not accepted")
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(CLIENTS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=1800)
    elapsed = time.monotonic() - started
    return {"elapsed": elapsed, "accepted": accepted[0], "rate": accepted[0] / elapsed, "latencies": latencies,
            "problems": problems}


def insert_select_baseline(repeats: int) -> list[float]:
    """Seconds per committed `INSERT ... SELECT` of SIZE event-shaped rows into a scratch table."""
    timings = []
    with psycopg.connect(c.database_url(), autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_event_scratch (LIKE billing_sync_event INCLUDING ALL)")
        for k in range(repeats):
            sql = f"""
                INSERT INTO bench_event_scratch (id, source_system, event_id, type, entity_code, occurred_at, payload,
                    payload_hash, idempotency_key, status, correlation_id, received_at, receipt_id, sent_by_id,
                    response_body, attempts)
                SELECT gen_random_uuid(), source_system, event_id || '-copy{k}', type, entity_code, occurred_at,
                       payload, payload_hash, NULL, 'accepted', correlation_id, now(), receipt_id, sent_by_id,
                       response_body, 0
                FROM billing_sync_event ORDER BY received_at, id LIMIT {SIZE}
            """
            started = time.perf_counter()
            with conn.transaction():
                conn.execute(sql)
            timings.append(time.perf_counter() - started)
    return timings


def main() -> None:
    c.say(f"batch: {BATCHES} batches of {SIZE} events via POST /api/v1/events/batch, {CLIENTS} clients "
          f"({c.machine()})")
    env = c.bench_env()
    token = c.prepare(env)
    server, port = c.start_gunicorn(env)

    warm = send_batches(port, token, [batch_body(f"warm{i}", 200) for i in range(4)])
    if warm["problems"]:
        raise SystemExit(f"warm-up failed: {warm['problems'][:3]}")
    run = c.run_id()
    bodies = [batch_body(f"{run}b{i}", SIZE) for i in range(BATCHES)]
    mb = sum(len(b) for b in bodies) / len(bodies) / 1e6
    queued_before = c.redis_queue_length()
    result = send_batches(port, token, bodies)
    queued = c.redis_queue_length() - queued_before
    load_after = c.load()
    c.stop(server)

    trips = c.helper("ingest", env=dict(env, BENCH_TOKEN=token))["batch_1000_new"]

    timings = insert_select_baseline(BATCHES)
    per_insert = c.median(timings)

    lat = result["latencies"]
    c.say("")
    c.say(f"POST /api/v1/events/batch  {result['rate']:8.0f} events/s ({result['accepted']} accepted in "
          f"{result['elapsed']:.1f} s; {BATCHES} x {SIZE}, {mb:.2f} MB per body, {CLIENTS} clients); per batch "
          f"p50 {c.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms; load average after {load_after:.2f}")
    if result["problems"]:
        c.say(f"  problems: {result['problems'][:5]}")
    c.say(f"  per 1,000-event batch: {trips['db_round_trips']} DB round trips {trips['sql']}; "
          f"{trips['redis_round_trips']} Redis round trips {trips['redis']}; processing tasks queued: {queued}")
    c.say(f"INSERT ... SELECT {SIZE} rows  {SIZE / per_insert:8.0f} rows/s (median {per_insert * 1000:.1f} ms per "
          f"committed statement, best {min(timings) * 1000:.1f} ms, {len(timings)} runs; same columns, "
          "constraints and indexes as billing_sync_event)")
    c.say(f"ratio endpoint / INSERT ... SELECT: {result['rate'] * per_insert / SIZE:.2f} (the endpoint takes "
          f"{SIZE / per_insert / result['rate']:.1f}x the time of the bare insert per event); goal >= 10,000 "
          f"events/s: {'met' if result['rate'] >= 10_000 else 'not met'}; load average now {c.load():.2f}")


if __name__ == "__main__":
    main()
