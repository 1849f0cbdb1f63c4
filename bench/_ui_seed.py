"""Seeding for bench/ui.py: a million events and a million exceptions in a few set-based statements.

Everything is `INSERT ... SELECT ... FROM generate_series(...)` on the bench database (never the test or
the demo one): events spread evenly over 90 days and inserted in time order, as they arrive (so every
table is appended in time order, like production's), with a realistic mix of types, entities and
statuses; one exception per event (so the one-open-per-event index holds) with a mix of codes,
processes, statuses (8 % unresolved, spread evenly over the 90 days: a pessimistic queue, whose
unresolved rows sit on almost every page of the table), owners and retry counts, created a few minutes after its
event; for the events of the last 14 days that posted, a balanced two-line journal posted 1-30 s after
the event arrived, one ERP attempt each (some journals took two, the first one failed); pending journals
with their approval for the events waiting for one. Rows are consistent by construction, so the
statements run with `session_replication_role = replica` (foreign-key and invariant triggers off, as
for a restore); the bench connects as the superuser the bench database belongs to. Then VACUUM ANALYZE,
as autovacuum would have done on a table that size.
"""
from __future__ import annotations

import time

import psycopg

SOURCE = "bench-billing"
TYPES = ["invoice.issued", "invoice.issued", "invoice.issued", "payment.received", "payment.received",
         "payment.applied", "customer.upserted", "credit_note.issued", "payment.refunded", "invoice.amended"]
ENTITIES = ["US01", "US01", "US01", "GB01", "DE01"]
CODES = [("over_application", "payment"), ("unknown_customer", "invoice"), ("unknown_invoice", "payment"),
         ("posting_failed", "posting"), ("awaiting_dependency", "payment"), ("period_closed", "posting"),
         ("no_account_mapping", "invoice"), ("currency_mismatch", "payment"), ("over_refund", "payment"),
         ("document_conflict", "invoice")]


def _array(values) -> str:
    return "ARRAY[" + ", ".join(f"'{v}'" for v in values) + "]"


BULK_TABLES = ("billing_sync_event", "exceptions_queue_exceptionrecord")


def _drop_indexes(conn, tables) -> list[str]:
    """Drop the plain indexes of `tables` (not primary keys or constraints); returns how to rebuild them.

    Building an index once over a million rows is several times faster than maintaining it row by row.
    """
    rows = conn.execute("""
        SELECT i.indexname, i.indexdef FROM pg_indexes i
        WHERE i.schemaname = 'public' AND i.tablename = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conname = i.indexname)
    """, [list(tables)]).fetchall()
    for name, _definition in rows:
        conn.execute(f'DROP INDEX "{name}"')
    return [definition for _name, definition in rows]


def seed(url: str, *, events: int, owner_ids: list[int], say=print) -> dict:
    started = time.monotonic()
    codes = _array(c for c, _p in CODES)
    processes = _array(p for _c, p in CODES)
    owners = "ARRAY[" + ", ".join(str(i) for i in owner_ids) + "]::bigint[]"
    with psycopg.connect(url, autocommit=False) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '256MB'")
        rebuild = _drop_indexes(conn, BULK_TABLES)
        conn.execute(f"""
            INSERT INTO billing_sync_event (id, source_system, event_id, type, entity_code, occurred_at, payload,
                payload_hash, idempotency_key, status, correlation_id, received_at, receipt_id, sent_by_id,
                response_body, processed_at, attempts)
            SELECT md5('bench-event-' || g)::uuid, '{SOURCE}', 'evt_seed_' || g, ({_array(TYPES)})[1 + g % 10],
                   ({_array(ENTITIES)})[1 + (g / 7) % 5], ts, '{{"seed": true}}'::jsonb, md5(g::text), NULL,
                   CASE WHEN g % 100 < 85 THEN 'posted' WHEN g % 100 < 90 THEN 'processed'
                        WHEN g % 100 < 95 THEN 'exception' WHEN g % 100 < 97 THEN 'rejected'
                        WHEN g % 100 < 99 THEN 'pending_approval' ELSE 'accepted' END,
                   '', ts, NULL, NULL, '{{}}', ts, 1
            FROM (SELECT g, now() - interval '90 days' * ({events} - g)::float8 / {events}
                            - interval '1 second' * random() AS ts
                  FROM generate_series(1, {events}) g) s
        """)
        say(f"  {events:,} events in {time.monotonic() - started:.0f} s")
        t = time.monotonic()
        conn.execute(f"""
            INSERT INTO exceptions_queue_exceptionrecord (id, code, message, status, process, entity_code, event_id,
                journal_id, dependency_key, amount, owner_id, created_at, updated_at, resolved_at, resolved_by,
                resolution, retry_count, source_ref, escalation_level, escalated_at, escalated_by)
            SELECT md5('bench-exception-' || g)::uuid, ({codes})[1 + (g / 3) % 10], 'Seeded exception ' || g,
                   st, ({processes})[1 + (g / 3) % 10], entity_code, id, NULL, NULL, (g % 100000) / 100.0,
                   CASE WHEN st = 'assigned' THEN ({owners})[1 + g % {len(owner_ids)}] END,
                   created, created, CASE WHEN st = 'resolved' THEN created + interval '2 hours' END,
                   CASE WHEN st = 'resolved' THEN 'bench' ELSE '' END,
                   CASE WHEN st = 'resolved' THEN 'seeded and resolved' ELSE '' END,
                   g % 4, 'inv_seed_' || g, 0, NULL, ''
            FROM (SELECT e.id, e.entity_code, substr(e.event_id, 10)::int AS g,
                         e.received_at + interval '3 minutes' AS created,
                         CASE WHEN substr(e.event_id, 10)::int % 100 < 5 THEN 'open'
                              WHEN substr(e.event_id, 10)::int % 100 < 8 THEN 'assigned' ELSE 'resolved' END AS st
                  FROM billing_sync_event e WHERE e.source_system = '{SOURCE}' ORDER BY e.received_at) s
        """)
        say(f"  {events:,} exceptions in {time.monotonic() - t:.0f} s")
        t = time.monotonic()
        for definition in rebuild:
            conn.execute(definition)
        say(f"  {len(rebuild)} indexes of the two tables rebuilt in {time.monotonic() - t:.0f} s")
        t = time.monotonic()
        # Journals for the last 14 days' posted (and pending) events, with their lines and attempts.
        conn.execute("""
            CREATE TEMP TABLE bench_accounts AS
            SELECT en.code, en.id AS entity_id,
                   max(m.account_id) FILTER (WHERE m.role = 'receivable') AS receivable,
                   max(m.account_id) FILTER (WHERE m.role = 'revenue') AS revenue
            FROM ledger_entity en JOIN ledger_accountmapping m ON m.entity_id = en.id GROUP BY en.code, en.id
        """)
        conn.execute(f"""
            INSERT INTO ledger_journal (id, entity_id, status, accounting_date, event_id, reverses_id, kind,
                source_system, document_type, document_id, document_version, description, erp_document_ref,
                erp_batch_id, posted_at, correlation_id, created_at, created_by, posting_attempts,
                posting_claimed_until, deliveries_lost, last_error)
            SELECT md5('bench-journal-' || e.event_id)::uuid, a.entity_id, e.status, e.received_at::date, e.id, NULL,
                   'invoice', '{SOURCE}', 'invoice', 'inv_' || e.event_id, 1, 'seeded',
                   CASE WHEN e.status = 'posted' THEN 'BENCH-' || e.event_id END, NULL,
                   CASE WHEN e.status = 'posted'
                        THEN e.received_at + interval '1 second' * (1 + 29 * random()) END,
                   '', e.received_at, 'bench',
                   CASE WHEN e.status <> 'posted' THEN 0 WHEN hashtext(e.event_id) % 20 = 0 THEN 2 ELSE 1 END,
                   NULL, 0, ''
            FROM billing_sync_event e JOIN bench_accounts a ON a.code = e.entity_code
            WHERE e.received_at >= now() - interval '14 days' AND e.status IN ('posted', 'pending_approval')
              AND e.source_system = '{SOURCE}'
            ORDER BY e.received_at
        """)
        conn.execute("""
            INSERT INTO ledger_journalline (journal_id, line_no, account_id, debit, credit, customer_id, invoice_id,
                payment_id, jurisdiction, memo)
            SELECT j.id, n, CASE WHEN n = 1 THEN a.receivable ELSE a.revenue END,
                   CASE WHEN n = 1 THEN 100 ELSE 0 END, CASE WHEN n = 2 THEN 100 ELSE 0 END,
                   'cus_seed', j.document_id, '', '', ''
            FROM ledger_journal j JOIN bench_accounts a ON a.entity_id = j.entity_id, generate_series(1, 2) n
            WHERE j.created_by = 'bench'
        """)
        conn.execute("""
            INSERT INTO ledger_postingattempt (journal_id, started_at, finished_at, connector, outcome,
                erp_document_ref, message)
            SELECT * FROM (
                SELECT j.id, j.posted_at - interval '1 second' AS started, j.posted_at, 'builtin', 'posted',
                       j.erp_document_ref, ''
                FROM ledger_journal j WHERE j.created_by = 'bench' AND j.status = 'posted'
                UNION ALL
                SELECT j.id, j.posted_at - interval '1 minute', j.posted_at - interval '50 seconds', 'builtin',
                       'transient', '', 'ERP busy (seeded)'
                FROM ledger_journal j WHERE j.created_by = 'bench' AND j.status = 'posted' AND j.posting_attempts = 2
            ) a ORDER BY started
        """)
        conn.execute("""
            INSERT INTO exceptions_queue_approval (id, entity_id, event_id, journal_id, subject, kind, document_id,
                amount, currency, requested_by_id, requested_by_label, required_approvals, reason, status, created_at,
                decided_at)
            SELECT md5('bench-approval-' || j.id)::uuid, j.entity_id, j.event_id, j.id, '', 'credit_note',
                   j.document_id, 1500, en.currency, NULL, 'bench', 1, '', 'pending', j.created_at, NULL
            FROM ledger_journal j JOIN ledger_entity en ON en.id = j.entity_id
            WHERE j.created_by = 'bench' AND j.status = 'pending_approval'
        """)
        journals = conn.execute("SELECT count(*) FROM ledger_journal WHERE created_by = 'bench'").fetchone()[0]
        say(f"  {journals:,} journals (two lines, one or two ERP attempts each; approvals for the pending) "
            f"in {time.monotonic() - t:.0f} s")
        conn.execute("SET session_replication_role = DEFAULT")
        conn.commit()
    t = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    say(f"  VACUUM ANALYZE in {time.monotonic() - t:.0f} s; seeding took {time.monotonic() - started:.0f} s")
    with psycopg.connect(url, autocommit=True) as conn:
        open_id = conn.execute(
            "SELECT id FROM exceptions_queue_exceptionrecord WHERE status = 'open' AND entity_code = 'US01'"
            " ORDER BY created_at DESC LIMIT 1").fetchone()[0]
        unresolved = conn.execute(
            "SELECT count(*) FROM exceptions_queue_exceptionrecord WHERE status <> 'resolved'").fetchone()[0]
    return {"journals": journals, "open_exception_id": str(open_id), "unresolved": unresolved}
