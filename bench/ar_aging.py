"""AR aging over 1,000,000 invoices: p50/p95 of the report as of today and as of earlier dates (goal p95 < 1 s).

A dedicated bench database (migrated, entity US01, an auditor with an API token) is seeded set-based by
`_ar_seed.py`: BENCH_AR_INVOICES invoices of BENCH_AR_CUSTOMERS customers over the two years before today,
each with its posted journal, and the payments, credit notes and write-offs that settled most of them,
each its own posted journal (about 2 million journals and 5 million lines; about 6 % of the invoices open
today), plus one manual journal on the receivable account (the report's difference); the item balances are
rebuilt with migration 0010's statement; then VACUUM ANALYZE.

Measured, BENCH_AR_RUNS times each after BENCH_AR_WARMUP runs:
* the report in this process as the API makes it (`billing_sync.selectors.ar_aging(as_json=True)`: one SQL
  statement that ages, groups per customer and writes the customers' JSON, the tie-out, then the body's
  bytes by `portal.selectors.reports.ar_aging_json`) as of today, as of the last month end and, for
  information, three and twelve months back (its cost grows with what was posted after the date);
* the API end to end (GET /api/v1/reports/ar-aging, gunicorn with production settings, one keep-alive
  connection: the body lists every customer, 20,000 here) as of today and as of the last month end;
* for information, the customers as rows (what the /reports/ pages and the downloads read), unapplied cash
  as of today and the stream of every open invoice (the items download).
The invoice index the report's look-ups use (billing_sync migration 0011) is built by the migrations; a
database kept from before it is migrated on reuse.

Knobs: BENCH_AR_INVOICES (1,000,000), BENCH_AR_CUSTOMERS (20,000), BENCH_AR_RUNS (20), BENCH_AR_WARMUP (2),
BENCH_DB (tieout_bench_ar), BENCH_REDIS_URL (database 9), BENCH_KEEP; BENCH_AR_REUSE=1 measures a database
kept by an earlier run (BENCH_KEEP=1) instead of seeding a new one (the seeding takes several minutes).
"""
from __future__ import annotations

import atexit
import datetime
import json
import os
import sys
import time

import django

# A database and Redis database of their own (before _common reads them).
os.environ.setdefault("BENCH_DB", "tieout_bench_ar")
os.environ.setdefault("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")

import _common as c  # noqa: E402

INVOICES = int(os.environ.get("BENCH_AR_INVOICES", "1000000"))
CUSTOMERS = int(os.environ.get("BENCH_AR_CUSTOMERS", str(max(1, INVOICES // 50))))
RUNS = int(os.environ.get("BENCH_AR_RUNS", "20"))
WARMUP = int(os.environ.get("BENCH_AR_WARMUP", "2"))
REUSE = os.environ.get("BENCH_AR_REUSE", "") not in ("", "0")
GOAL_MS = 1000

# This process measures the selectors itself: production settings on the bench database (created and
# migrated by main(); setting Django up does not connect).
ENV = c.bench_env()
os.environ.update(ENV)
sys.path.insert(0, str(c.BASE_DIR))
django.setup()

import _ar_seed  # noqa: E402

from billing_sync import selectors as billing_selectors  # noqa: E402
from ledger.models import Entity  # noqa: E402
from portal.selectors import reports  # noqa: E402

def timed(fn, runs: int = RUNS, warmup: int = WARMUP) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return {"n": len(times), "p50": c.percentile(times, 50), "p95": c.percentile(times, 95), "max": max(times)}


def row(name: str, result: dict, goal: int | None) -> None:
    verdict = "—" if goal is None else f"p95 < {goal} ms: {'met' if result['p95'] < goal else 'NOT met'}"
    c.say(f"{name:<52} {result['n']:>4} {result['p50']:>8.1f} {result['p95']:>8.1f} {result['max']:>8.1f}  {verdict}")


def header() -> None:
    c.say(f"{'':<52} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  goal")


def month_end_before(day: datetime.date, months: int) -> datetime.date:
    first = day.replace(day=1)
    for _ in range(months - 1):
        first = (first - datetime.timedelta(days=1)).replace(day=1)
    return first - datetime.timedelta(days=1)


def in_process(entity, dates: list[tuple[str, datetime.date, int | None]]) -> None:
    header()
    for label, as_of, goal in dates:
        row(f"ar_aging, {label} ({as_of})", timed(lambda d=as_of: reports.ar_aging_json(
            billing_selectors.ar_aging(entity=entity, as_of=d, as_json=True))), goal)


def main() -> None:
    today = datetime.date.today()
    c.say(f"bench/ar_aging.py: AR aging over {INVOICES:,} invoices of {CUSTOMERS:,} customers ({c.machine()})")
    kept = REUSE and c.psql(f"SELECT 1 FROM pg_database WHERE datname = '{c.DB_NAME}'")
    if kept:
        c.say(f"database {c.DB_NAME} kept by an earlier run (BENCH_AR_REUSE): not seeded again")
        c.manage("migrate", "--noinput", "-v", "0", env=ENV)
        atexit.register(c.drop_database)  # unless BENCH_KEEP says otherwise
        today = c.psql("SELECT max(accounting_date) FROM ledger_journal", db=c.DB_NAME)[0][0]  # the seed's day
    else:
        c.create_database()
        started = time.monotonic()
        c.manage("migrate", "--noinput", "-v", "0", env=ENV)
        c.manage("setup_entity", "US01", "--currency", "USD", env=ENV)
        c.say(f"database {c.DB_NAME} created and migrated in {time.monotonic() - started:.1f} s")
        c.say("seeding (set-based SQL):")
        _ar_seed.seed(c.database_url(), invoices=INVOICES, customers=CUSTOMERS, anchor=today, say=c.say)
    token = c.manage("issue_token", "bench-auditor", "--role", "auditor", env=ENV).strip().splitlines()[-1]
    open_items = c.psql("SELECT count(*) FROM ledger_itembalance WHERE balance <> 0", db=c.DB_NAME)[0][0]

    entity = Entity.objects.get(code="US01")
    report = billing_selectors.ar_aging(entity=entity, as_of=today)
    c.say(f"as of {today}: {len(report['customers']):,} customers owe {report['total']:,} USD over "
          f"{open_items:,} open items (invoices and payments); AR control {report['ar_control']:,}; ties out: "
          f"{report['difference'] == 0} (difference {report['difference']}, the seeded manual journal)")
    c.say("")
    dates = [("today", today, GOAL_MS), ("last month end", month_end_before(today, 1), GOAL_MS),
             ("3 months back", month_end_before(today, 3), None), ("12 months back", month_end_before(today, 12), None)]
    in_process(entity, dates)

    row("ar_aging as rows (the pages, the downloads), today",
        timed(lambda: billing_selectors.ar_aging(entity=entity, as_of=today)), None)
    started = time.perf_counter()
    rows = sum(1 for _ in billing_selectors.ar_aging_invoices(entity=entity, as_of=today))
    items_ms = (time.perf_counter() - started) * 1000
    row("unapplied cash, today", timed(lambda: billing_selectors.unapplied_cash_aging(entity=entity, as_of=today)),
        None)
    c.say(f"{'every open invoice, streamed (the items download)':<52} {rows:,} rows in {items_ms:,.0f} ms")
    c.say("")

    _server, port = c.start_gunicorn(ENV)
    client = c.Client(port, token)

    def api(as_of: datetime.date | None):
        path = "/api/v1/reports/ar-aging?entity=US01" + (f"&as_of={as_of}" if as_of else "")

        def call():
            status, body = client.get(path)
            if status != 200:
                raise SystemExit(f"bench: GET {path} answered {status}: {body[:300]!r}")
            return body
        return call

    size = len(api(None)())
    c.say(f"API, one keep-alive connection (body {size / 1024:,.0f} KiB, {len(json.loads(api(None)())['customers']):,} "
          "customers):")
    header()
    row("GET /api/v1/reports/ar-aging (today)", timed(api(None)), GOAL_MS)
    row(f"GET /api/v1/reports/ar-aging?as_of={dates[1][1]}", timed(api(dates[1][1])), GOAL_MS)
    client.close()
    c.say("")

    c.say(f"load average {c.load():.2f} at the end")


if __name__ == "__main__":
    main()
