"""Seeding for bench/ar_aging.py: a million invoices with their journals in a few set-based statements.

Everything is `INSERT ... SELECT ... FROM generate_series(...)` on the bench database: BENCH_AR_CUSTOMERS
customers, invoices issued evenly over the two years before the anchor date (30 days' terms), each with
its posted invoice journal (receivable, revenue, tax); then what happened to them, each posted on its own
date if that date is not after the anchor: 85 % paid in full 0-60 days after issue (so about half of them
late), 7 % paid in two halves a month apart, 3 % overpaid (the extra 25.00 stays as unapplied cash),
2 % credited 10 % ten days after issue and the rest paid, 1.5 % written off after 150 days and 1.5 % never
paid. About 6 % of the invoices are open at the anchor, most of them the last two months' (the usual
shape of a receivables book). One manual journal hits the receivable account without an invoice id, so
the report has a difference to show.

Rows are consistent by construction (every journal balances), so the statements run with
`session_replication_role = replica` (triggers off, as for a restore), with the big tables' plain
indexes dropped and built again after the rows; the item balances (`ledger.models.ItemBalance`) are
then rebuilt with the migration's own statement, as the migration did for the journals it found.
Then VACUUM ANALYZE, as autovacuum would have done.
"""
from __future__ import annotations

import datetime
import importlib
import time

import psycopg

SOURCE = "bench-billing"
BULK_TABLES = ("ledger_journal", "ledger_journalline", "billing_sync_invoice", "billing_sync_payment",
               "billing_sync_customer")
REBUILD = importlib.import_module("ledger.migrations.0010_item_balances").REBUILD


def _drop_indexes(conn, tables) -> list[str]:
    """Drop the plain indexes of `tables` (not primary keys or constraints); returns how to rebuild them."""
    rows = conn.execute("""
        SELECT i.indexname, i.indexdef FROM pg_indexes i
        WHERE i.schemaname = 'public' AND i.tablename = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conname = i.indexname)
    """, [list(tables)]).fetchall()
    for name, _definition in rows:
        conn.execute(f'DROP INDEX "{name}"')
    return [definition for _name, definition in rows]


def seed(url: str, *, invoices: int, customers: int, anchor: datetime.date, say=print) -> dict:
    started = time.monotonic()
    with psycopg.connect(url, autocommit=False) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET work_mem = '128MB'")
        entity_id = conn.execute("SELECT id FROM ledger_entity WHERE code = 'US01'").fetchone()[0]
        accounts = dict(conn.execute("SELECT code, id FROM ledger_account WHERE entity_id = %s", [entity_id]))
        ar, clearing, tax, revenue, returns, bad_debt, unapplied = (
            accounts[code] for code in ("1200", "1010", "2200", "4000", "4900", "6200", "2300"))
        rebuild = _drop_indexes(conn, BULK_TABLES)
        params = {"n": invoices, "c": customers, "anchor": anchor, "span": 730, "e": entity_id, "src": SOURCE}
        conn.execute("""
            INSERT INTO billing_sync_customer (source_system, customer_id, entity_code, name, email, country, version)
            SELECT %(src)s, 'cus_' || c, 'US01', 'Customer ' || c, '', 'US', 1 FROM generate_series(1, %(c)s) c
        """, params)
        # One row per invoice: its customer, dates, amounts and fate (k = g % 200 picks the fate).
        conn.execute("""
            CREATE TEMP TABLE inv ON COMMIT DROP AS
            SELECT g, 'inv_' || g AS invoice_id, 'cus_' || (1 + g %% %(c)s) AS customer_id, g %% 200 AS k,
                   (%(anchor)s::date - %(span)s + (g::bigint * %(span)s / %(n)s)::int) AS issue_date,
                   (100 + (g %% 90) * 10)::numeric AS subtotal, round((100 + (g %% 90) * 10) * 0.0725, 2) AS tax,
                   (g * 7) %% 61 AS pay_after
            FROM generate_series(1, %(n)s) g
        """, params)
        # What happened to each invoice: payments, credit notes, write-offs (one journal each).
        conn.execute("""
            CREATE TEMP TABLE mv ON COMMIT DROP AS
            SELECT * FROM (
                SELECT g, 'payment' AS kind, 'pay_' || g AS doc, issue_date + pay_after AS on_date,
                       CASE WHEN k BETWEEN 190 AND 193 THEN subtotal + tax - round((subtotal + tax) / 10, 2)
                            WHEN k BETWEEN 170 AND 183 THEN round((subtotal + tax) / 2, 2)
                            ELSE subtotal + tax END AS amount,
                       CASE WHEN k BETWEEN 184 AND 189 THEN 25 ELSE 0 END AS extra
                FROM inv WHERE k < 194
                UNION ALL
                SELECT g, 'payment', 'pay_' || g || '_2', issue_date + pay_after + 30,
                       subtotal + tax - round((subtotal + tax) / 2, 2), 0
                FROM inv WHERE k BETWEEN 170 AND 183
                UNION ALL
                SELECT g, 'credit_note', 'cn_' || g, issue_date + 10, round((subtotal + tax) / 10, 2), 0
                FROM inv WHERE k BETWEEN 190 AND 193
                UNION ALL
                SELECT g, 'write_off', 'wo_' || g, issue_date + 150, subtotal + tax, 0
                FROM inv WHERE k BETWEEN 194 AND 196
            ) m WHERE on_date <= %(anchor)s::date
        """, params)
        say(f"  plan: {invoices:,} invoices of {customers:,} customers, "
            f"{conn.execute('SELECT count(*) FROM mv').fetchone()[0]:,} payments, credit notes and write-offs")
        t = time.monotonic()
        conn.execute("""
            INSERT INTO billing_sync_invoice (source_system, invoice_id, number, currency, issue_date, due_date,
                subtotal, tax_total, total, version, status, applied_total, credited_total, written_off_total,
                refunded_total, created_at, current_journal_id, customer_id, entity_id)
            SELECT %(src)s, i.invoice_id, 'INV-' || i.g, 'USD', i.issue_date, i.issue_date + 30, i.subtotal, i.tax,
                   i.subtotal + i.tax, 1, 'open', coalesce(t.paid, 0), coalesce(t.credited, 0),
                   coalesce(t.written_off, 0), 0, i.issue_date::timestamptz, md5('bench-ji-' || i.g)::uuid, cu.id, %(e)s
            FROM inv i JOIN billing_sync_customer cu ON cu.source_system = %(src)s AND cu.customer_id = i.customer_id
            LEFT JOIN (SELECT g, sum(amount) FILTER (WHERE kind = 'payment') AS paid,
                              sum(amount) FILTER (WHERE kind = 'credit_note') AS credited,
                              sum(amount) FILTER (WHERE kind = 'write_off') AS written_off
                       FROM mv GROUP BY g) t ON t.g = i.g
            ORDER BY i.g
        """, params)
        conn.execute("""
            INSERT INTO billing_sync_payment (source_system, payment_id, entity_id, customer_id, currency, amount, fee,
                received_at, method, allocated_total, refunded_total, refunded_unapplied_total)
            SELECT %(src)s, m.doc, %(e)s, cu.id, 'USD', m.amount + m.extra, 0, m.on_date::timestamptz + interval '12 hours',
                   'card', m.amount, 0, 0
            FROM mv m JOIN inv i ON i.g = m.g
            JOIN billing_sync_customer cu ON cu.source_system = %(src)s AND cu.customer_id = i.customer_id
            WHERE m.kind = 'payment' ORDER BY m.on_date, m.g
        """, params)
        say(f"  billing documents in {time.monotonic() - t:.0f} s")
        t = time.monotonic()
        journal_columns = """(id, entity_id, status, accounting_date, event_id, reverses_id, kind, source_system,
            document_type, document_id, document_version, description, erp_document_ref, erp_batch_id, posted_at,
            correlation_id, created_at, created_by, posting_attempts, posting_claimed_until, deliveries_lost,
            last_error)"""
        # Journals in time order (as they arrive), invoices and what followed them interleaved by date.
        conn.execute(f"""
            INSERT INTO ledger_journal {journal_columns}
            SELECT id, %(e)s, 'posted', on_date, NULL, NULL, kind, %(src)s, kind, doc, version, kind || ' ' || doc,
                   'JE-B-' || row_number() OVER (ORDER BY on_date, id), NULL, on_date::timestamptz + interval '13 hours',
                   '', on_date::timestamptz + interval '12 hours', 'bench', 1, NULL, 0, ''
            FROM (SELECT md5('bench-ji-' || g)::uuid AS id, issue_date AS on_date, 'invoice' AS kind,
                         invoice_id AS doc, 1 AS version FROM inv
                  UNION ALL
                  SELECT md5('bench-jm-' || doc)::uuid, on_date, kind, doc, NULL FROM mv) j
            ORDER BY on_date, id
        """, params)
        say(f"  {conn.execute('SELECT count(*) FROM ledger_journal').fetchone()[0]:,} journals "
            f"in {time.monotonic() - t:.0f} s")
        t = time.monotonic()
        line_columns = "(journal_id, line_no, account_id, debit, credit, customer_id, invoice_id, payment_id, " \
                       "jurisdiction, memo)"
        conn.execute(f"""
            INSERT INTO ledger_journalline {line_columns}
            SELECT journal_id, line_no, account_id, debit, credit, customer_id, invoice_id, payment_id, jurisdiction,
                   memo
            FROM (
                SELECT md5('bench-ji-' || g)::uuid AS journal_id, n AS line_no,
                       CASE n WHEN 1 THEN {ar} WHEN 2 THEN {revenue} ELSE {tax} END AS account_id,
                       CASE n WHEN 1 THEN subtotal + tax ELSE 0 END AS debit,
                       CASE n WHEN 2 THEN subtotal WHEN 3 THEN tax ELSE 0 END AS credit,
                       customer_id, invoice_id, '' AS payment_id, CASE n WHEN 3 THEN 'US-CA' ELSE '' END AS jurisdiction,
                       '' AS memo, issue_date AS on_date
                FROM inv, generate_series(1, 3) n
                UNION ALL
                SELECT md5('bench-jm-' || m.doc)::uuid, n, CASE n WHEN 1 THEN {clearing} WHEN 2 THEN {ar} ELSE {unapplied} END,
                       CASE n WHEN 1 THEN m.amount + m.extra ELSE 0 END,
                       CASE n WHEN 2 THEN m.amount WHEN 3 THEN m.extra ELSE 0 END,
                       i.customer_id, CASE n WHEN 2 THEN i.invoice_id ELSE '' END, m.doc, '', '', m.on_date
                FROM mv m JOIN inv i ON i.g = m.g, generate_series(1, 3) n
                WHERE m.kind = 'payment' AND (n < 3 OR m.extra > 0)
                UNION ALL
                SELECT md5('bench-jm-' || m.doc)::uuid, n,
                       CASE WHEN n = 2 THEN {ar} WHEN m.kind = 'credit_note' THEN {returns} ELSE {bad_debt} END,
                       CASE n WHEN 1 THEN m.amount ELSE 0 END, CASE n WHEN 2 THEN m.amount ELSE 0 END,
                       i.customer_id, i.invoice_id, '', '', '', m.on_date
                FROM mv m JOIN inv i ON i.g = m.g, generate_series(1, 2) n
                WHERE m.kind IN ('credit_note', 'write_off')
            ) l ORDER BY on_date, journal_id, line_no
        """)
        # A manual journal straight on the receivable account, no invoice id: the report's difference.
        conn.execute(f"""
            INSERT INTO ledger_journal {journal_columns}
            VALUES (md5('bench-manual')::uuid, %(e)s, 'posted', %(anchor)s::date - 3, NULL, NULL, 'manual', '', '',
                    '', NULL, 'Manual adjustment on AR (bench)', 'JE-B-MANUAL', NULL, now(), '', now(), 'bench', 1,
                    NULL, 0, '')
        """, params)
        conn.execute(f"""
            INSERT INTO ledger_journalline {line_columns} VALUES
                (md5('bench-manual')::uuid, 1, {ar}, 123.45, 0, '', '', '', '', 'no invoice id'),
                (md5('bench-manual')::uuid, 2, {revenue}, 0, 123.45, '', '', '', '', '')
        """)
        say(f"  {conn.execute('SELECT count(*) FROM ledger_journalline').fetchone()[0]:,} journal lines "
            f"in {time.monotonic() - t:.0f} s")
        t = time.monotonic()
        for definition in rebuild:
            conn.execute(definition)
        say(f"  {len(rebuild)} indexes rebuilt in {time.monotonic() - t:.0f} s")
        t = time.monotonic()
        conn.execute(REBUILD)
        items = conn.execute("SELECT count(*), count(*) FILTER (WHERE balance <> 0) FROM ledger_itembalance"
                             ).fetchone()
        say(f"  item balances rebuilt ({items[0]:,} items, {items[1]:,} open) in {time.monotonic() - t:.0f} s")
        conn.execute("SET session_replication_role = DEFAULT")
        conn.commit()
    t = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    say(f"  VACUUM ANALYZE in {time.monotonic() - t:.0f} s; seeding took {time.monotonic() - started:.0f} s")
    return {"items": items[0], "open_items": items[1]}
