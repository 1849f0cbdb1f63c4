"""Source-to-posted latency: invoices at 100 events/s for ~30 s, one Celery worker, built-in ERP.

gunicorn (production settings) takes single-event POSTs, paced open-loop (each event leaves at its
scheduled time whatever the previous answers did, from a pool of keep-alive clients); one Celery worker
(`-Q celery,posting,callbacks -c 1 --pool=prefork`; no callbacks are configured) processes and posts
them. Then the database is polled until every event is posted (bounded) and the script prints
p50/p95/p99 of journal.posted_at - event.received_at (both stamped by the server), how many were
posted, and the worker's drain rate. At 100 events/s one such worker falls behind: the latency is then
mostly queueing, and BENCH_RATE below the drain rate shows the unloaded path. It also prints the
database round trips of the worker's two steps for one invoice (event_process, journal_post).

Knobs (environment): BENCH_RATE (100), BENCH_SECONDS (30), BENCH_SENDERS (8), BENCH_DRAIN_TIMEOUT (300),
and the common ones (BENCH_PG_URL, BENCH_REDIS_URL, BENCH_DB, WEB_CONCURRENCY, GUNICORN_THREADS).
"""
import json
import os
import queue
import threading
import time

import psycopg

import _common as c

RATE = float(os.environ.get("BENCH_RATE", "100"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "30"))
SENDERS = int(os.environ.get("BENCH_SENDERS", "8"))
DRAIN_TIMEOUT = float(os.environ.get("BENCH_DRAIN_TIMEOUT", "300"))

LATENCY_SQL = """
SELECT extract(epoch FROM max(j.posted_at) - e.received_at)
FROM billing_sync_event e JOIN ledger_journal j ON j.event_id = e.id
WHERE e.source_system = %s AND e.event_id LIKE %s AND e.status = 'posted'
GROUP BY e.id, e.received_at
"""


def paced_send(port: int, token: str, tag: str) -> dict:
    total = int(RATE * SECONDS)
    work: queue.Queue = queue.Queue()
    lags, statuses, lock = [], {}, threading.Lock()

    def sender():
        client = c.Client(port, token)
        try:
            while True:
                item = work.get()
                if item is None:
                    return
                n, due = item
                lag = time.monotonic() - due
                try:
                    status, _ = client.post("/api/v1/events", c.invoice_body(tag, n))
                except OSError:
                    status = 0
                    client.close()
                with lock:
                    lags.append(lag)
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            client.close()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    start = time.monotonic() + 0.2
    for n in range(total):  # open loop: the schedule never waits for answers
        due = start + n / RATE
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        work.put((n, due))
    for _ in threads:
        work.put(None)
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.monotonic() - start
    return {"sent": total, "elapsed": elapsed, "statuses": statuses,
            "max_send_lag_ms": max(lags) * 1000 if lags else 0.0,
            "p99_send_lag_ms": c.percentile(lags, 99) * 1000}


def count_posted(conn, tag: str) -> int:
    return conn.execute("SELECT count(*) FROM billing_sync_event WHERE source_system = %s AND event_id LIKE %s "
                        "AND status = 'posted'", [c.SOURCE, f"evt_{tag}_%"]).fetchone()[0]


def main() -> None:
    c.say(f"latency: invoice.issued at {RATE:.0f} events/s for {SECONDS:.0f} s (open loop, {SENDERS} senders), "
          f"one Celery worker -c 1 prefork ({c.machine()})")
    env = c.bench_env()
    token = c.prepare(env)
    server, port = c.start_gunicorn(env)
    worker = c.start_celery_worker(env, concurrency=1)

    # The customer every invoice names, processed before the clock starts.
    setup = c.Client(port, token)
    status, body = setup.post("/api/v1/events", c.customer_body())
    assert status == 202, body
    customer_event = json.loads(body)["id"]
    deadline = time.monotonic() + 30
    while json.loads(setup.get(f"/api/v1/events/{customer_event}")[1])["status"] != "processed":
        if time.monotonic() > deadline:
            raise SystemExit(f"the customer event was not processed:\n{c.tail('celery.log')}")
        time.sleep(0.1)
    setup.close()

    tag = c.run_id()
    sent = paced_send(port, token, tag)
    sending_done = time.monotonic()
    c.say(f"sent {sent['sent']} events in {sent['elapsed']:.1f} s; answers {sent['statuses']}; "
          f"send lag p99 {sent['p99_send_lag_ms']:.1f} ms, max {sent['max_send_lag_ms']:.1f} ms")

    accepted = sent["statuses"].get(202, 0)
    with psycopg.connect(c.database_url(), autocommit=True) as conn:
        last, last_change = -1, time.monotonic()
        while True:
            posted = count_posted(conn, tag)
            if posted != last:
                last, last_change = posted, time.monotonic()
            if posted >= accepted:
                break
            if time.monotonic() - sending_done > DRAIN_TIMEOUT or time.monotonic() - last_change > 60:
                c.say(f"stopped waiting: {posted} of {accepted} posted")
                break
            time.sleep(0.5)
        drained_after = time.monotonic() - sending_done
        latencies = [row[0] for row in conn.execute(LATENCY_SQL, [c.SOURCE, f"evt_{tag}_%"]).fetchall()]
        span = conn.execute(
            "SELECT extract(epoch FROM max(j.posted_at) - min(e.received_at)) FROM billing_sync_event e "
            "JOIN ledger_journal j ON j.event_id = e.id WHERE e.source_system = %s AND e.event_id LIKE %s",
            [c.SOURCE, f"evt_{tag}_%"]).fetchone()[0]
    load_after = c.load()
    c.stop(worker)
    c.stop(server)

    trips = c.helper("processing", env=dict(env, BENCH_TOKEN=token))

    latencies = [float(x) for x in latencies]
    c.say("")
    c.say(f"posted {len(latencies)} of {accepted} accepted events (all posted {drained_after:.1f} s after the "
          f"last send); worker drain rate {len(latencies) / float(span or 1):.0f} events/s over "
          f"{float(span or 0):.1f} s; load average after {load_after:.2f}")
    c.say(f"source-to-posted latency (journal.posted_at - event.received_at): p50 "
          f"{c.percentile(latencies, 50) * 1000:.0f} ms, p95 {c.percentile(latencies, 95) * 1000:.0f} ms, "
          f"p99 {c.percentile(latencies, 99) * 1000:.0f} ms, max {max(latencies, default=0) * 1000:.0f} ms")
    pe, jp = trips["event_process"], trips["journal_post"]
    c.say(f"  worker work per invoice: event_process {pe['db_round_trips']} DB round trips, "
          f"{pe['redis_round_trips']} Redis ({trips['process_event_ms']} ms in-process); journal_post "
          f"{jp['db_round_trips']} DB round trips, {jp['redis_round_trips']} Redis ({trips['journal_post_ms']} ms)")
    c.say(f"  event_process: {pe['sql']}")
    c.say(f"  journal_post: {jp['sql']}")


if __name__ == "__main__":
    main()
