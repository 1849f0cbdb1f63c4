"""Billing ↔ ledger reconciliation of 1,000,000 invoices with their journals and payments: time and peak memory of
one run, side by side with one SELECT that reads the same rows (goal < 30 s at 1,000,000, constant memory).

A database of its own (`tieout_bench_recon`, created, migrated and dropped at the end), entity BENCH, seeded
set-based by `_recon_seed.py` (invoices with their journals, ~75 % of them with payments, allocations and their
journals, unapplied cash, applications, a few refunds, credit notes, write-offs, voids and amendments, all by the
posting rules, plus 11 deliberate breaks), first BENCH_RECON_SMALL invoices, then grown to BENCH_RECON_INVOICES;
VACUUM ANALYZE after each step, as autovacuum would have done. At each size:

* the SELECTs, with the server's default settings, each the median of three: **scan**, one statement that
  reads every row the run reads (the entity's invoices, payments, refunds, credit notes, write-offs, journals
  and all their lines, the lines joined to their journals) and sums them; and **open amounts**, the invoices
  full-joined to the sums of their receivable lines (the core of the open-amount check, as a plain SELECT);
* a full billing ↔ ledger run (`billing_sync.services.reconciliation_run`, November 2026, the ERP read-back
  empty: the journals are booked, not posted, and the read-back has its own bench) in a process of its own
  (`_recon_run.py`; its peak RSS is read from /proc (VmHWM) every 50 ms): first with no marks (at the full size
  the smaller step's marks are deleted first, so it writes every mark again; its breaks stay open and are found
  again), then BENCH_RECON_REPEATS more runs with nothing changed (they write no mark), median reported;
* the breaks found, against the ones seeded.

Knobs: BENCH_RECON_INVOICES (1,000,000), BENCH_RECON_SMALL (200,000), BENCH_RECON_REPEATS (2), BENCH_DB
(tieout_bench_recon), and the common ones (BENCH_PG_URL, BENCH_KEEP); BENCH_RECON_REUSE=1 measures the database
an earlier run kept (BENCH_KEEP=1) at the size it has, migrated, instead of seeding (seeding 1,000,000 takes
minutes). Each run also reports the CPU seconds of its database session and of its Python process: under other
load, a figure wall time is not. Redis is not flushed: a run opens a
handful of exceptions and nothing else reaches it.
"""
from __future__ import annotations

import atexit
import json
import os
import statistics
import subprocess
import time

os.environ.setdefault("BENCH_DB", "tieout_bench_recon")

import psycopg  # noqa: E402

import _common as c  # noqa: E402
import _recon_seed as seed  # noqa: E402
import _ui_seed  # noqa: E402

INVOICES = int(os.environ.get("BENCH_RECON_INVOICES", "1000000"))
SMALL = int(os.environ.get("BENCH_RECON_SMALL", "200000"))
REPEATS = int(os.environ.get("BENCH_RECON_REPEATS", "2"))
REUSE = os.environ.get("BENCH_RECON_REUSE", "") not in ("", "0")
BOOKED = "('ready', 'posting', 'posted', 'failed')"


def _hwm_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM; unlike wait4's ru_maxrss it is reset by exec)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(env: dict) -> dict:
    """One reconciliation run in its own process: its JSON figures, wall time and peak RSS (MiB)."""
    out_path, err_path = c.log_path("run.out"), c.log_path("run.err")
    peak = 0
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        began = time.monotonic()
        process = subprocess.Popen([str(c.BIN / "python"), "bench/_recon_run.py", seed.ENTITY, seed.DATE_FROM,
                                    seed.DATE_TO], cwd=c.BASE_DIR, env=env, stdout=out, stderr=err)
        while process.poll() is None:
            peak = max(peak, _hwm_kib(process.pid))
            time.sleep(0.05)
        wall = time.monotonic() - began
    stdout, stderr = out_path.read_text(), err_path.read_text()
    if process.returncode != 0:
        raise SystemExit(f"_recon_run.py failed ({process.returncode}):\n{stdout[-2000:]}\n{stderr[-3000:]}")
    figures = json.loads(stdout.strip().splitlines()[-1])
    if figures["status"] != "finished":
        raise SystemExit(f"run {figures['run']} {figures['status']}: {figures['error']}")
    return {**figures, "wall": wall, "rss_mib": peak / 1024, "load": c.load()}


def scan_sql(entity: int) -> str:
    return f"""
        SELECT count(*), sum(amount) FROM (
            SELECT l.debit - l.credit AS amount FROM ledger_journalline l JOIN ledger_journal j ON j.id = l.journal_id
            WHERE j.entity_id = {entity}
            UNION ALL SELECT total FROM billing_sync_invoice WHERE entity_id = {entity}
            UNION ALL SELECT amount FROM billing_sync_payment WHERE entity_id = {entity}
            UNION ALL SELECT r.amount FROM billing_sync_refund r JOIN billing_sync_payment p ON p.id = r.payment_id
                JOIN billing_sync_event e ON e.id = r.event_id WHERE p.entity_id = {entity}
            UNION ALL SELECT n.amount FROM billing_sync_creditnote n JOIN billing_sync_invoice i ON i.id = n.invoice_id
                JOIN billing_sync_event e ON e.id = n.event_id WHERE i.entity_id = {entity}
            UNION ALL SELECT w.amount FROM billing_sync_writeoff w JOIN billing_sync_invoice i ON i.id = w.invoice_id
                JOIN billing_sync_event e ON e.id = w.event_id WHERE i.entity_id = {entity}
        ) rows"""


def open_amounts_sql(entity: int, ar: int) -> str:
    return f"""
        SELECT count(*), count(*) FILTER (WHERE COALESCE(i.open_amount, 0) <> COALESCE(l.balance, 0))
        FROM (SELECT source_system, invoice_id,
                     CASE WHEN status = 'voided' THEN 0
                          ELSE total - applied_total - credited_total - written_off_total + refunded_total END
                         AS open_amount
              FROM billing_sync_invoice WHERE entity_id = {entity}) i
        FULL JOIN (SELECT j.source_system, l.invoice_id, SUM(l.debit - l.credit) AS balance
                   FROM ledger_journalline l JOIN ledger_journal j ON j.id = l.journal_id
                   WHERE j.entity_id = {entity} AND l.account_id = {ar} AND l.invoice_id <> ''
                         AND j.status IN {BOOKED}
                   GROUP BY j.source_system, l.invoice_id) l
            ON l.source_system = i.source_system AND l.invoice_id = i.invoice_id"""


def time_select(sql: str, repeats: int = 3) -> tuple[float, tuple]:
    """Median seconds of `repeats` executions (a fresh connection, the server's default settings)."""
    times, row = [], None
    with psycopg.connect(c.database_url(), autocommit=True) as conn:
        for _ in range(repeats):
            began = time.monotonic()
            row = conn.execute(sql).fetchone()
            times.append(time.monotonic() - began)
    return statistics.median(times), row


def seed_step(lo: int, hi: int, entity: int, accounts: dict[str, int]) -> float:
    began = time.monotonic()
    with psycopg.connect(c.database_url()) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET work_mem = '64MB'")
        if lo == 0:
            conn.execute(seed.CUSTOMERS_SQL.format(entity=entity))
        # Plain indexes are built once after the rows (several times faster than maintained row by row);
        # primary keys and unique constraints stay.
        rebuild = _ui_seed._drop_indexes(conn, seed.TABLES)
        for label, sql in seed.statements(lo, hi, entity, accounts):
            step = time.monotonic()
            conn.execute(sql)
            c.say(f"  {label}: {time.monotonic() - step:.1f} s")
        if lo == 0:
            conn.execute(seed.faults(entity, accounts))
        conn.execute(seed.SEQUENCES_SQL)
        step = time.monotonic()
        conn.execute("SET maintenance_work_mem = '256MB'")
        for definition in rebuild:
            conn.execute(definition)
        c.say(f"  {len(rebuild)} indexes rebuilt: {time.monotonic() - step:.1f} s")
        conn.commit()
    with psycopg.connect(c.database_url(), autocommit=True) as conn:
        step = time.monotonic()
        for table in seed.TABLES:
            conn.execute(f"VACUUM ANALYZE {table}")
        c.say(f"  vacuum analyze: {time.monotonic() - step:.1f} s")
    return time.monotonic() - began


def main() -> None:
    c.say(f"reconciliation: billing ↔ ledger over {INVOICES:,} invoices ({c.machine()})")
    env = c.bench_env()
    kept = REUSE and c.psql(f"SELECT 1 FROM pg_database WHERE datname = '{c.DB_NAME}'")
    began = time.monotonic()
    if kept:
        c.say(f"database {c.DB_NAME} kept by an earlier run (BENCH_RECON_REUSE): not seeded again")
        c.manage("migrate", "--noinput", "-v", "0", env=env)
        atexit.register(c.drop_database)  # unless BENCH_KEEP says otherwise
    else:
        c.create_database()
        c.manage("migrate", "--noinput", "-v", "0", env=env)
        c.manage("setup_entity", seed.ENTITY, "--currency", "USD", env=env)
        c.say(f"database {c.DB_NAME} created and migrated in {time.monotonic() - began:.1f} s")
    with psycopg.connect(c.database_url(), autocommit=True) as conn:
        entity = conn.execute("SELECT id FROM ledger_entity WHERE code = %s", [seed.ENTITY]).fetchone()[0]
        accounts = dict(conn.execute("SELECT role, account_id FROM ledger_accountmapping WHERE entity_id = %s",
                                     [entity]).fetchall())
        seeded = conn.execute("SELECT count(*) FROM billing_sync_invoice WHERE entity_id = %s", [entity]).fetchone()[0]
    results, done = [], 0
    sizes = [seeded] if kept else sorted({min(SMALL, INVOICES), INVOICES})
    for size in sizes:
        if kept:
            seconds = 0.0
        else:
            c.say(f"seeding invoices {done + 1:,}..{size:,}")
            seconds = seed_step(done, size, entity, accounts)
        done = size
        with psycopg.connect(c.database_url(), autocommit=True) as conn:
            counts = conn.execute(seed.COUNTS_SQL.format(entity=entity)).fetchone()
            conn.execute("DELETE FROM billing_sync_reconciliationmark WHERE entity_id = %s", [entity])
            conn.execute("VACUUM ANALYZE billing_sync_reconciliationmark")  # as autovacuum would have
        c.say(f"seeded {size:,} invoices in {seconds:.0f} s: {counts[0]:,} invoices, {counts[1]:,} payments, "
              f"{counts[2]:,} journals, {counts[3]:,} journal lines, {counts[4]:,} refunds, credit notes and "
              f"write-offs (load {c.load():.2f})")
        scan, scan_row = time_select(scan_sql(entity))
        opened, open_row = time_select(open_amounts_sql(entity, accounts["receivable"]))
        c.say(f"  SELECT scan of the same rows: {scan:.2f} s ({scan_row[0]:,} rows); SELECT open amounts: "
              f"{opened:.2f} s ({open_row[0]:,} invoices, {open_row[1]} differ)")
        first = run_child(env)
        c.say(f"  first run {first['run']}: {first['seconds']:.1f} s (process {first['wall']:.1f} s), CPU: database "
              f"{first['server_cpu']:.1f} s, Python {first['process_cpu']:.1f} s; peak RSS "
              f"{first['rss_mib']:.0f} MiB, matched {first['matched']:,}, breaks {first['breaks']}, marks written "
              f"{first['marks_written']:,}, load {first['load']:.2f}; steps {first['steps']}")
        again = []
        for _ in range(REPEATS):
            run = run_child(env)
            again.append(run)
            c.say(f"  unchanged run {run['run']}: {run['seconds']:.1f} s, CPU: database {run['server_cpu']:.1f} s, "
                  f"Python {run['process_cpu']:.1f} s; peak RSS {run['rss_mib']:.0f} MiB, "
                  f"marks written {run['marks_written']:,}, load {run['load']:.2f}; steps {run['steps']}")
        results.append({"size": size, "first": first, "again": again, "scan": scan, "open": opened,
                        "counts": counts})
    c.say("")
    c.say(f"{c.machine()}")
    for r in results:
        first, again = r["first"], r["again"]
        unchanged = statistics.median(run["seconds"] for run in again) if again else float("nan")
        rss = max([first["rss_mib"]] + [run["rss_mib"] for run in again])
        c.say(f"{r['size']:>9,} invoices ({r['counts'][1]:,} payments, {r['counts'][3]:,} journal lines): "
              f"first run {first['seconds']:.1f} s, unchanged {unchanged:.1f} s "
              f"({', '.join(format(run['seconds'], '.1f') for run in again)}), peak RSS {rss:.0f} MiB; "
              f"SELECT scan {r['scan']:.2f} s (run / scan {first['seconds'] / r['scan']:.1f}x), "
              f"SELECT open amounts {r['open']:.2f} s")
        found = first["breaks"]
        c.say(f"  breaks found {found} (seeded {seed.BREAKS}): {'as seeded' if found == seed.BREAKS else 'DIFFERENT'}")
    big = results[-1]
    c.say(f"goal < 30 s at {big['size']:,}: {'met' if big['first']['seconds'] < 30 else 'NOT met'}; peak RSS "
          f"{results[0]['first']['rss_mib']:.0f} MiB at {results[0]['size']:,} vs {big['first']['rss_mib']:.0f} MiB "
          f"at {big['size']:,}")


if __name__ == "__main__":
    main()
