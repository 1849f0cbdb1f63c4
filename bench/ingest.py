"""Single-event ingest throughput: POST /api/v1/events, 8 keep-alive clients for ~20 s, against gunicorn.

Side by side in the same run, on the same database: `pgbench` with a one-row INSERT per transaction at
the same 8 clients, i.e. what PostgreSQL alone does on this machine with the same concurrency and a
commit per request. No Celery worker runs during the measurement: the processing task that each
accepted event schedules after commit just queues in Redis (its length is printed), so this measures
receipt (validation, receipt + event + audit rows in one statement, the hand-off to the publisher), not
processing. Also prints the database and Redis round trips of one request, counted in-process.

Knobs (environment): BENCH_SECONDS (20), BENCH_CLIENTS (8), WEB_CONCURRENCY / GUNICORN_THREADS
(gunicorn's own), BENCH_PG_URL, BENCH_REDIS_URL, BENCH_DB.
"""
import os
import re
import subprocess
import threading
import time
from urllib.parse import urlsplit

import _common as c

SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "8"))
WARMUP_SECONDS = 3.0


def hammer(port: int, token: str, seconds: float, tag: str) -> dict:
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []

    def client_loop(index: int):
        client = c.Client(port, token)
        mine, counts, n = [], {}, 0
        try:
            while time.monotonic() < stop_at:
                body = c.invoice_body(f"{tag}{index}", n)
                n += 1
                started = time.perf_counter()
                try:
                    status, _ = client.post("/api/v1/events", body)
                except OSError as exc:
                    errors.append(str(exc))
                    client.close()
                    continue
                mine.append(time.perf_counter() - started)
                counts[status] = counts.get(status, 0) + 1
        finally:
            client.close()
            with lock:
                latencies.extend(mine)
                for status, count in counts.items():
                    statuses[status] = statuses.get(status, 0) + count

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(CLIENTS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    elapsed = time.monotonic() - started
    accepted = statuses.get(202, 0)
    return {"elapsed": elapsed, "accepted": accepted, "rate": accepted / elapsed, "statuses": statuses,
            "errors": len(errors), "p50_ms": c.percentile(latencies, 50) * 1000,
            "p95_ms": c.percentile(latencies, 95) * 1000, "p99_ms": c.percentile(latencies, 99) * 1000}


def run_pgbench(seconds: float) -> float:
    pgbench = c.pgbench_path()
    if pgbench is None:
        c.say("pgbench not found (Debian: apt-get install postgresql-client): skipping the comparison")
        return float("nan")
    c.psql("CREATE TABLE bench_t (id bigserial PRIMARY KEY, a integer NOT NULL, b text NOT NULL)", db=c.DB_NAME)
    script = c.log_path("insert.sql")
    script.write_text("\\set r random(1, 1000000)\nINSERT INTO bench_t (a, b) VALUES (:r, 'x');\n")
    url = urlsplit(c.PG_URL)
    argv = [pgbench, "-n", "-c", str(CLIENTS), "-j", "2", "-T", str(int(seconds)), "-f", str(script),
            "-h", url.hostname, "-p", str(url.port or 5432), "-U", url.username or "postgres", c.DB_NAME]
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = url.password
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 120)
    if result.returncode != 0:
        c.say(f"pgbench failed:\n{result.stdout}\n{result.stderr}")
        return float("nan")
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", result.stdout)
    if not match:
        match = re.search(r"tps = ([\d.]+)", result.stdout)
    return float(match.group(1)) if match else float("nan")


def main() -> None:
    c.say(f"ingest: single-event POST /api/v1/events, {CLIENTS} keep-alive clients, {SECONDS:.0f} s "
          f"({c.machine()})")
    env = c.bench_env()
    token = c.prepare(env)
    server, port = c.start_gunicorn(env)

    hammer(port, token, WARMUP_SECONDS, "warm")  # every gunicorn worker opens its DB and broker connections
    queued_before = c.redis_queue_length()
    result = hammer(port, token, SECONDS, "run")
    queued = c.redis_queue_length() - queued_before
    load_after = c.load()
    throttle_bytes = c.throttle_history_bytes()
    c.stop(server)

    trips = c.helper("ingest", env=dict(env, BENCH_TOKEN=token))

    c.say(f"pgbench: INSERT one row per transaction, -c {CLIENTS} -j 2 -T {SECONDS:.0f} -n on {c.DB_NAME} ...")
    tps = run_pgbench(SECONDS)

    single = trips["single_new"]
    c.say("")
    c.say(f"POST /api/v1/events   {result['rate']:8.0f} events/s accepted (202) over {result['elapsed']:.1f} s, "
          f"{CLIENTS} clients; latency p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms, "
          f"p99 {result['p99_ms']:.1f} ms; statuses {result['statuses']}, connection errors {result['errors']}")
    c.say(f"  processing tasks queued in Redis meanwhile (no worker): {queued}; load average after: "
          f"{load_after:.2f}; DRF throttle history for the one token: {throttle_bytes / 1024:.0f} KiB in Redis, "
          "read and rewritten by every request")
    c.say(f"  per request: {single['db_round_trips']} DB round trips {single['sql']}; "
          f"{single['redis_round_trips']} Redis round trips {single['redis']}")
    replay = trips["single_replay"]
    c.say(f"  a replay (200): {replay['db_round_trips']} DB round trips {replay['sql']}; "
          f"{replay['redis_round_trips']} Redis")
    c.say(f"  server time of one request in-process, one thread, no HTTP: {trips['single_in_process_ms']} ms")
    c.say(f"pgbench 1-row INSERT  {tps:8.0f} transactions/s, {CLIENTS} clients; load average after "
          f"{c.load():.2f}")
    if result["rate"] and tps == tps:
        c.say(f"ratio ingest / pgbench INSERT: {result['rate'] / tps:.3f} (goal >= 0.10; pgbench / API "
              f"{tps / result['rate']:.1f}x)")


if __name__ == "__main__":
    main()
