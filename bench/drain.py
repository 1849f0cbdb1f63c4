"""The drain curve: a month-end backlog of BENCH_N invoices with their payments, built-in ERP, drained by one
Celery worker of 1, 2 and 4 processes (issue 13: 100,000 invoices; BENCH_N scales it down).

Set-up (not timed): gunicorn (production settings) takes the customers, processed by a worker that then
stops. For each worker size, a fresh backlog of BENCH_N `invoice.issued` events and BENCH_N
`payment.received` events (each paying its invoice in full) goes in through `POST /api/v1/events/batch`
with no worker running, so the processing tasks wait in the lane queues (`events.0` ...); then a worker
`-Q celery,posting,callbacks -c P --pool=prefork` (every lane) starts and the clock runs from its first
answer to a ping until every event of the backlog is `posted` (journal in the built-in ledger). Printed
per size: events processed per second and posted per second (the database's stamps: the first event's
`processed_at` to the last `processed_at`, and to the last journal's `posted_at`), the
PostgreSQL statements and commits per event (counted in the worker processes, bench/_counting_worker.py),
and where the CPU went (the bench database's PostgreSQL backends vs the worker's processes vs the rest, from
/proc), also per event (which depends much less than rates on what else runs on the machine), with the load average:
what saturates first. Beat's `tables-analyze` runs beside the worker every 30 s, as beat runs it in production
(its CPU counts as "other").

Knobs (environment): BENCH_N (1000), BENCH_CUSTOMERS (N / 10, at least 16), BENCH_SIZES (1,2,4),
BENCH_DRAIN_TIMEOUT (900 s per size), and the common ones (BENCH_PG_URL, BENCH_REDIS_URL, BENCH_DB).
"""
import json
import os
import threading
import time

import psutil
import psycopg
import redis

import _common as c

N = int(os.environ.get("BENCH_N", "1000"))
CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", str(max(16, N // 10))))
SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "1,2,4").split(",") if s.strip()]
DRAIN_TIMEOUT = float(os.environ.get("BENCH_DRAIN_TIMEOUT", "900"))
BATCH = 1000
COUNT_KEY = "bench:statements"


def customer_payload(n: int) -> dict:
    return {"schema_version": "1", "source_system": c.SOURCE, "event_id": f"evt_cus_{n}", "type": "customer.upserted",
            "occurred_at": "2026-10-01T10:00:00Z", "entity": "US01",
            "data": {"customer_id": f"cus_{n}", "name": f"Customer {n}", "email": f"ap{n}@bench.example",
                     "country": "US", "version": 1}}


def payment_payload(tag: str, n: int, customer: str) -> dict:
    return {"schema_version": "1", "source_system": c.SOURCE, "event_id": f"evt_{tag}_pay_{n}",
            "type": "payment.received", "occurred_at": "2026-11-02T10:00:00Z", "entity": "US01",
            "data": {"payment_id": f"pay_{tag}_{n}", "customer_id": customer, "currency": "USD", "amount": "150.15",
                     "received_at": "2026-11-02T10:00:00Z", "method": "card",
                     "allocations": [{"invoice_id": f"inv_{tag}_{n}", "amount": "150.15"}]}}


def backlog(tag: str) -> list[dict]:
    """Each invoice and then its payment, customers in turn (a month-end run)."""
    events = []
    for n in range(N):
        customer = f"cus_{n % CUSTOMERS}"
        events.append(c.invoice_payload(f"evt_{tag}_inv_{n}", f"inv_{tag}_{n}", customer))
        events.append(payment_payload(tag, n, customer))
    return events


def send_batches(port: int, token: str, events: list[dict], clients: int = 2) -> float:
    bodies = [json.dumps({"events": events[i:i + BATCH]}, separators=(",", ":")).encode()
              for i in range(0, len(events), BATCH)]
    problems = []

    def loop(part):
        client = c.Client(port, token, timeout=300)
        for body in part:
            status, answer = client.post("/api/v1/events/batch", body)
            if status >= 300:
                problems.append((status, answer[:300]))
        client.close()

    started = time.monotonic()
    threads = [threading.Thread(target=loop, args=(bodies[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if problems:
        raise SystemExit(f"batch refused: {problems[:3]}")
    return time.monotonic() - started


def start_worker(env: dict, processes: int, name: str):
    nodename = f"{name}-{os.getpid()}@localhost"
    process = c.spawn([str(c.BIN / "python"), "bench/_counting_worker.py", "-A", "config", "worker",
                       "-Q", "celery,posting,callbacks", "-c", str(processes), "--pool=prefork", "-l", "warning",
                       "-n", nodename, "--without-gossip", "--without-mingle"],
                      env=dict(env, BENCH_COUNT_REDIS_URL=c.REDIS_URL), log_name=f"{name}.log")
    return c.worker_ready(process, name, nodename)


ANALYZER = ("import time, django; django.setup(); from audit import services\n"
            "while True:\n    services.tables_analyze(); time.sleep(30)")
# The backlog's events are those received since it was sent: read through the received_at index (it carries the
# status), not by `event_id LIKE`, a scan of every event's row that took a fifth of a core from the drain it
# polled at 200,000 events.
STATUS_SQL = ("SELECT count(*) FILTER (WHERE status <> 'accepted'), count(*) FILTER (WHERE status = 'posted'), "
              "count(*) FILTER (WHERE status = 'exception') FROM billing_sync_event WHERE received_at >= %s")


class CpuMeter:
    """CPU seconds by group (PostgreSQL backends, the worker's processes, everything else) between two reads,
    from /proc through psutil; processes that start in between count from zero."""

    def __init__(self, worker_pid: int):
        self.worker_pid = worker_pid
        self.seen: dict[int, tuple[str, float]] = {}
        self.totals = {"postgres": 0.0, "worker": 0.0, "other": 0.0}
        self.sample()
        self.totals = {k: 0.0 for k in self.totals}

    def _group(self, proc) -> str:
        if proc.name().startswith("postgres"):  # a backend's title names its database
            return "postgres" if f" {c.DB_NAME} " in " ".join(proc.cmdline()) + " " else "other"
        try:
            if proc.pid == self.worker_pid or self.worker_pid in {p.pid for p in proc.parents()}:
                return "worker"
        except psutil.Error:
            pass
        return "other"

    def sample(self) -> None:
        for proc in psutil.process_iter():
            try:
                times = proc.cpu_times()
                used = times.user + times.system
                group, before = self.seen.get(proc.pid, (None, 0.0))
                if group is None:
                    group = self._group(proc)
                self.totals[group] += used - before
                self.seen[proc.pid] = (group, used)
            except psutil.Error:
                continue


def drain(env: dict, port: int, token: str, processes: int) -> dict:
    tag = f"p{processes}{c.run_id()}"
    events = backlog(tag)
    # What the last worker left queued: wake-ups of events it had already processed (a processed event wakes
    # the accepted events after it on its documents); here they would only be no-ops for the next worker.
    c.flush_redis()
    with psycopg.connect(c.database_url(), autocommit=True) as conn:
        since = conn.execute("SELECT now()").fetchone()[0]
    sent_in = send_batches(port, token, events)
    queued, before = -1, c.redis_queue_length()
    while queued != before:  # the web processes' dispatchers publish a few milliseconds after the commit
        time.sleep(0.5)
        queued, before = c.redis_queue_length(), queued
    lanes_used = sum(1 for n in range(64) if c.redis_queue_length(f"events.{n}"))
    counter = redis.Redis.from_url(c.REDIS_URL)
    counter.delete(COUNT_KEY)
    worker = start_worker(env, processes, f"drain{processes}")
    started = time.monotonic()
    meter = CpuMeter(worker.pid)
    total = len(events)
    processed_at = posted_at = None
    with psycopg.connect(c.database_url(), autocommit=True) as conn:
        while True:
            time.sleep(0.5 if total < 20_000 else 2.0)  # the rates come from the stamps, not from this loop
            meter.sample()
            processed, posted, exceptions = conn.execute(STATUS_SQL, [since]).fetchone()
            now = time.monotonic() - started
            if processed_at is None and processed >= total:
                processed_at = now
            if posted >= total:
                posted_at = now
                break
            if now > DRAIN_TIMEOUT:
                c.say(f"  stopped waiting after {now:.0f} s: {processed} processed, {posted} posted of {total}, "
                      f"{exceptions} exceptions")
                break
        # Rates over the database's own stamps: from the first event processed to the last one processed, and
        # to the last journal posted (the worker's start-up is not in them).
        first, last_processed, last_posted = conn.execute(
            "SELECT extract(epoch FROM min(e.processed_at)), extract(epoch FROM max(e.processed_at)), "
            "extract(epoch FROM max(j.posted_at)) FROM billing_sync_event e "
            "LEFT JOIN ledger_journal j ON j.event_id = e.id WHERE e.event_id LIKE %s", [f"evt_{tag}_%"]).fetchone()
    if processed_at is not None:
        processed_at = float(last_processed - first)
    if posted_at is not None:
        posted_at = float(last_posted - first)
    load = c.load()
    time.sleep(1.5)  # the counters' last timer flush
    counts = {k.decode(): int(v) for k, v in counter.hgetall(COUNT_KEY).items()}
    counter.close()
    meter.sample()
    c.stop(worker)
    elapsed = time.monotonic() - started  # the CPU window: worker ready to the end of the drain
    return {"processes": processes, "events": total, "sent_in": sent_in, "queued": queued, "lanes": lanes_used,
            "processed_s": processed_at, "posted_s": posted_at, "elapsed": elapsed,
            "processed_rate": total / processed_at if processed_at else float("nan"),
            "posted_rate": total / posted_at if posted_at else float("nan"),
            "statements": counts.get("statements", 0) / total, "commits": counts.get("commits", 0) / total,
            "cpu": dict(meter.totals), "load": load}


def main() -> None:
    c.say(f"drain: {N} invoices with their payments ({2 * N} events, {CUSTOMERS} customers), built-in ERP, "
          f"one worker of {', '.join(map(str, SIZES))} processes ({c.machine()})")
    env = c.bench_env()
    token = c.prepare(env)
    server, port = c.start_gunicorn(env)

    customers = [customer_payload(n) for n in range(CUSTOMERS)]
    send_batches(port, token, customers)
    setup = start_worker(env, 2, "setup")
    with psycopg.connect(c.database_url(), autocommit=True) as conn:
        deadline = time.monotonic() + 300
        while conn.execute("SELECT count(*) FROM billing_sync_event WHERE event_id LIKE 'evt_cus_%%' "
                           "AND status = 'processed'").fetchone()[0] < CUSTOMERS:
            if time.monotonic() > deadline:
                raise SystemExit(f"customers not processed:\n{c.tail('setup.log')}")
            time.sleep(0.5)
    c.stop(setup)
    c.say(f"{CUSTOMERS} customers processed (set-up, not timed)")
    # What beat does in production every half minute (`tables-analyze`): the burst is planned on statistics
    # taken of it, not of the quiet days before (this machine's CI server runs no autovacuum at all).
    c.spawn([str(c.BIN / "python"), "-c", ANALYZER], env=env, log_name="analyzer.log")

    results = []
    for processes in SIZES:
        result = drain(env, port, token, processes)
        results.append(result)
        cpu = result["cpu"]
        busy = sum(cpu.values()) or 1.0
        c.say(f"-c {processes}: {result['events']} events sent in {result['sent_in']:.1f} s ({result['queued']} "
              f"messages queued in {result['lanes']} lanes); processed in {result['processed_s'] or float('nan'):.1f} s = "
              f"{result['processed_rate']:.0f} events/s, posted in {result['posted_s'] or float('nan'):.1f} s = "
              f"**{result['posted_rate']:.0f} events/s**; {result['statements']:.1f} SQL statements and "
              f"{result['commits']:.2f} commits per event; CPU {busy / result['elapsed']:.2f} of "
              f"{os.cpu_count()} cores: PostgreSQL {cpu['postgres'] / busy:.0%}, worker {cpu['worker'] / busy:.0%}, "
              f"other {cpu['other'] / busy:.0%}; CPU per event: worker {cpu['worker'] / result['events'] * 1000:.1f} ms, "
              f"PostgreSQL {cpu['postgres'] / result['events'] * 1000:.1f} ms; load average {result['load']:.2f}")
    c.stop(server)

    c.say("")
    c.say("| worker processes | events | processed/s | posted/s | SQL statements / event | commits / event "
          "| CPU cores busy (PostgreSQL / worker / other) | CPU ms per event (worker / PostgreSQL) | load average |")
    c.say("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cpu = r["cpu"]
        c.say(f"| {r['processes']} | {r['events']} | {r['processed_rate']:.0f} | {r['posted_rate']:.0f} | "
              f"{r['statements']:.1f} | {r['commits']:.2f} | {sum(cpu.values()) / r['elapsed']:.2f} "
              f"({cpu['postgres'] / r['elapsed']:.2f} / {cpu['worker'] / r['elapsed']:.2f} / "
              f"{cpu['other'] / r['elapsed']:.2f}) | {cpu['worker'] / r['events'] * 1000:.1f} / "
              f"{cpu['postgres'] / r['events'] * 1000:.1f} | {r['load']:.2f} |")


if __name__ == "__main__":
    main()
