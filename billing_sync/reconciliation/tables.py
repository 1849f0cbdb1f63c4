"""The session temporary tables one reconciliation run works in, created at its start and dropped at its end
(`ON COMMIT PRESERVE ROWS`: the ERP read-back is staged outside the transaction that compares and writes).
`SCOPE_SQL` is the one definition of a break's scope (the check that decides whether it still holds), used for
what a run found and for the open breaks it may resolve, so the two always agree."""
from contextlib import contextmanager

from django.db import connection
from psycopg.pq import TransactionStatus

TABLES = {
    # What the run found: one row per discrepancy.
    "recon_found": """(key text NOT NULL DEFAULT '', code text NOT NULL, scope text NOT NULL DEFAULT '',
        account text NOT NULL DEFAULT '', period text NOT NULL DEFAULT '', journal_id uuid,
        erp_document_ref text NOT NULL DEFAULT '', document text NOT NULL DEFAULT '', expected jsonb NOT NULL,
        actual jsonb NOT NULL, amount numeric, source_ref text NOT NULL DEFAULT '')""",
    # The checks the run made, as scope tokens: an open break whose scope is here and whose key was not found
    # again is resolved.
    "recon_scope": "(scope text NOT NULL)",
    # The journals and documents the run checked (their marks) besides the billing documents in recon_docs;
    # `billing` for the invoices the open-amount check covered beyond those (recon_docs and these are the scope
    # of the billing ↔ ledger breaks: a million or more, so not copied into recon_scope).
    "recon_checked": "(subject text NOT NULL, billing boolean NOT NULL DEFAULT FALSE)",
    # Billing documents that should have journals, with the amount their posting rule gives.
    "recon_docs": """(doc_type text NOT NULL, source_system text NOT NULL, doc_id text NOT NULL,
        kind text NOT NULL, version integer, expected numeric NOT NULL, account text NOT NULL DEFAULT '')""",
    # The few rows of the open-amount check (billing.INVOICES_SQL): `total`, `mismatch` and `checked` invoices,
    # amounts as bigint units of the money columns (`billing.UNITS`).
    "recon_invoices": """(kind text NOT NULL, source_system text NOT NULL, invoice_id text NOT NULL,
        open_amount bigint, balance bigint)""",
    # The ERP read-back, as streamed (`n` orders the documents: a document seen twice keeps its last version).
    "recon_erp_doc": """(n bigint NOT NULL, ref text NOT NULL, our_ref text NOT NULL, status text NOT NULL,
        posting_date date, modified timestamptz)""",
    "recon_erp_line": "(n bigint NOT NULL, ref text NOT NULL, account text NOT NULL, debit numeric NOT NULL, "
                      "credit numeric NOT NULL)",
    "recon_erp_move": "(account text NOT NULL, month text NOT NULL, debit numeric NOT NULL, credit numeric NOT NULL)",
    # Our side of the ERP comparison: posted journals (single documents) and posted batch documents.
    "recon_ours": """(journal_id uuid, batch_id uuid, ref text NOT NULL, accounting_date date NOT NULL,
        document text NOT NULL DEFAULT '')""",
    # The ERP's current version of each document read, and the per-account comparison of its lines with ours.
    "recon_erp_cur": "(n bigint NOT NULL, ref text NOT NULL, our_ref text NOT NULL, status text NOT NULL, "
                     "posting_date date)",
    "recon_cmp_lines": """(ref text NOT NULL, account text NOT NULL, our_debit numeric NOT NULL,
        our_credit numeric NOT NULL, erp_debit numeric NOT NULL, erp_credit numeric NOT NULL)""",
    # Posted journals that were re-posted after the ERP lost them: the document they live in now.
    "recon_reposts": "(journal_id uuid NOT NULL, ref text NOT NULL)",
}

# A break's scope from its columns (alias `b`): the check that decides it, as the run's `recon_scope` names it.
SCOPE_SQL = """CASE
    WHEN {b}.code IN ('missing_journal', 'journal_amount_mismatch', 'ledger_open_amount_mismatch')
        THEN 'doc:' || {b}.document
    WHEN {b}.code IN ('ar_control_mismatch', 'unapplied_cash_mismatch') THEN 'entity:' || {b}.code
    WHEN {b}.code = 'erp_balance_mismatch' THEN 'balance:' || {b}.account || ':' || {b}.period
    WHEN {b}.code = 'unexpected_in_erp' OR {b}.journal_id IS NULL THEN 'erp:' || {b}.erp_document_ref
    ELSE 'journal:' || {b}.journal_id::text
END"""


def scope_sql(alias: str) -> str:
    return SCOPE_SQL.format(b=alias)


def _drop(cursor) -> None:
    cursor.execute("DROP TABLE IF EXISTS " + ", ".join(f"pg_temp.{name}" for name in TABLES))


@contextmanager
def temp_tables():
    """Create the run's temporary tables (dropping any a crashed run of this session left) and drop them after."""
    with connection.cursor() as cursor:
        _drop(cursor)
        for name, columns in TABLES.items():
            cursor.execute(f"CREATE TEMP TABLE {name} {columns} ON COMMIT PRESERVE ROWS")
    try:
        yield
    finally:
        if connection.needs_rollback or (connection.in_atomic_block and connection.connection is not None
                                         and _aborted()):
            return  # the enclosing transaction is rolled back, and the tables with it
        with connection.cursor() as cursor:
            _drop(cursor)


def _aborted() -> bool:
    """The current transaction is aborted (an error not yet rolled back): nothing can run in it."""
    return connection.connection.info.transaction_status == TransactionStatus.INERROR
