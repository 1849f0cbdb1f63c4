"""Billing ↔ ledger, set-based: a handful of INSERT ... SELECT statements over the whole range, whatever its
size (no row comes to Python), comparing each canonical document with the journals its posting rule gives
(`missing_journal`, `journal_amount_mismatch`), each invoice's open amount with its receivable balance
(`ledger_open_amount_mismatch`) and the control accounts with billing's totals (`ar_control_mismatch`,
`unapplied_cash_mismatch`) over the journals Tieout has booked (`context.BOOKED`), accounts by posting-rule role;
ARCHITECTURE.md ("billing_sync.reconciliation") says exactly what is compared and which documents a run covers.
At a million invoices every statement hashes millions of rows, so they are written for it: the ledger's sums are
taken as integers of the money columns' smallest unit (`UNITS`; exact, and a bigint sum's state is a fraction
of a numeric one's), grouped by the narrowest key that identifies a document (its journal kind names its type),
and the journal a break names is looked up only for the few rows that differ."""
import threading

from django.db import connection, connections

from billing_sync.reconciliation.context import BOOKED, Context, R

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
INSERT INTO recon_docs (doc_type, source_system, doc_id, kind, version, expected, account)
SELECT 'invoice', i.source_system, i.invoice_id, 'invoice', i.version, i.total, %(ar_code)s
FROM billing_sync_invoice i
WHERE i.entity_id = %(entity)s AND i.status = 'open' AND i.total <> 0 AND {invoice}
UNION ALL
SELECT 'payment', p.source_system, p.payment_id, 'payment', NULL, p.amount, %(clearing_code)s
FROM billing_sync_payment p
WHERE p.entity_id = %(entity)s AND {payment}
UNION ALL
SELECT 'credit_note', c.source_system, c.credit_note_id, 'credit_note', NULL, c.amount + c.tax_amount, %(ar_code)s
FROM billing_sync_creditnote c JOIN billing_sync_invoice i ON i.id = c.invoice_id
JOIN billing_sync_event e ON e.id = c.event_id
WHERE i.entity_id = %(entity)s AND c.status = 'approved' AND {credit_note}
UNION ALL
SELECT 'write_off', w.source_system, w.write_off_id, 'write_off', NULL, w.amount, %(ar_code)s
FROM billing_sync_writeoff w JOIN billing_sync_invoice i ON i.id = w.invoice_id
JOIN billing_sync_event e ON e.id = w.event_id
WHERE i.entity_id = %(entity)s AND w.status = 'approved' AND {write_off}
UNION ALL
SELECT 'refund', r.source_system, r.refund_id, 'refund', NULL, r.amount, %(clearing_code)s
FROM billing_sync_refund r JOIN billing_sync_payment p ON p.id = r.payment_id
JOIN billing_sync_event e ON e.id = r.event_id
WHERE p.entity_id = %(entity)s AND {refund}
"""

# Room for the run's hash joins and aggregates in the server (bounded, per statement node), instead of spilling.
WORK_MEM = "256MB"

# Money columns hold four decimal places (ledger.models.MONEY): sums of `x * UNITS` as bigint are exact.
UNITS = 10_000


def _units(expr: str) -> str:
    return f"(({expr}) * {UNITS})::bigint"


# A journal kind that books a billing document carries the document's type as its own name.
_DOC_KINDS = "(" + ", ".join(f"('{t}', '{t}')" for t in ("invoice", "payment", "refund", "credit_note",
                                                           "write_off")) + ")"

# The measure of each document's journals that its posting rule fixes (see the module docstring), against what
# billing says. Lines on other accounts are left out by the join (a journal without any still counts, as 0).
JOURNALS_SQL = f"""
INSERT INTO recon_found (code, account, period, journal_id, document, expected, actual, amount, source_ref)
WITH agg AS (
    SELECT j.source_system, j.kind, j.document_id, CASE WHEN j.kind = 'invoice' THEN j.document_version END
               AS version,
           MIN(j.accounting_date) AS accounting_date,
           COALESCE(SUM(CASE j.kind
               WHEN 'invoice' THEN CASE WHEN l.account_id = %(ar)s THEN {_units('l.debit - l.credit')} ELSE 0 END
               WHEN 'payment' THEN CASE WHEN l.account_id IN (%(clearing)s, %(fees)s) THEN {_units('l.debit')}
                                        ELSE 0 END
               WHEN 'refund' THEN CASE WHEN l.account_id = %(clearing)s THEN {_units('l.credit - l.debit')}
                                       ELSE 0 END
               ELSE CASE WHEN l.account_id = %(ar)s THEN {_units('l.credit - l.debit')} ELSE 0 END
           END), 0) AS actual
    FROM ledger_journal j
    LEFT JOIN ledger_journalline l ON l.journal_id = j.id AND l.account_id IN (%(ar)s, %(clearing)s, %(fees)s)
    WHERE j.entity_id = %(entity)s AND j.status IN {BOOKED} AND (j.kind, j.document_type) IN {_DOC_KINDS}
          AND {{narrow}}
    GROUP BY 1, 2, 3, 4
), found AS (
    SELECT d.*, a.kind IS NULL AS missing, a.actual, a.accounting_date
    FROM recon_docs d LEFT JOIN agg a ON a.source_system = d.source_system AND a.kind = d.kind
        AND a.document_id = d.doc_id AND a.version IS NOT DISTINCT FROM d.version
    WHERE a.kind IS NULL OR a.actual <> {_units('d.expected')}
)
SELECT CASE WHEN missing THEN 'missing_journal' ELSE 'journal_amount_mismatch' END,
       account, COALESCE(to_char(accounting_date, 'YYYY-MM'), ''),
       CASE WHEN NOT missing THEN (
           SELECT j.id FROM ledger_journal j
           WHERE j.entity_id = %(entity)s AND j.source_system = found.source_system
             AND j.document_type = found.doc_type AND j.document_id = found.doc_id AND j.kind = found.kind
             AND (found.version IS NULL OR j.document_version = found.version) AND j.status IN {BOOKED}
           ORDER BY j.id::text LIMIT 1) END,
       doc_type || ':' || source_system || ':' || doc_id,
       jsonb_build_object('side', 'billing', 'journal_kind', kind, 'amount', {_m('expected')}),
       CASE WHEN missing THEN jsonb_build_object('side', 'ledger', 'journals', 0)
            ELSE jsonb_build_object('side', 'ledger', 'amount', {_m(f'actual::numeric / {UNITS}')}) END,
       abs(expected - COALESCE(actual::numeric / {UNITS}, 0)), doc_id
FROM found
"""

# Every invoice's open amount against its receivable balance (the receivable lines that name it), both as bigint
# units, as one SELECT that answers only a few rows whatever the size: the invoices that differ (`mismatch`), the
# ones it checked that recon_docs does not list (`checked`: voided or settled invoices, and those a journal of
# the range touched), and the totals of both sides (`total`; the row without an invoice id holds the receivable
# booked to no invoice), which are the receivable control account's figures when every invoice was read. It
# reads no temporary table, so it can run on a session of its own beside JOURNALS_SQL (`check`).
INVOICES_SQL = f"""
WITH led AS (
    SELECT j.source_system, l.invoice_id, SUM({_units('l.debit - l.credit')}) AS balance,
           bool_or(j.accounting_date BETWEEN %(from)s AND %(to)s) AS touched
    FROM ledger_journalline l JOIN ledger_journal j ON j.id = l.journal_id
    WHERE j.entity_id = %(entity)s AND l.account_id = %(ar)s AND j.status IN {BOOKED} AND {{led_filter}}
    GROUP BY j.source_system, l.invoice_id
), inv AS (
    SELECT i.source_system, i.invoice_id, i.issue_date, {{listed}} AS listed,
           CASE WHEN i.status = 'voided' THEN 0
                ELSE {_units('i.total - i.applied_total - i.credited_total - i.written_off_total + i.refunded_total')}
           END AS open_amount
    FROM billing_sync_invoice i
    WHERE i.entity_id = %(entity)s AND {{inv_filter}}
), cmp AS MATERIALIZED (
    SELECT COALESCE(inv.source_system, led.source_system) AS source_system,
           COALESCE(inv.invoice_id, led.invoice_id) AS invoice_id, inv.open_amount, led.balance,
           COALESCE(inv.invoice_id, led.invoice_id) <> '' AND {{in_scope}} AS in_scope,
           COALESCE(inv.listed, FALSE) AS listed
    FROM inv FULL JOIN led ON led.source_system = inv.source_system AND led.invoice_id = inv.invoice_id
)
SELECT 'total', '', '', SUM(open_amount), SUM(balance) FROM cmp
UNION ALL
SELECT 'mismatch', source_system, invoice_id, open_amount, balance FROM cmp
WHERE in_scope AND COALESCE(open_amount, 0) <> COALESCE(balance, 0)
UNION ALL
SELECT 'checked', source_system, invoice_id, NULL, NULL FROM cmp WHERE in_scope AND NOT listed
"""

# The open-amount breaks from INVOICES_SQL's rows (an invoice billing does not have names one of the journals
# that booked its balance, looked up for these few rows only) and the marks' subjects.
OPEN_AMOUNTS_SQL = f"""
INSERT INTO recon_found (code, account, journal_id, document, expected, actual, amount, source_ref)
SELECT 'ledger_open_amount_mismatch', %(ar_code)s,
       CASE WHEN open_amount IS NULL THEN (
           SELECT j.id FROM ledger_journalline l JOIN ledger_journal j ON j.id = l.journal_id
           WHERE l.account_id = %(ar)s AND l.invoice_id = r.invoice_id AND j.entity_id = %(entity)s
             AND j.source_system = r.source_system AND j.status IN {BOOKED}
           ORDER BY j.id::text LIMIT 1) END,
       'invoice:' || source_system || ':' || invoice_id,
       CASE WHEN open_amount IS NULL THEN jsonb_build_object('side', 'billing', 'invoice', false,
                                                             'open_amount', {_m('0')})
            ELSE jsonb_build_object('side', 'billing', 'open_amount', {_m(f'open_amount::numeric / {UNITS}')}) END,
       jsonb_build_object('side', 'ledger', 'receivable_balance', {_m(f'COALESCE(balance, 0)::numeric / {UNITS}')}),
       abs(COALESCE(open_amount, 0) - COALESCE(balance, 0))::numeric / {UNITS}, invoice_id
FROM recon_invoices r WHERE kind = 'mismatch'
"""
INVOICES_CHECKED_SQL = """
INSERT INTO recon_checked (subject, billing)
SELECT 'invoice:' || source_system || ':' || invoice_id, TRUE FROM recon_invoices WHERE kind = 'checked'
"""

AGGREGATE_ROWS = f"""
INSERT INTO recon_found (code, account, expected, actual, amount, source_ref)
SELECT code, account, jsonb_build_object('side', 'billing', 'amount', {_m('billing')}),
       jsonb_build_object('side', 'ledger', 'balance', {_m('ledger')}), abs(billing - ledger), account
FROM (VALUES {{rows}}) figures (code, account, billing, ledger)
WHERE billing <> ledger
"""

# The control accounts' balances in the ledger, in one pass over their lines.
CONTROL_SQL = f"""
SELECT COALESCE(SUM({_units('l.debit - l.credit')}) FILTER (WHERE l.account_id = %(ar)s), 0),
       COALESCE(SUM({_units('l.credit - l.debit')}) FILTER (WHERE l.account_id = %(uc)s), 0)
FROM ledger_journalline l JOIN ledger_journal j ON j.id = l.journal_id
WHERE j.entity_id = %(entity)s AND l.account_id = ANY(%(accounts)s) AND j.status IN {BOOKED}
"""

# What billing says they should hold: open invoices, and payments' unapplied amounts.
OPEN_INVOICES_SQL = f"""
SELECT COALESCE(SUM(CASE WHEN i.status = 'voided' THEN 0 ELSE
    {_units('i.total - i.applied_total - i.credited_total - i.written_off_total + i.refunded_total')} END), 0)
FROM billing_sync_invoice i WHERE i.entity_id = %(entity)s
"""
UNAPPLIED_SQL = f"""
SELECT COALESCE(SUM({_units('p.amount - p.allocated_total - p.refunded_unapplied_total')}), 0)
FROM billing_sync_payment p WHERE p.entity_id = %(entity)s
"""


def check(ctx: Context, progress=None) -> None:
    """Run the plan's billing ↔ ledger checks into `recon_found`, `recon_scope` and `recon_checked`."""
    plan = ctx.plan
    whole = plan.doc is None  # INVOICES_SQL reads every invoice of the entity (its totals are the entity's)
    receivable = None  # (open invoices, receivable balance) of the entity, as bigint units, when it did
    with connection.cursor() as cursor:
        if plan.billing:
            filters, extra = _doc_filters(ctx)
            params = ctx.params(**extra)
            cursor.execute(DOCS_SQL.format(**filters), params)
            documents = cursor.rowcount
            cursor.execute("ANALYZE recon_docs")  # temporary tables have no statistics until asked
            if progress:
                progress("billing documents")
            if plan.doc is None or plan.doc[0] == "invoice":
                if whole:
                    led_filter = inv_filter = "TRUE"
                    in_scope = "(inv.issue_date BETWEEN %(from)s AND %(to)s OR COALESCE(led.touched, FALSE))"
                else:
                    led_filter = "j.source_system = %(doc_ss)s AND l.invoice_id = %(doc_id)s"
                    inv_filter = "i.source_system = %(doc_ss)s AND i.invoice_id = %(doc_id)s"
                    in_scope = "TRUE"
                # `listed`: the invoice is in recon_docs too (DOCS_SQL's condition), so its mark's subject is there.
                listed = f"i.status = 'open' AND i.total <> 0 AND {filters['invoice']}"
                invoices_sql = INVOICES_SQL.format(led_filter=led_filter, inv_filter=inv_filter,
                                                   in_scope=in_scope, listed=listed)
            else:
                invoices_sql = None
            # The open-amount check reads no temporary table: with a session of its own it runs on another core
            # while this one sums the documents' journals (a run outside any transaction; inside one, e.g. a
            # test's, another session could not see its rows).
            beside = invoices_sql and ctx.parallel and whole
            worker = _Beside(invoices_sql, params) if beside else None
            try:
                cursor.execute(JOURNALS_SQL.format(narrow=_journal_filter(cursor, plan, documents)), params)
            except BaseException:
                if worker:
                    worker.wait()  # its session closed before the run's failure is recorded
                raise
            if progress:
                progress("document journals")
            if invoices_sql:
                if worker:
                    rows = worker.result()
                    with cursor.copy("COPY recon_invoices (kind, source_system, invoice_id, open_amount, balance) "
                                     "FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                else:
                    cursor.execute("INSERT INTO recon_invoices (kind, source_system, invoice_id, open_amount, "
                                   f"balance) {invoices_sql}", params)
                cursor.execute("SELECT open_amount, balance FROM recon_invoices WHERE kind = 'total'")
                open_total, balance_total = cursor.fetchone()
                if whole:
                    receivable = (open_total or 0, balance_total or 0)
                cursor.execute(OPEN_AMOUNTS_SQL, params)
                cursor.execute(INVOICES_CHECKED_SQL)
                if progress:
                    progress("open amounts")
            if progress:
                progress("billing ↔ ledger")
        if plan.aggregates:
            _aggregates(cursor, ctx, receivable=receivable)
            cursor.executemany("INSERT INTO recon_scope (scope) VALUES (%s)",
                               [(f"entity:{code}",) for code in plan.aggregates])
            if progress:
                progress("control accounts")


class _Beside:
    """INVOICES_SQL on a session of its own, in a thread, started now; `result()` waits for its rows (a few)."""

    def __init__(self, sql: str, params: dict):
        self._rows, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(sql, params), name="reconciliation-invoices",
                                        daemon=True)
        self._thread.start()

    def _run(self, sql: str, params: dict) -> None:
        try:
            with connections["default"].cursor() as cursor:  # this thread's own connection
                cursor.execute(f"SET work_mem = '{WORK_MEM}'")
                cursor.execute(sql, params)
                self._rows = cursor.fetchall()
                cursor.execute("RESET work_mem")
        except BaseException as exc:  # re-raised in the run's thread by result()
            self._error = exc
        finally:
            connections["default"].close()

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> list[tuple]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._rows


def _journal_filter(cursor, plan, documents: int) -> str:
    """Which journals JOURNALS_SQL sums: one document's (by the document index), the range's documents' (a hash
    semi-join with recon_docs) when they are a small part of the ledger, or all of the entity's when the range
    covers most of it (the semi-join would then cost more than the journals it leaves out)."""
    if plan.doc is not None:
        return "j.source_system = %(doc_ss)s AND j.document_id = %(doc_id)s"
    cursor.execute("SELECT reltuples FROM pg_class WHERE oid = 'ledger_journal'::regclass")
    journals = cursor.fetchone()[0]
    if documents * 3 < journals:
        return "(j.source_system, j.document_id) IN (SELECT source_system, doc_id FROM recon_docs)"
    return "TRUE"


def _aggregates(cursor, ctx: Context, *, receivable: tuple[int, int] | None) -> None:
    """The control accounts against billing's totals. After a whole-range billing check INVOICES_SQL has summed
    every invoice of the entity and every receivable line (`receivable`), so those are not read again."""
    plan = ctx.plan
    params = ctx.params()
    rows = []
    wanted = {code: code in plan.aggregates for code in ("ar_control_mismatch", "unapplied_cash_mismatch")}
    ar_ledger = uc_ledger = None
    if wanted["ar_control_mismatch"] and receivable is not None:
        ar_billing, ar_ledger = receivable
    elif wanted["ar_control_mismatch"]:
        cursor.execute(OPEN_INVOICES_SQL, params)
        ar_billing = cursor.fetchone()[0]
    accounts = [ctx.account_id(role) for role, want in ((R.RECEIVABLE, wanted["ar_control_mismatch"]
                                                           and ar_ledger is None),
                                                          (R.UNAPPLIED_CASH, wanted["unapplied_cash_mismatch"]))
                if want]
    if accounts:
        cursor.execute(CONTROL_SQL, {**params, "accounts": accounts})
        ar_sum, uc_ledger = cursor.fetchone()
        ar_ledger = ar_sum if ar_ledger is None else ar_ledger
    if wanted["ar_control_mismatch"]:
        rows.append(("ar_control_mismatch", ctx.account_code(R.RECEIVABLE), ar_billing, ar_ledger))
    if wanted["unapplied_cash_mismatch"]:
        cursor.execute(UNAPPLIED_SQL, params)
        rows.append(("unapplied_cash_mismatch", ctx.account_code(R.UNAPPLIED_CASH), cursor.fetchone()[0], uc_ledger))
    if rows:
        values = ", ".join(f"(%(code{n})s, %(account{n})s, %(billing{n})s::numeric / {UNITS}, "
                           f"%(ledger{n})s::numeric / {UNITS})" for n in range(len(rows)))
        named = {f"{name}{n}": value for n, row in enumerate(rows)
                 for name, value in zip(("code", "account", "billing", "ledger"), row)}
        cursor.execute(AGGREGATE_ROWS.format(rows=values), {"scale": ctx.scale, **named})
