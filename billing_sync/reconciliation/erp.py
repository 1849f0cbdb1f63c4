"""Ledger ↔ ERP: the ERP read back through the entity's connector (the read-back of
`ledger.connectors.base.Connector`), streamed into staging tables by COPY in chunks so that memory stays flat,
then compared with our posted journals in SQL (`missing_in_erp`, `erp_document_cancelled`, `erp_amount_mismatch`,
`erp_date_mismatch`, `unexpected_in_erp`, and in full runs `erp_balance_mismatch`); `stage` reads the ERP
outside any transaction, `compare` writes what differs. Any connector implementing the interface plugs in;
ARCHITECTURE.md ("billing_sync.reconciliation") has the rules."""
import datetime
from collections.abc import Iterable

from django.conf import settings
from django.db import connection, transaction

from billing_sync.reconciliation.context import DOC_TYPES, Context
from ledger.connectors.base import Connector, ErpDocument
from ledger.services import REPOST

CHUNK = 1000
UUID_RE = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
DOC_EXPR = ("CASE WHEN j.document_type IN ({}) AND j.document_id <> '' "
            "THEN j.document_type || ':' || j.source_system || ':' || j.document_id ELSE '' END").format(
    ", ".join(f"'{t}'" for t in DOC_TYPES))


class Stager:
    """Copies ERP documents (and their lines) into the staging tables, a chunk at a time."""

    def __init__(self):
        self.count = 0
        self._docs: list[tuple] = []
        self._lines: list[tuple] = []

    def add(self, doc: ErpDocument) -> None:
        self.count += 1
        self._docs.append((self.count, doc.ref, doc.our_ref or "", doc.status, doc.posting_date, doc.modified))
        self._lines.extend((self.count, doc.ref, line.account, line.debit, line.credit) for line in doc.lines)
        if len(self._docs) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self._docs:
            return
        with transaction.atomic(), connection.cursor() as cursor:
            raw = cursor.cursor
            with raw.copy("COPY recon_erp_doc (n, ref, our_ref, status, posting_date, modified) FROM STDIN") as copy:
                for row in self._docs:
                    copy.write_row(row)
            if self._lines:
                with raw.copy("COPY recon_erp_line (n, ref, account, debit, credit) FROM STDIN") as copy:
                    for row in self._lines:
                        copy.write_row(row)
        self._docs, self._lines = [], []


def _ours_sql(where_journal: str, where_batch: str) -> str:
    return f"""
INSERT INTO recon_ours (journal_id, batch_id, ref, accounting_date, document)
SELECT j.id, NULL, COALESCE(r.ref, j.erp_document_ref), j.accounting_date, {DOC_EXPR}
FROM ledger_journal j LEFT JOIN recon_reposts r ON r.journal_id = j.id
WHERE j.entity_id = %(entity)s AND j.status = 'posted' AND j.erp_batch_id IS NULL AND ({where_journal})
UNION ALL
SELECT NULL, b.id, b.erp_document_ref, b.accounting_date, ''
FROM ledger_erpbatch b
WHERE b.entity_id = %(entity)s AND b.status = 'posted' AND b.erp_document_ref IS NOT NULL AND ({where_batch})
"""


STAGED_REF = f"(SELECT d.our_ref::uuid FROM recon_erp_doc d WHERE d.our_ref ~ '{UUID_RE}')"


def _ours(ctx: Context, cursor) -> None:
    """Our side: the posted journals and batch documents this run checks against the ERP."""
    plan = ctx.plan
    cursor.execute(f"""INSERT INTO recon_reposts (journal_id, ref)
        SELECT DISTINCT ON (a.journal_id) a.journal_id, a.erp_document_ref
        FROM ledger_postingattempt a JOIN ledger_journal j ON j.id = a.journal_id
        WHERE a.message LIKE '{REPOST}%%' AND a.outcome IN ('posted', 'already_posted') AND a.erp_document_ref <> ''
              AND j.entity_id = %(entity)s
        ORDER BY a.journal_id, a.started_at DESC, a.id DESC""", ctx.params())
    params = ctx.params(since=ctx.since, journal=plan.journal_id, ref=plan.erp_ref,
                        doc_type=plan.doc[0] if plan.doc else None, doc_ss=plan.doc[1] if plan.doc else None,
                        doc_id=plan.doc[2] if plan.doc else None)
    if plan.erp == "stream":
        posted = "" if ctx.since is None else " AND {x}.posted_at >= %(since)s"
        where_journal = (f"(j.accounting_date BETWEEN %(from)s AND %(to)s{posted.format(x='j')}) "
                         f"OR j.id IN {STAGED_REF} OR j.erp_document_ref IN (SELECT ref FROM recon_erp_doc)")
        where_batch = (f"(b.accounting_date BETWEEN %(from)s AND %(to)s{posted.format(x='b')}) "
                       f"OR b.id IN {STAGED_REF} OR b.erp_document_ref IN (SELECT ref FROM recon_erp_doc)")
    elif plan.journal_id:
        where_journal = "j.id = %(journal)s"
        where_batch = "b.id = (SELECT erp_batch_id FROM ledger_journal WHERE id = %(journal)s)"
    elif plan.erp_ref:
        where_journal = "COALESCE(r.ref, j.erp_document_ref) = %(ref)s"
        where_batch = "b.erp_document_ref = %(ref)s"
    else:  # the journals of one document
        where_journal = ("j.document_type = %(doc_type)s AND j.source_system = %(doc_ss)s "
                         "AND j.document_id = %(doc_id)s")
        where_batch = ("b.id IN (SELECT erp_batch_id FROM ledger_journal WHERE document_type = %(doc_type)s "
                       "AND source_system = %(doc_ss)s AND document_id = %(doc_id)s)")
    cursor.execute(_ours_sql(where_journal, where_batch), params)


def stage(ctx: Context, connector: Connector, progress=None) -> int:
    """Read the ERP back into the staging tables; returns how many documents were read."""
    plan = ctx.plan
    stager = Stager()
    if plan.erp == "stream":
        # A full run reads whole months: the balance check needs every document of each month it compares.
        date_from, date_to = (plan.balance[1], plan.balance[2]) if plan.balance else (ctx.date_from, ctx.date_to)
        for doc in connector.erp_documents(date_from=date_from, date_to=date_to, modified_since=ctx.since):
            stager.add(doc)
            if progress and stager.count % CHUNK == 0:
                progress("ERP documents", stager.count)
        stager.flush()
    elif plan.erp_ref:
        _lookup(connector, stager, [plan.erp_ref])
    if plan.erp:
        with transaction.atomic(), connection.cursor() as cursor:
            _ours(ctx, cursor)
            cursor.execute("""SELECT DISTINCT o.ref FROM recon_ours o
                              WHERE NOT EXISTS (SELECT 1 FROM recon_erp_doc d WHERE d.ref = o.ref)
                              ORDER BY o.ref LIMIT %s""",
                           [settings.TIEOUT_RECONCILIATION_LOOKUPS if plan.erp == "stream" else 1000])
            unseen = [row[0] for row in cursor.fetchall()]
        # A journal the listing did not return may have a posting date the ERP changed, or have been posted
        # after the ERP document's last change (incremental): ask for it by reference before calling it missing.
        _lookup(connector, stager, unseen)
    if plan.balance:
        accounts, month_from, month_to = plan.balance
        moves = connector.account_movements(date_from=month_from, date_to=month_to, accounts=accounts)
        _copy_movements(moves)
    if progress:
        progress("ERP documents", stager.count)
    return stager.count


def _lookup(connector: Connector, stager: Stager, refs: Iterable[str]) -> None:
    for ref in refs:
        doc = connector.erp_document(ref)
        if doc is not None:
            stager.add(doc)
    stager.flush()


def _copy_movements(moves) -> None:
    batch: list[tuple] = []

    def flush():
        with transaction.atomic(), connection.cursor() as cursor, cursor.cursor.copy(
                "COPY recon_erp_move (account, month, debit, credit) FROM STDIN") as copy:
            for row in batch:
                copy.write_row(row)

    for move in moves:
        batch.append((move.account, move.month, move.debit, move.credit))
        if len(batch) >= CHUNK:
            flush()
            batch = []
    if batch:
        flush()


def _money(expr: str) -> str:
    return f"round({expr}, %(scale)s)::text"


# Our accounts as the read-back names them: where two of ours share one ERP account (`Account.erp_account`), the
# ERP's lines and movements come back as the lower code (`ledger.connectors.readback.AccountNames`, ordered as
# here), so our side is summed under that code too; otherwise returns booked to the ERP's revenue account would
# differ from every journal that has them. Not for a connector that reads our own codes (`erp_names` false).
CANON_SQL = """SELECT id, CASE WHEN %(erp_names)s
        THEN MIN(code) OVER (PARTITION BY COALESCE(NULLIF(btrim(erp_account), ''), code)) ELSE code END AS code
    FROM ledger_account WHERE entity_id = %(entity)s"""

# The ERP's current version of each document read (a document listed twice keeps its last version).
CURRENT_SQL = """
INSERT INTO recon_erp_cur (n, ref, our_ref, status, posting_date)
SELECT DISTINCT ON (ref) n, ref, our_ref, status, posting_date FROM recon_erp_doc ORDER BY ref, n DESC
"""

LINES_SQL = f"""
INSERT INTO recon_cmp_lines (ref, account, our_debit, our_credit, erp_debit, erp_credit)
WITH canon AS ({CANON_SQL}), ours AS (
    SELECT o.ref, a.code AS account, SUM(l.debit) AS debit, SUM(l.credit) AS credit
    FROM recon_ours o JOIN recon_erp_cur c ON c.ref = o.ref AND c.status = 'posted'
    JOIN ledger_journalline l ON l.journal_id = o.journal_id JOIN canon a ON a.id = l.account_id
    WHERE o.journal_id IS NOT NULL
    GROUP BY o.ref, a.code
    UNION ALL
    SELECT o.ref, a.code, SUM(bl.debit), SUM(bl.credit)
    FROM recon_ours o JOIN recon_erp_cur c ON c.ref = o.ref AND c.status = 'posted'
    JOIN ledger_erpbatchline bl ON bl.batch_id = o.batch_id JOIN canon a ON a.id = bl.account_id
    WHERE o.batch_id IS NOT NULL
    GROUP BY o.ref, a.code
), erp AS (
    SELECT l.ref, l.account, SUM(l.debit) AS debit, SUM(l.credit) AS credit
    FROM recon_erp_line l JOIN recon_erp_cur c ON c.ref = l.ref AND c.n = l.n AND c.status = 'posted'
    WHERE l.ref IN (SELECT ref FROM recon_ours)
    GROUP BY l.ref, l.account
)
SELECT COALESCE(ours.ref, erp.ref) AS ref, COALESCE(ours.account, erp.account) AS account,
       COALESCE(ours.debit, 0) AS our_debit, COALESCE(ours.credit, 0) AS our_credit,
       COALESCE(erp.debit, 0) AS erp_debit, COALESCE(erp.credit, 0) AS erp_credit
FROM ours FULL JOIN erp ON erp.ref = ours.ref AND erp.account = ours.account
"""

FOUND_COLUMNS = "code, account, period, journal_id, erp_document_ref, document, expected, actual, amount, source_ref"

MISSING_SQL = f"""
INSERT INTO recon_found ({FOUND_COLUMNS})
SELECT 'missing_in_erp', '', to_char(o.accounting_date, 'YYYY-MM'), o.journal_id, o.ref, o.document,
       jsonb_build_object('side', 'ledger', 'erp_document_ref', o.ref, 'status', 'posted'),
       jsonb_build_object('side', 'erp', 'erp_document_ref', NULL),
       NULL, COALESCE(o.journal_id::text, o.ref)
FROM recon_ours o WHERE NOT EXISTS (SELECT 1 FROM recon_erp_cur c WHERE c.ref = o.ref)
"""

CANCELLED_SQL = f"""
INSERT INTO recon_found ({FOUND_COLUMNS})
SELECT 'erp_document_cancelled', '', to_char(o.accounting_date, 'YYYY-MM'), o.journal_id, o.ref, o.document,
       jsonb_build_object('side', 'ledger', 'erp_document_ref', o.ref, 'status', 'posted'),
       jsonb_build_object('side', 'erp', 'erp_document_ref', c.ref, 'status', c.status),
       NULL, COALESCE(o.journal_id::text, o.ref)
FROM recon_ours o JOIN recon_erp_cur c ON c.ref = o.ref WHERE c.status <> 'posted'
"""

DATE_SQL = f"""
INSERT INTO recon_found ({FOUND_COLUMNS})
SELECT 'erp_date_mismatch', '', to_char(o.accounting_date, 'YYYY-MM'), o.journal_id, o.ref, o.document,
       jsonb_build_object('side', 'ledger', 'posting_date', o.accounting_date::text),
       jsonb_build_object('side', 'erp', 'posting_date', c.posting_date::text),
       NULL, COALESCE(o.journal_id::text, o.ref)
FROM recon_ours o JOIN recon_erp_cur c ON c.ref = o.ref
WHERE c.status = 'posted' AND c.posting_date IS DISTINCT FROM o.accounting_date
"""

AMOUNT_SQL = f"""
INSERT INTO recon_found ({FOUND_COLUMNS})
SELECT 'erp_amount_mismatch', COALESCE(x.account, ''), to_char(o.accounting_date, 'YYYY-MM'), o.journal_id, o.ref,
       o.document, x.expected, x.actual, x.amount, COALESCE(o.journal_id::text, o.ref)
FROM (
    SELECT ref,
           MIN(account) FILTER (WHERE our_debit - our_credit <> erp_debit - erp_credit) AS account,
           jsonb_build_object('side', 'ledger', 'lines', jsonb_object_agg(account, jsonb_build_object(
               'debit', {_money('our_debit')}, 'credit', {_money('our_credit')}))
               FILTER (WHERE our_debit <> 0 OR our_credit <> 0)) AS expected,
           jsonb_build_object('side', 'erp', 'lines', jsonb_object_agg(account, jsonb_build_object(
               'debit', {_money('erp_debit')}, 'credit', {_money('erp_credit')}))
               FILTER (WHERE erp_debit <> 0 OR erp_credit <> 0)) AS actual,
           SUM(abs((our_debit - our_credit) - (erp_debit - erp_credit))) AS amount
    FROM recon_cmp_lines GROUP BY ref
    HAVING bool_or(our_debit - our_credit <> erp_debit - erp_credit)
) x JOIN recon_ours o ON o.ref = x.ref
"""

# Posted ERP documents with our reference that no journal (or batch) of ours lives in: a reference we do
# not know, or a second document for a journal. Journals not posted yet are left alone: their posting is in
# flight and looks the document up before sending again.
UNEXPECTED_SQL = f"""
INSERT INTO recon_found ({FOUND_COLUMNS})
SELECT 'unexpected_in_erp', '', COALESCE(to_char(c.posting_date, 'YYYY-MM'), ''), j.id, c.ref,
       CASE WHEN j.id IS NULL THEN '' ELSE {DOC_EXPR} END,
       CASE WHEN j.id IS NULL AND b.id IS NULL
            THEN jsonb_build_object('side', 'ledger', 'our_ref', c.our_ref, 'known', false)
            ELSE jsonb_build_object('side', 'ledger', 'our_ref', c.our_ref,
                                    'erp_document_ref', COALESCE(r.ref, j.erp_document_ref, b.erp_document_ref)) END,
       jsonb_build_object('side', 'erp', 'erp_document_ref', c.ref, 'our_ref', c.our_ref,
                          'posting_date', c.posting_date::text),
       NULL, c.ref
FROM recon_erp_cur c
LEFT JOIN ledger_journal j ON j.entity_id = %(entity)s
    AND j.id = CASE WHEN c.our_ref ~ '{UUID_RE}' THEN c.our_ref::uuid END
LEFT JOIN recon_reposts r ON r.journal_id = j.id
LEFT JOIN ledger_erpbatch b ON b.entity_id = %(entity)s
    AND b.id = CASE WHEN c.our_ref ~ '{UUID_RE}' THEN c.our_ref::uuid END
WHERE c.status = 'posted'
  AND NOT EXISTS (SELECT 1 FROM recon_ours o WHERE o.ref = c.ref)
  AND NOT EXISTS (SELECT 1 FROM ledger_journal jj WHERE jj.entity_id = %(entity)s AND jj.status = 'posted'
                  AND jj.erp_document_ref = c.ref AND jj.erp_batch_id IS NULL)
  AND NOT EXISTS (SELECT 1 FROM recon_reposts rr WHERE rr.ref = c.ref)
  AND NOT EXISTS (SELECT 1 FROM ledger_erpbatch bb WHERE bb.entity_id = %(entity)s AND bb.erp_document_ref = c.ref)
  AND (j.id IS NULL OR j.status = 'posted')
  AND (b.id IS NULL OR b.status = 'posted')
"""

BALANCE_SQL = f"""
INSERT INTO recon_found ({FOUND_COLUMNS})
WITH canon AS ({CANON_SQL}), led AS (
    SELECT a.code AS account, to_char(j.accounting_date, 'YYYY-MM') AS month, SUM(l.debit) AS debit,
           SUM(l.credit) AS credit
    FROM ledger_journalline l JOIN ledger_journal j ON j.id = l.journal_id JOIN canon a ON a.id = l.account_id
    WHERE j.entity_id = %(entity)s AND j.status = 'posted' AND j.accounting_date BETWEEN %(month_from)s AND %(month_to)s
          AND a.code = ANY(%(accounts)s)
    GROUP BY 1, 2
), erp AS (
    SELECT account, month, SUM(debit) AS debit, SUM(credit) AS credit FROM recon_erp_move
    WHERE account = ANY(%(accounts)s) GROUP BY 1, 2
), docs AS (
    SELECT l.account, to_char(c.posting_date, 'YYYY-MM') AS month, SUM(l.debit - l.credit) AS net
    FROM recon_erp_line l JOIN recon_erp_cur c ON c.ref = l.ref AND c.n = l.n AND c.status = 'posted'
    WHERE l.account = ANY(%(accounts)s) AND c.posting_date BETWEEN %(month_from)s AND %(month_to)s
    GROUP BY 1, 2
), cmp AS (
    SELECT COALESCE(led.account, erp.account, docs.account) AS account, COALESCE(led.month, erp.month, docs.month) AS month,
           COALESCE(led.debit, 0) AS led_debit, COALESCE(led.credit, 0) AS led_credit,
           COALESCE(erp.debit, 0) AS erp_debit, COALESCE(erp.credit, 0) AS erp_credit,
           COALESCE(erp.debit, 0) - COALESCE(erp.credit, 0) - COALESCE(docs.net, 0) AS unexplained
    FROM led FULL JOIN erp ON erp.account = led.account AND erp.month = led.month
    FULL JOIN docs ON docs.account = COALESCE(led.account, erp.account) AND docs.month = COALESCE(led.month, erp.month)
)
SELECT 'erp_balance_mismatch', account, month, NULL, '', '',
       jsonb_build_object('side', 'ledger', 'debit', {_money('led_debit')}, 'credit', {_money('led_credit')}),
       jsonb_build_object('side', 'erp', 'debit', {_money('erp_debit')}, 'credit', {_money('erp_credit')},
                          'unexplained', {_money('unexplained')}),
       abs(unexplained), account || ' ' || month
FROM cmp WHERE unexplained <> 0
"""


def _months(first: datetime.date, last: datetime.date) -> list[str]:
    out, day = [], first.replace(day=1)
    while day <= last:
        out.append(f"{day:%Y-%m}")
        day = (day + datetime.timedelta(days=32)).replace(day=1)
    return out


def compare(ctx: Context, progress=None) -> None:
    """Compare the staged ERP read-back with our side into `recon_found`, `recon_scope`, `recon_checked`."""
    plan = ctx.plan
    params = ctx.params()
    with connection.cursor() as cursor:
        if plan.erp:
            cursor.execute(CURRENT_SQL)
            cursor.execute(LINES_SQL, params)
            for sql in (MISSING_SQL, CANCELLED_SQL, DATE_SQL, AMOUNT_SQL, UNEXPECTED_SQL):
                cursor.execute(sql, params)
            # What was checked: our journals (batch members with their batch) and their documents, and every
            # ERP document read (the scope of unexpected_in_erp).
            cursor.execute("""
                INSERT INTO recon_scope (scope)
                SELECT CASE WHEN journal_id IS NOT NULL THEN 'journal:' || journal_id::text ELSE 'erp:' || ref END
                FROM recon_ours
                UNION ALL SELECT 'erp:' || ref FROM recon_erp_cur""")
            cursor.execute(f"""
                INSERT INTO recon_checked (subject)
                SELECT 'journal:' || journal_id::text FROM recon_ours WHERE journal_id IS NOT NULL
                UNION ALL SELECT 'journal:' || j.id::text FROM recon_ours o JOIN ledger_journal j
                    ON j.erp_batch_id = o.batch_id WHERE o.batch_id IS NOT NULL
                UNION ALL SELECT document FROM recon_ours WHERE document <> ''
                UNION ALL SELECT {DOC_EXPR} FROM recon_ours o JOIN ledger_journal j ON j.erp_batch_id = o.batch_id
                    WHERE o.batch_id IS NOT NULL AND j.document_type IN ({", ".join(f"'{t}'" for t in DOC_TYPES)})""")
            if plan.erp_ref:
                # A run for one ERP document looked it up by reference: if the ERP no longer has it, nothing about it
                # is found, and its break (a duplicate since deleted) is resolved.
                cursor.execute("INSERT INTO recon_scope (scope) VALUES (%s)", [f"erp:{plan.erp_ref}"])
            if plan.erp == "stream" and ctx.since is None:
                # A full read of the range: an unexpected document that is no longer listed is gone.
                cursor.execute("""
                    INSERT INTO recon_scope (scope)
                    SELECT 'erp:' || erp_document_ref FROM billing_sync_reconciliationbreak
                    WHERE entity_id = %(entity)s AND status = 'open' AND code = 'unexpected_in_erp'
                      AND (actual->>'posting_date')::date BETWEEN %(from)s AND %(to)s""", params)
            if progress:
                progress("ledger ↔ ERP")
        if plan.balance:
            accounts, month_from, month_to = plan.balance
            # Compared under the codes the read-back uses (CANON_SQL); a break on a code folded into another one
            # since is in scope too, so that it is resolved.
            cursor.execute(f"SELECT DISTINCT c.code FROM ({CANON_SQL}) c JOIN ledger_account a ON a.id = c.id "
                           "WHERE a.code = ANY(%(accounts)s)", ctx.params(accounts=list(accounts)))
            compared = sorted(row[0] for row in cursor.fetchall())
            cursor.execute(BALANCE_SQL, ctx.params(accounts=compared, month_from=month_from, month_to=month_to))
            cursor.executemany("INSERT INTO recon_scope (scope) VALUES (%s)",
                               [(f"balance:{account}:{month}",) for account in sorted({*accounts, *compared})
                                for month in _months(month_from, month_to)])
            if progress:
                progress("ERP balances")
