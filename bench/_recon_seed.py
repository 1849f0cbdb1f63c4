"""Seeding for bench/reconciliation.py: invoices 1..N of entity BENCH with their journals, payments, allocations,
applications, refunds, credit notes and write-offs, in a few set-based `INSERT ... SELECT generate_series`
statements per size step (additive: invoices lo+1..hi, so the bench seeds 200,000 and then grows to 1,000,000).

Everything is a function of the invoice number g, by the posting rules of POSTING_RULES.md (journals `ready`:
booked in Tieout's ledger, not yet sent to the ERP, so a run's ERP side has nothing to compare and the time is
the billing ↔ ledger part): invoice g (customer 1 + g % 10,000, issued on 1 November 2026 + g % 30 days,
subtotal 10.00..909.99 with 7.25 % tax) has an `invoice` journal (Dr receivable, Cr revenue, Cr tax payable,
lines naming the invoice); by g % 20 it is paid in full by payment g (0-9, a third of them with a card fee),
half paid (10-11), overpaid by 10.00 left unapplied (12), paid by a payment received unapplied and applied the
next day (13, a `payment_application` journal), or open with an unrelated 50.00 payment on account (14) or no
payment (15-19): about 750,000 payments at 1,000,000 invoices, each with its `payment` journal and its
allocation(s) and its event. One invoice in a thousand of some of these kinds carries more: a refund naming
the invoice (g % 1000 = 0), a refund of unapplied cash (14), an approved credit note (15), a write-off of the
whole invoice (16), a void (17: the journal and its `invoice_reversal`) or an amendment to version 2 (18: the
v1 journal, its reversal and the v2 journal). Rows are consistent by construction (the running totals of
invoices and payments match their documents), so they are inserted with `session_replication_role = replica`
(foreign-key and invariant triggers off, as a restore would be) and explicit ids.

`BREAKS` lists the deliberate faults (`faults`), all among the first 200,000 invoices so both sizes have them.
"""
from __future__ import annotations

SOURCE = "bench"
ENTITY = "BENCH"
CUSTOMERS = 10_000
MONTH = "2026-11-01"
DATE_FROM, DATE_TO = "2026-11-01", "2026-11-30"

# What a run should find: break code -> count (the faults below).
BREAKS = {"missing_journal": 2, "journal_amount_mismatch": 2, "ledger_open_amount_mismatch": 5,
          "ar_control_mismatch": 1, "unapplied_cash_mismatch": 1}

# Per invoice g: amounts, dates and what happens to it (see the module docstring).
FACTS_SQL = """
CREATE TEMP TABLE bench_g ON COMMIT DROP AS
SELECT g, m, s, cust, subtotal, tax, subtotal + tax AS total, inv_day, pay_day, LEAST(29, pay_day + 1) AS next_day,
       LEAST(29, inv_day + 2) AS doc_day,
       pay_amount, fee, alloc, applied_later,
       CASE WHEN s = 0 THEN 5.00 ELSE 0 END AS refund_inv,
       CASE WHEN s = 14 THEN 20.00 ELSE 0 END AS refund_unapplied,
       CASE WHEN s = 15 THEN round(subtotal / 4, 2) ELSE 0 END AS cn_amount,
       CASE WHEN s = 15 THEN round(round(subtotal / 4, 2) * 0.0725, 2) ELSE 0 END AS cn_tax,
       CASE WHEN s = 16 THEN subtotal + tax ELSE 0 END AS wo_amount,
       s = 17 AS voided, s = 18 AS amended,
       subtotal - 5 AS v1_subtotal, round((subtotal - 5) * 0.0725, 2) AS v1_tax
FROM (
    SELECT g, m, s, cust, subtotal, tax, inv_day, pay_day,
           CASE WHEN m < 10 THEN subtotal + tax WHEN m < 12 THEN round((subtotal + tax) / 2, 2)
                WHEN m = 12 THEN subtotal + tax + 10 WHEN m = 13 THEN subtotal + tax WHEN m = 14 THEN 50.00 END
               AS pay_amount,
           CASE WHEN m < 10 AND m % 3 = 0 THEN round((subtotal + tax) * 0.029 + 0.30, 2) ELSE 0 END AS fee,
           CASE WHEN m < 10 OR m = 12 THEN subtotal + tax WHEN m < 12 THEN round((subtotal + tax) / 2, 2)
                ELSE 0 END AS alloc,
           CASE WHEN m = 13 THEN subtotal + tax ELSE 0 END AS applied_later
    FROM (
        SELECT g, g % 20 AS m, g % 1000 AS s, 1 + g % {customers} AS cust,
               ((g * 7919) % 90000 + 1000) / 100.0 AS subtotal,
               round(((g * 7919) % 90000 + 1000) / 100.0 * 0.0725, 2) AS tax,
               (g % 30)::int AS inv_day, LEAST(29, g % 30 + g % 5)::int AS pay_day
        FROM generate_series({lo}::bigint + 1, {hi}) g
    ) base
) facts
"""

JOURNAL_COLUMNS = """(id, entity_id, status, accounting_date, kind, source_system, document_type, document_id,
    document_version, description, erp_document_ref, posted_at, correlation_id, created_at, created_by,
    posting_attempts, last_error, event_id, reverses_id, erp_batch_id, deliveries_lost)"""
LINE_COLUMNS = "(journal_id, line_no, account_id, debit, credit, customer_id, invoice_id, payment_id, jurisdiction, memo)"
EVENT_COLUMNS = """(id, source_system, event_id, type, entity_code, occurred_at, payload, payload_hash, status,
    correlation_id, received_at, response_body, processed_at, attempts)"""


def _day(column: str) -> str:
    return f"(DATE '{MONTH}' + {column})"


def _ts(column: str) -> str:
    return f"(TIMESTAMPTZ '{MONTH} 12:00:00+00' + {column} * interval '1 day')"


def _jid(prefix: str) -> str:
    return f"md5('bench-{prefix}-' || g)::uuid"


def _eid(prefix: str) -> str:
    return f"md5('bench-e{prefix}-' || g)::uuid"


def statements(lo: int, hi: int, entity: int, acc: dict[str, int]) -> list[tuple[str, str]]:
    """(label, SQL) for invoices lo+1..hi, in order; `acc` maps posting-rule roles to account ids."""
    ar, rev, tax, clr, fees, uc, ret, bad = (acc[r] for r in ("receivable", "revenue", "tax_payable", "clearing",
                                                              "fees", "unapplied_cash", "returns", "bad_debt"))
    cus = "'cus_' || cust"
    inv = "'in_' || g"
    pay = "'pay_' || g"
    journal = (f"INSERT INTO ledger_journal {JOURNAL_COLUMNS} SELECT {{id}}, {entity}, 'ready', {{date}}, {{kind}}, "
               f"'{SOURCE}', {{doc_type}}, {{doc_id}}, {{version}}, {{description}}, NULL, NULL, '', now(), 'bench', 0, "
               "'', {event}, {reverses}, NULL, 0 FROM bench_g WHERE {where}")
    event = (f"INSERT INTO billing_sync_event {EVENT_COLUMNS} SELECT {{id}}, '{SOURCE}', {{event_id}}, {{type}}, "
             f"'{ENTITY}', {{at}}, '{{{{}}}}'::jsonb, md5({{event_id}}), 'posted', '', {{at}}, '', {{at}}, 1 "
             "FROM bench_g WHERE {where}")

    def j(**kw) -> str:
        kw.setdefault("event", "NULL")
        kw.setdefault("reverses", "NULL")
        kw.setdefault("version", "NULL")
        return journal.format(**kw)

    def e(**kw) -> str:
        return event.format(**kw)

    # One line per (journal, slot) with a non-zero amount; line numbers count the slots before it that exist.
    def lines(journal_id: str, where: str, slots: list[tuple]) -> str:
        rows = []
        for n, (account, debit, credit, invoice, payment, juris) in enumerate(slots):
            line_no = " + ".join(["1"] + [f"(({d}) > 0 OR ({c}) > 0)::int" for _, d, c, *_ in slots[:n]])
            rows.append(f"({line_no}, {account}, {debit}, {credit}, {invoice}, {payment}, {juris})")
        return f"""
            INSERT INTO ledger_journalline {LINE_COLUMNS}
            SELECT {journal_id}, v.line_no, v.account, v.debit, v.credit, {cus}, v.invoice, v.payment, v.juris, ''
            FROM bench_g CROSS JOIN LATERAL (VALUES {", ".join(rows)})
                v(line_no, account, debit, credit, invoice, payment, juris)
            WHERE ({where}) AND (v.debit > 0 OR v.credit > 0)"""

    return [
        ("facts", FACTS_SQL.format(lo=lo, hi=hi, customers=CUSTOMERS)),
        ("invoices", f"""
            INSERT INTO billing_sync_invoice (id, source_system, invoice_id, entity_id, customer_id, number, currency,
                issue_date, due_date, subtotal, tax_total, total, version, status, applied_total, credited_total,
                written_off_total, refunded_total, current_journal_id, created_at)
            SELECT g, '{SOURCE}', {inv}, {entity}, cust, 'B-' || g, 'USD', {_day('inv_day')}, {_day('inv_day')} + 30,
                   subtotal, tax, total, CASE WHEN amended THEN 2 ELSE 1 END,
                   CASE WHEN voided THEN 'voided' ELSE 'open' END, alloc + applied_later, cn_amount + cn_tax,
                   wo_amount, refund_inv, CASE WHEN amended THEN {_jid('ji2')} ELSE {_jid('ji')} END, now()
            FROM bench_g"""),
        ("invoice journals", j(id=_jid("ji"), date=_day("inv_day"), kind="'invoice'", doc_type="'invoice'", doc_id=inv,
                               version="1", description="'Invoice B-' || g || ' v1'", where="TRUE")),
        ("invoice lines", lines(_jid("ji"), "NOT amended", [
            (ar, "total", 0, inv, "''", "''"), (rev, 0, "subtotal", inv, "''", "''"),
            (tax, 0, "tax", inv, "''", "'US-CA'")])
            + ";" + lines(_jid("ji"), "amended", [
                (ar, "v1_subtotal + v1_tax", 0, inv, "''", "''"), (rev, 0, "v1_subtotal", inv, "''", "''"),
                (tax, 0, "v1_tax", inv, "''", "'US-CA'")])),
        ("reversals and v2 journals", j(id=_jid("jr"), date=_day("doc_day"), kind="'invoice_reversal'",
                                        doc_type="'invoice'", doc_id=inv, version="1",
                                        description="'Reversal of invoice B-' || g", reverses=_jid("ji"),
                                        where="voided OR amended")
            + ";" + j(id=_jid("ji2"), date=_day("doc_day"), kind="'invoice'", doc_type="'invoice'", doc_id=inv,
                      version="2", description="'Invoice B-' || g || ' v2'", where="amended")),
        ("reversal and v2 lines", lines(_jid("jr"), "voided", [
            (ar, 0, "total", inv, "''", "''"), (rev, "subtotal", 0, inv, "''", "''"),
            (tax, "tax", 0, inv, "''", "'US-CA'")])
            + ";" + lines(_jid("jr"), "amended", [
                (ar, 0, "v1_subtotal + v1_tax", inv, "''", "''"), (rev, "v1_subtotal", 0, inv, "''", "''"),
                (tax, "v1_tax", 0, inv, "''", "'US-CA'")])
            + ";" + lines(_jid("ji2"), "amended", [
                (ar, "total", 0, inv, "''", "''"), (rev, 0, "subtotal", inv, "''", "''"),
                (tax, 0, "tax", inv, "''", "'US-CA'")])),
        ("payment events", e(id=_eid("p"), event_id="'evt_pay_' || g", type="'payment.received'",
                             at=_ts("pay_day"), where="pay_amount IS NOT NULL")
            + ";" + e(id=_eid("a"), event_id="'evt_app_' || g", type="'payment.applied'", at=_ts("next_day"),
                      where="applied_later > 0")),
        ("payments", f"""
            INSERT INTO billing_sync_payment (id, source_system, payment_id, entity_id, customer_id, currency, amount,
                fee, received_at, method, allocated_total, refunded_total, refunded_unapplied_total)
            SELECT g, '{SOURCE}', {pay}, {entity}, cust, 'USD', pay_amount, fee, {_ts('pay_day')},
                   CASE WHEN fee > 0 THEN 'card' ELSE 'bank_transfer' END, alloc + applied_later,
                   refund_inv + refund_unapplied, refund_unapplied
            FROM bench_g WHERE pay_amount IS NOT NULL"""),
        ("allocations", f"""
            INSERT INTO billing_sync_paymentallocation (payment_id, invoice_id, amount, event_id, created_at)
            SELECT g, g, alloc, {_eid('p')}, {_ts('pay_day')} FROM bench_g WHERE alloc > 0
            UNION ALL
            SELECT g, g, applied_later, {_eid('a')}, {_ts('next_day')} FROM bench_g WHERE applied_later > 0"""),
        ("payment journals", j(id=_jid("jp"), date=_day("pay_day"), kind="'payment'", doc_type="'payment'",
                               doc_id=pay, description="'Payment pay_' || g", event=_eid("p"),
                               where="pay_amount IS NOT NULL")
            + ";" + j(id=_jid("ja"), date=_day("next_day"), kind="'payment_application'", doc_type="'payment'",
                      doc_id=pay, description="'Application of payment pay_' || g", event=_eid("a"),
                      where="applied_later > 0")),
        ("payment lines", lines(_jid("jp"), "pay_amount IS NOT NULL", [
            (clr, "pay_amount - fee", 0, "''", pay, "''"), (fees, "fee", 0, "''", pay, "''"),
            (ar, 0, "alloc", inv, pay, "''"), (uc, 0, "pay_amount - alloc", "''", pay, "''")])
            + ";" + lines(_jid("ja"), "applied_later > 0", [
                (uc, "applied_later", 0, "''", pay, "''"), (ar, 0, "applied_later", inv, pay, "''")])),
        ("refunds, credit notes, write-offs", ";".join([
            e(id=_eid("f"), event_id="'evt_ref_' || g", type="'payment.refunded'", at=_ts("next_day"),
              where="refund_inv + refund_unapplied > 0"),
            f"""INSERT INTO billing_sync_refund (source_system, refund_id, payment_id, invoice_id, currency, amount,
                    event_id)
                SELECT '{SOURCE}', 'ref_' || g, g, CASE WHEN refund_inv > 0 THEN g END, 'USD',
                       refund_inv + refund_unapplied, {_eid('f')}
                FROM bench_g WHERE refund_inv + refund_unapplied > 0""",
            j(id=_jid("jf"), date=_day("next_day"), kind="'refund'", doc_type="'refund'", doc_id="'ref_' || g",
              description="'Refund ref_' || g", event=_eid("f"), where="refund_inv + refund_unapplied > 0"),
            lines(_jid("jf"), "refund_inv > 0", [(ar, "refund_inv", 0, inv, pay, "''"),
                                                 (clr, 0, "refund_inv", "''", pay, "''")]),
            lines(_jid("jf"), "refund_unapplied > 0", [(uc, "refund_unapplied", 0, "''", pay, "''"),
                                                       (clr, 0, "refund_unapplied", "''", pay, "''")]),
            e(id=_eid("c"), event_id="'evt_cn_' || g", type="'credit_note.issued'", at=_ts("doc_day"),
              where="cn_amount > 0"),
            f"""INSERT INTO billing_sync_creditnote (source_system, credit_note_id, invoice_id, currency, amount,
                    tax_amount, taxes, reason, status, event_id)
                SELECT '{SOURCE}', 'cn_' || g, g, 'USD', cn_amount, cn_tax,
                       jsonb_build_array(jsonb_build_object('jurisdiction', 'US-CA', 'rate', '0.0725',
                                                            'amount', cn_tax::text)),
                       'bench', 'approved', {_eid('c')}
                FROM bench_g WHERE cn_amount > 0""",
            j(id=_jid("jc"), date=_day("doc_day"), kind="'credit_note'", doc_type="'credit_note'",
              doc_id="'cn_' || g", description="'Credit note cn_' || g", event=_eid("c"), where="cn_amount > 0"),
            lines(_jid("jc"), "cn_amount > 0", [(ret, "cn_amount", 0, inv, "''", "''"),
                                                (tax, "cn_tax", 0, inv, "''", "'US-CA'"),
                                                (ar, 0, "cn_amount + cn_tax", inv, "''", "''")]),
            e(id=_eid("w"), event_id="'evt_wo_' || g", type="'write_off.requested'", at=_ts("doc_day"),
              where="wo_amount > 0"),
            f"""INSERT INTO billing_sync_writeoff (source_system, write_off_id, invoice_id, currency, amount, reason,
                    status, event_id)
                SELECT '{SOURCE}', 'wo_' || g, g, 'USD', wo_amount, 'bench', 'approved', {_eid('w')}
                FROM bench_g WHERE wo_amount > 0""",
            j(id=_jid("jw"), date=_day("doc_day"), kind="'write_off'", doc_type="'write_off'",
              doc_id="'wo_' || g", description="'Write-off wo_' || g", event=_eid("w"), where="wo_amount > 0"),
            lines(_jid("jw"), "wo_amount > 0", [(bad, "wo_amount", 0, inv, "''", "''"),
                                                (ar, 0, "wo_amount", inv, "''", "''")]),
        ])),
    ]


CUSTOMERS_SQL = f"""
INSERT INTO billing_sync_customer (id, source_system, customer_id, entity_code, name, email, country, version)
SELECT k, '{SOURCE}', 'cus_' || k, '{ENTITY}', 'Bench customer ' || k, '', 'US', 1
FROM generate_series(1, {CUSTOMERS}) k
"""

# The seeded tables (vacuumed and analysed after each step) and their identity sequences (moved past the
# explicit ids).
TABLES = ("billing_sync_customer", "billing_sync_invoice", "billing_sync_payment", "billing_sync_paymentallocation",
          "billing_sync_refund", "billing_sync_creditnote", "billing_sync_writeoff", "billing_sync_event",
          "ledger_journal", "ledger_journalline")
SEQUENCES_SQL = ";".join(
    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
    for table in TABLES if table not in ("billing_sync_event", "ledger_journal"))

COUNTS_SQL = """
SELECT (SELECT count(*) FROM billing_sync_invoice WHERE entity_id = {entity}),
       (SELECT count(*) FROM billing_sync_payment WHERE entity_id = {entity}),
       (SELECT count(*) FROM ledger_journal WHERE entity_id = {entity}),
       (SELECT count(*) FROM ledger_journalline l JOIN ledger_journal j ON j.id = l.journal_id
        WHERE j.entity_id = {entity}),
       (SELECT count(*) FROM billing_sync_refund) + (SELECT count(*) FROM billing_sync_creditnote)
       + (SELECT count(*) FROM billing_sync_writeoff)
"""


def faults(entity: int, acc: dict[str, int]) -> str:
    """The deliberate breaks (`BREAKS`): what a run must find among the consistent rows."""
    ar, rev, clr, uc = acc["receivable"], acc["revenue"], acc["clearing"], acc["unapplied_cash"]

    def jid(name: str) -> str:
        return f"md5('bench-{name}')::uuid"

    manual = ", ".join(
        f"({jid(f'jm-{n}')}, {entity}, 'ready', DATE '{MONTH}' + 9, 'manual', '', 'manual_journal', 'MJ-{n}', NULL, "
        f"'Bench manual journal {n}', NULL, NULL, '', now(), 'bench', 0, '', NULL, NULL, NULL, 0)" for n in (1, 2, 3))
    return f"""
        -- invoice in_119 lost its journal: missing_journal, and its open amount has no receivable behind it
        DELETE FROM ledger_journalline WHERE journal_id = {jid('ji-119')};
        UPDATE billing_sync_invoice SET current_journal_id = NULL WHERE id = 119;
        DELETE FROM ledger_journal WHERE id = {jid('ji-119')};
        -- invoice in_139's journal books 1.00 more (receivable and revenue): journal_amount_mismatch, open amount
        UPDATE ledger_journalline SET debit = debit + 1 WHERE journal_id = {jid('ji-139')} AND line_no = 1;
        UPDATE ledger_journalline SET credit = credit + 1 WHERE journal_id = {jid('ji-139')} AND line_no = 2;
        -- billing counts 10.00 applied on in_159 that no payment booked: open amount
        UPDATE billing_sync_invoice SET applied_total = applied_total + 10 WHERE id = 159;
        -- payment pay_201 lost its journal: missing_journal, and in_201 keeps its receivable
        DELETE FROM ledger_journalline WHERE journal_id = {jid('jp-201')};
        DELETE FROM ledger_journal WHERE id = {jid('jp-201')};
        -- payment pay_221's journal clears 2.00 more, left as unapplied cash: journal_amount_mismatch
        UPDATE ledger_journalline SET debit = debit + 2 WHERE journal_id = {jid('jp-221')} AND line_no = 1;
        INSERT INTO ledger_journalline (journal_id, line_no, account_id, debit, credit, customer_id, invoice_id,
            payment_id, jurisdiction, memo)
        VALUES ({jid('jp-221')}, 9, {uc}, 0, 2, 'cus_222', '', 'pay_221', '', '');
        -- manual journals: on the receivable without an invoice, on unapplied cash without a payment, and on the
        -- receivable naming an invoice billing does not have (ar_control_mismatch, unapplied_cash_mismatch and
        -- an open-amount break for in_ghost)
        INSERT INTO ledger_journal (id, entity_id, status, accounting_date, kind, source_system, document_type,
            document_id, document_version, description, erp_document_ref, posted_at, correlation_id, created_at,
            created_by, posting_attempts, last_error, event_id, reverses_id, erp_batch_id, deliveries_lost)
        VALUES {manual};
        INSERT INTO ledger_journalline (journal_id, line_no, account_id, debit, credit, customer_id, invoice_id,
            payment_id, jurisdiction, memo)
        VALUES ({jid('jm-1')}, 1, {ar}, 100, 0, 'cus_1', '', '', '', ''),
               ({jid('jm-1')}, 2, {rev}, 0, 100, 'cus_1', '', '', '', ''),
               ({jid('jm-2')}, 1, {clr}, 50, 0, 'cus_1', '', '', '', ''),
               ({jid('jm-2')}, 2, {uc}, 0, 50, 'cus_1', '', '', '', ''),
               ({jid('jm-3')}, 1, {ar}, 75, 0, 'cus_1', 'in_ghost', '', '', ''),
               ({jid('jm-3')}, 2, {rev}, 0, 75, 'cus_1', 'in_ghost', '', '', '')
    """
