"""Billing ↔ ledger, set-based: a handful of INSERT ... SELECT statements over the whole range, whatever its
size (no row comes to Python), comparing each canonical document with the journals its posting rule gives
(`missing_journal`, `journal_amount_mismatch`), each invoice's open amount with its receivable balance
(`ledger_open_amount_mismatch`) and the control accounts with billing's totals (`ar_control_mismatch`,
`unapplied_cash_mismatch`) over the journals Tieout has booked (`context.BOOKED`), accounts by posting-rule role;
ARCHITECTURE.md ("billing_sync.reconciliation") says exactly what is compared and which documents a run covers."""
from django.db import connection

from billing_sync.reconciliation.context import BOOKED, Context

MONEY = "round({}, %(scale)s)::text"


def _m(expr: str) -> str:
    return MONEY.format(expr)


def _doc_filters(ctx: Context) -> tuple[dict, dict]:
    """Per document type, the SQL condition that selects the run's documents, and its parameters."""
    doc = ctx.plan.doc
    if doc is None:
        return {"invoice": "i.issue_date BETWEEN %(from)s AND %(to)s",
                "payment": "(p.received_at AT TIME ZONE 'UTC')::date BETWEEN %(from)s AND %(to)s",
                "credit_note": "(e.occurred_at AT TIME ZONE 'UTC')::date BETWEEN %(from)s AND %(to)s",
                "write_off": "(e.occurred_at AT TIME ZONE 'UTC')::date BETWEEN %(from)s AND %(to)s",
                "refund": "(e.occurred_at AT TIME ZONE 'UTC')::date BETWEEN %(from)s AND %(to)s"}, {}
    kind, source_system, document_id = doc
    fields = {"invoice": "i.invoice_id", "payment": "p.payment_id", "credit_note": "c.credit_note_id",
              "write_off": "w.write_off_id", "refund": "r.refund_id"}
    aliases = {"invoice": "i", "payment": "p", "credit_note": "c", "write_off": "w", "refund": "r"}
    filters = {name: "FALSE" for name in fields}
    filters[kind] = f"{aliases[kind]}.source_system = %(doc_ss)s AND {fields[kind]} = %(doc_id)s"
    return filters, {"doc_ss": source_system, "doc_id": document_id}


DOCS_SQL = """
INSERT INTO recon_docs (subject, doc_type, source_system, doc_id, kind, version, expected, account)
SELECT 'invoice:' || i.source_system || ':' || i.invoice_id, 'invoice', i.source_system, i.invoice_id, 'invoice',
       i.version, i.total, %(ar_code)s
FROM billing_sync_invoice i
WHERE i.entity_id = %(entity)s AND i.status = 'open' AND i.total <> 0 AND {invoice}
UNION ALL
SELECT 'payment:' || p.source_system || ':' || p.payment_id, 'payment', p.source_system, p.payment_id, 'payment',
       NULL, p.amount, %(clearing_code)s
FROM billing_sync_payment p
WHERE p.entity_id = %(entity)s AND {payment}
UNION ALL
SELECT 'credit_note:' || c.source_system || ':' || c.credit_note_id, 'credit_note', c.source_system,
       c.credit_note_id, 'credit_note', NULL, c.amount + c.tax_amount, %(ar_code)s
FROM billing_sync_creditnote c JOIN billing_sync_invoice i ON i.id = c.invoice_id
JOIN billing_sync_event e ON e.id = c.event_id
WHERE i.entity_id = %(entity)s AND c.status = 'approved' AND {credit_note}
UNION ALL
SELECT 'write_off:' || w.source_system || ':' || w.write_off_id, 'write_off', w.source_system, w.write_off_id,
       'write_off', NULL, w.amount, %(ar_code)s
FROM billing_sync_writeoff w JOIN billing_sync_invoice i ON i.id = w.invoice_id
JOIN billing_sync_event e ON e.id = w.event_id
WHERE i.entity_id = %(entity)s AND w.status = 'approved' AND {write_off}
UNION ALL
SELECT 'refund:' || r.source_system || ':' || r.refund_id, 'refund', r.source_system, r.refund_id, 'refund', NULL,
       r.amount, %(clearing_code)s
FROM billing_sync_refund r JOIN billing_sync_payment p ON p.id = r.payment_id
JOIN billing_sync_event e ON e.id = r.event_id
WHERE p.entity_id = %(entity)s AND {refund}
"""

# The measure of each document's journals that its posting rule fixes (see the module docstring).
JOURNALS_SQL = f"""
INSERT INTO recon_found (code, account, period, journal_id, document, expected, actual, amount, source_ref)
WITH agg AS (
    SELECT d.subject, MIN(j.id::text)::uuid AS journal_id, MIN(j.accounting_date) AS accounting_date,
           SUM(CASE d.kind
               WHEN 'invoice' THEN CASE WHEN l.account_id = %(ar)s THEN l.debit - l.credit ELSE 0 END
               WHEN 'payment' THEN CASE WHEN l.account_id IN (%(clearing)s, %(fees)s) THEN l.debit ELSE 0 END
               WHEN 'refund' THEN CASE WHEN l.account_id = %(clearing)s THEN l.credit - l.debit ELSE 0 END
               ELSE CASE WHEN l.account_id = %(ar)s THEN l.credit - l.debit ELSE 0 END
           END) AS actual
    FROM recon_docs d
    JOIN ledger_journal j ON j.entity_id = %(entity)s AND j.source_system = d.source_system
        AND j.document_type = d.doc_type AND j.document_id = d.doc_id AND j.kind = d.kind
        AND (d.version IS NULL OR j.document_version = d.version) AND j.status IN {BOOKED}
    JOIN ledger_journalline l ON l.journal_id = j.id
    GROUP BY d.subject
)
SELECT CASE WHEN a.subject IS NULL THEN 'missing_journal' ELSE 'journal_amount_mismatch' END,
       d.account, COALESCE(to_char(a.accounting_date, 'YYYY-MM'), ''), a.journal_id, d.subject,
       jsonb_build_object('side', 'billing', 'journal_kind', d.kind, 'amount', {_m('d.expected')}),
       CASE WHEN a.subject IS NULL THEN jsonb_build_object('side', 'ledger', 'journals', 0)
            ELSE jsonb_build_object('side', 'ledger', 'amount', {_m('a.actual')}) END,
       abs(d.expected - COALESCE(a.actual, 0)), d.doc_id
FROM recon_docs d LEFT JOIN agg a ON a.subject = d.subject
WHERE a.subject IS NULL OR a.actual <> d.expected
"""

INVOICES_SQL = f"""
INSERT INTO recon_invoices (source_system, invoice_id, open_amount, balance, journal_id, in_scope)
WITH led AS (
    SELECT j.source_system, l.invoice_id, SUM(l.debit - l.credit) AS balance, MIN(j.id::text) AS journal_id,
           bool_or(j.accounting_date BETWEEN %(from)s AND %(to)s) AS touched
    FROM ledger_journalline l JOIN ledger_journal j ON j.id = l.journal_id
    WHERE j.entity_id = %(entity)s AND l.account_id = %(ar)s AND l.invoice_id <> '' AND j.status IN {BOOKED}
          AND {{led_filter}}
    GROUP BY j.source_system, l.invoice_id
), inv AS (
    SELECT i.source_system, i.invoice_id, i.issue_date,
           CASE WHEN i.status = 'voided' THEN 0
                ELSE i.total - i.applied_total - i.credited_total - i.written_off_total + i.refunded_total END
               AS open_amount
    FROM billing_sync_invoice i
    WHERE i.entity_id = %(entity)s AND {{inv_filter}}
)
SELECT COALESCE(inv.source_system, led.source_system), COALESCE(inv.invoice_id, led.invoice_id),
       inv.open_amount, led.balance, led.journal_id::uuid,
       {{in_scope}}
FROM inv FULL JOIN led ON led.source_system = inv.source_system AND led.invoice_id = inv.invoice_id
"""

OPEN_AMOUNTS_SQL = f"""
INSERT INTO recon_found (code, account, journal_id, document, expected, actual, amount, source_ref)
SELECT 'ledger_open_amount_mismatch', %(ar_code)s, CASE WHEN open_amount IS NULL THEN journal_id END,
       'invoice:' || source_system || ':' || invoice_id,
       CASE WHEN open_amount IS NULL THEN jsonb_build_object('side', 'billing', 'invoice', false,
                                                             'open_amount', {_m('0')})
            ELSE jsonb_build_object('side', 'billing', 'open_amount', {_m('open_amount')}) END,
       jsonb_build_object('side', 'ledger', 'receivable_balance', {_m('COALESCE(balance, 0)')}),
       abs(COALESCE(open_amount, 0) - COALESCE(balance, 0)), invoice_id
FROM recon_invoices
WHERE in_scope AND COALESCE(open_amount, 0) <> COALESCE(balance, 0)
"""

AGGREGATES_SQL = f"""
INSERT INTO recon_found (code, account, expected, actual, amount, source_ref)
SELECT code, account, jsonb_build_object('side', 'billing', 'amount', {_m('billing')}),
       jsonb_build_object('side', 'ledger', 'balance', {_m('ledger')}), abs(billing - ledger), account
FROM (
    SELECT 'ar_control_mismatch' AS code, %(ar_code)s AS account,
           (SELECT COALESCE(SUM(CASE WHEN i.status = 'voided' THEN 0 ELSE i.total - i.applied_total - i.credited_total
                                     - i.written_off_total + i.refunded_total END), 0)
            FROM billing_sync_invoice i WHERE i.entity_id = %(entity)s) AS billing,
           (SELECT COALESCE(SUM(l.debit - l.credit), 0)
            FROM ledger_journalline l JOIN ledger_journal j ON j.id = l.journal_id
            WHERE j.entity_id = %(entity)s AND l.account_id = %(ar)s AND j.status IN {BOOKED}) AS ledger
    WHERE %(check_ar)s
    UNION ALL
    SELECT 'unapplied_cash_mismatch', %(uc_code)s,
           (SELECT COALESCE(SUM(p.amount - p.allocated_total - p.refunded_unapplied_total), 0)
            FROM billing_sync_payment p WHERE p.entity_id = %(entity)s),
           (SELECT COALESCE(SUM(l.credit - l.debit), 0)
            FROM ledger_journalline l JOIN ledger_journal j ON j.id = l.journal_id
            WHERE j.entity_id = %(entity)s AND l.account_id = %(uc)s AND j.status IN {BOOKED})
    WHERE %(check_uc)s
) figures
WHERE billing <> ledger
"""


def check(ctx: Context, progress=None) -> None:
    """Run the plan's billing ↔ ledger checks into `recon_found`, `recon_scope` and `recon_checked`."""
    plan = ctx.plan
    with connection.cursor() as cursor:
        if plan.billing:
            filters, extra = _doc_filters(ctx)
            params = ctx.params(**extra)
            cursor.execute(DOCS_SQL.format(**filters), params)
            cursor.execute("ANALYZE recon_docs")  # temporary tables have no statistics until asked
            cursor.execute(JOURNALS_SQL, params)
            if plan.doc is None or plan.doc[0] == "invoice":
                if plan.doc is None:
                    led_filter = inv_filter = "TRUE"
                    in_scope = "(inv.issue_date BETWEEN %(from)s AND %(to)s OR COALESCE(led.touched, FALSE))"
                else:
                    led_filter = "j.source_system = %(doc_ss)s AND l.invoice_id = %(doc_id)s"
                    inv_filter = "i.source_system = %(doc_ss)s AND i.invoice_id = %(doc_id)s"
                    in_scope = "TRUE"
                cursor.execute(INVOICES_SQL.format(led_filter=led_filter, inv_filter=inv_filter,
                                                   in_scope=in_scope), params)
                cursor.execute(OPEN_AMOUNTS_SQL, params)
                cursor.execute("""INSERT INTO recon_checked (subject)
                                  SELECT 'invoice:' || source_system || ':' || invoice_id FROM recon_invoices
                                  WHERE in_scope""")
            cursor.execute("INSERT INTO recon_checked (subject) SELECT subject FROM recon_docs")
            cursor.execute("INSERT INTO recon_scope (scope) SELECT 'doc:' || subject FROM recon_checked")
            if progress:
                progress("billing ↔ ledger")
        if plan.aggregates:
            params = ctx.params(check_ar="ar_control_mismatch" in plan.aggregates,
                                check_uc="unapplied_cash_mismatch" in plan.aggregates)
            cursor.execute(AGGREGATES_SQL, params)
            cursor.executemany("INSERT INTO recon_scope (scope) VALUES (%s)",
                               [(f"entity:{code}",) for code in plan.aggregates])
            if progress:
                progress("control accounts")
