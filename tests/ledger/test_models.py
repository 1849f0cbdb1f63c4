"""The database itself refuses what the ledger and the audit log must never contain.

Journals: one that does not balance (or has no lines) is refused at COMMIT by the deferred constraint
trigger, whether written through the ORM or raw SQL; a posted journal and its lines never change (ORM
save / update / delete and raw SQL UPDATE / DELETE / INSERT are all refused); journals are never
truncated; money columns are non-negative with exactly one side per line.

Audit log: entries and seals are append-only: UPDATE, DELETE and TRUNCATE are refused, through the
ORM and raw SQL.

Our triggers raise `restrict_violation` / `check_violation`, which Django surfaces as IntegrityError.
Tests on the `db` fixture run inside one transaction that never commits, so they fire the deferred
checks with `SET CONSTRAINTS ALL IMMEDIATE` (exactly what COMMIT would run); the `transactional_db`
tests commit for real.
"""
import datetime
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import ProtectedError
from django.utils import timezone

from audit import services as audit
from audit.models import AuditEntry, AuditSeal
from config.errors import TieoutError
from ledger import services as ledger
from ledger.models import Account, Journal, JournalLine

pytestmark = pytest.mark.django_db

DAY = datetime.date(2026, 11, 1)


# ------------------------------------------------------------------------------------------- helpers
def _account(entity, code: str) -> Account:
    return Account.objects.get(entity=entity, code=code)


def _journal(entity, **kw) -> Journal:
    fields = {"status": Journal.Status.READY, "accounting_date": DAY, "kind": "manual"} | kw
    return Journal.objects.create(entity=entity, **fields)


def _line(journal, line_no: int, account: Account, debit="0", credit="0") -> JournalLine:
    return JournalLine.objects.create(journal=journal, line_no=line_no, account=account, debit=Decimal(debit),
                                      credit=Decimal(credit))


def _commit_checks() -> None:
    """Fire the pending deferred constraint triggers now, as COMMIT would, then defer again."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def _sql(statement: str, params=None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def _refused(fn, *args):
    """`fn` fails with IntegrityError; its savepoint rolls back, the test's transaction goes on."""
    with pytest.raises(IntegrityError) as info:
        with transaction.atomic():
            fn(*args)
            _commit_checks()
    return info.value


def _posted_journal(entity) -> Journal:
    """A balanced journal written and posted through the ledger services (built-in connector)."""
    spec = ledger.JournalSpec(entity=entity, accounting_date=DAY, kind="manual", lines=[
        ledger.LineSpec(debit=Decimal("100.00"), role="receivable", customer_id="cus_1", invoice_id="inv_1"),
        ledger.LineSpec(credit=Decimal("93.00"), role="revenue", customer_id="cus_1", invoice_id="inv_1"),
        ledger.LineSpec(credit=Decimal("7.00"), role="tax_payable", jurisdiction="US-CA"),
    ])
    with transaction.atomic():
        journal = ledger.journal_create(spec, actor="test")
    outcome = ledger.journal_post(journal_id=journal.pk, actor="test")
    assert outcome.status == Journal.Status.POSTED
    _commit_checks()  # the posted journal itself is sound
    journal.refresh_from_db()
    return journal


def _snapshot(journal: Journal):
    row = Journal.objects.filter(pk=journal.pk).values(
        "status", "description", "erp_document_ref", "posted_at", "accounting_date").get()
    lines = list(JournalLine.objects.filter(journal=journal).order_by("line_no").values_list(
        "line_no", "account_id", "debit", "credit", "memo"))
    return row, lines


# ------------------------------------------------------------------------------------------- balance at commit
@pytest.mark.django_db(transaction=True)
def test_unbalanced_journal_through_the_orm_is_refused_at_commit(entity):
    with pytest.raises(IntegrityError, match="does not balance"):
        with transaction.atomic():
            journal = _journal(entity)
            _line(journal, 1, _account(entity, "1200"), debit="100.00")
            _line(journal, 2, _account(entity, "4000"), credit="90.00")
    assert not Journal.objects.exists()
    assert not JournalLine.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_unbalanced_journal_through_raw_sql_is_refused_at_commit(entity):
    receivable, revenue = _account(entity, "1200"), _account(entity, "4000")
    with pytest.raises(IntegrityError, match="does not balance"):
        with transaction.atomic(), connection.cursor() as cursor:
            # Lines first, journal last: the check is deferred, so the order inside the transaction is free.
            cursor.execute("SELECT gen_random_uuid()")
            jid = cursor.fetchone()[0]
            cursor.execute(
                "INSERT INTO ledger_journalline (journal_id, line_no, account_id, debit, credit, customer_id, "
                "invoice_id, payment_id, jurisdiction, memo) VALUES "
                "(%s, 1, %s, 50, 0, '', '', '', '', ''), (%s, 2, %s, 0, 49.99, '', '', '', '', '')",
                [jid, receivable.pk, jid, revenue.pk])
            cursor.execute(
                "INSERT INTO ledger_journal (id, entity_id, status, accounting_date, kind, source_system, "
                "document_type, document_id, description, correlation_id, created_at, created_by, "
                "posting_attempts, last_error) VALUES (%s, %s, 'ready', %s, 'manual', '', '', '', '', '', now(), "
                "'sql', 0, '')", [jid, entity.pk, DAY])
    assert not Journal.objects.exists()
    assert not JournalLine.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_journal_without_lines_is_refused_at_commit(entity):
    with pytest.raises(IntegrityError, match="0 lines"):
        with transaction.atomic():
            _journal(entity)
    assert not Journal.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_balanced_journal_commits(entity):
    with transaction.atomic():
        journal = _journal(entity)
        _line(journal, 1, _account(entity, "1200"), debit="100.00")
        _line(journal, 2, _account(entity, "4000"), credit="92.75")
        _line(journal, 3, _account(entity, "2200"), credit="7.25")
    assert Journal.objects.get(pk=journal.pk).lines.count() == 3


def test_unbalanced_journal_is_refused_by_the_deferred_check(entity):
    def write():
        journal = _journal(entity)
        _line(journal, 1, _account(entity, "1200"), debit="10.00")
        _line(journal, 2, _account(entity, "4000"), credit="10.01")

    error = _refused(write)
    assert "does not balance" in str(error)


def test_a_line_change_that_unbalances_an_unposted_journal_is_refused(entity):
    journal = _journal(entity)
    _line(journal, 1, _account(entity, "1200"), debit="10.00")
    line = _line(journal, 2, _account(entity, "4000"), credit="10.00")
    _commit_checks()

    def update():
        JournalLine.objects.filter(pk=line.pk).update(credit=Decimal("9.00"))

    def delete():
        JournalLine.objects.filter(pk=line.pk).delete()

    def delete_every_line():
        JournalLine.objects.filter(journal=journal).delete()

    _refused(update)
    _refused(delete)
    assert "0 lines" in str(_refused(delete_every_line))
    assert journal.lines.count() == 2


def test_journal_create_refuses_to_write_an_unbalanced_journal(entity):
    spec = ledger.JournalSpec(entity=entity, accounting_date=DAY, kind="manual", lines=[
        ledger.LineSpec(debit=Decimal("1.00"), role="receivable"),
        ledger.LineSpec(credit=Decimal("2.00"), role="revenue"),
    ])
    with pytest.raises(TieoutError, match="does not balance"):
        with transaction.atomic():
            ledger.journal_create(spec, actor="test")
    assert not Journal.objects.exists()


# ------------------------------------------------------------------------------------------- posted journals
def test_posted_journal_has_a_ref_and_the_database_requires_one(entity):
    journal = _journal(entity)
    _line(journal, 1, _account(entity, "1200"), debit="1.00")
    _line(journal, 2, _account(entity, "4000"), credit="1.00")

    def post_without_ref():
        Journal.objects.filter(pk=journal.pk).update(status=Journal.Status.POSTED, posted_at=timezone.now())

    _refused(post_without_ref)
    posted = _posted_journal(entity)
    assert posted.erp_document_ref == "JE-US01-2026-000001"


def _orm_save(journal):
    journal.description = "edited after posting"
    journal.save()


def _orm_save_status(journal):
    journal.status = Journal.Status.READY
    journal.save(update_fields=["status"])


def _orm_update(journal):
    Journal.objects.filter(pk=journal.pk).update(description="edited after posting")


def _orm_update_ref(journal):
    Journal.objects.filter(pk=journal.pk).update(erp_document_ref="JE-US01-2026-999999")


def _orm_raw_delete(journal):
    # The ORM's own DELETE statement, without the collector (which refuses first: see the next test).
    qs = Journal.objects.filter(pk=journal.pk)
    qs._raw_delete(qs.db)


def _sql_update(journal):
    _sql("UPDATE ledger_journal SET description = 'edited' WHERE id = %s", [journal.pk])


def _sql_update_date(journal):
    _sql("UPDATE ledger_journal SET accounting_date = accounting_date + 1 WHERE id = %s", [journal.pk])


def _sql_unpost(journal):
    _sql("UPDATE ledger_journal SET status = 'ready', erp_document_ref = NULL, posted_at = NULL WHERE id = %s",
         [journal.pk])


def _sql_delete(journal):
    _sql("DELETE FROM ledger_journal WHERE id = %s", [journal.pk])


@pytest.mark.parametrize("change", [
    _orm_save, _orm_save_status, _orm_update, _orm_update_ref, _orm_raw_delete,
    _sql_update, _sql_update_date, _sql_unpost, _sql_delete,
])
def test_a_posted_journal_never_changes(entity, change):
    journal = _posted_journal(entity)
    before = _snapshot(journal)
    error = _refused(change, journal)
    assert "is posted and cannot change" in str(error)
    assert _snapshot(journal) == before


def test_orm_delete_of_a_posted_journal_is_refused(entity):
    journal = _posted_journal(entity)
    before = _snapshot(journal)
    with pytest.raises((ProtectedError, IntegrityError)):
        with transaction.atomic():
            journal.delete()
    assert _snapshot(journal) == before


def _line_orm_save(journal):
    line = journal.lines.order_by("line_no").first()
    line.memo = "edited"
    line.save()


def _line_orm_save_amounts(journal):
    # Still balanced, still refused: a posted journal's lines never change.
    first, second = journal.lines.order_by("line_no")[:2]
    first.debit, second.credit = first.debit + 1, second.credit + 1
    first.save()
    second.save()


def _line_orm_update(journal):
    JournalLine.objects.filter(journal=journal).update(customer_id="someone-else")


def _line_orm_update_account(journal):
    other = Account.objects.get(entity=journal.entity, code="4900")
    JournalLine.objects.filter(journal=journal, account__code="4000").update(account=other)


def _line_orm_delete(journal):
    journal.lines.order_by("line_no").last().delete()


def _line_orm_queryset_delete(journal):
    JournalLine.objects.filter(journal=journal).delete()


def _line_orm_insert(journal):
    _line(journal, 99, _account(journal.entity, "1200"), debit="5.00")


def _line_orm_insert_balanced_pair(journal):
    JournalLine.objects.bulk_create([
        JournalLine(journal=journal, line_no=98, account=_account(journal.entity, "1200"), debit=Decimal("5")),
        JournalLine(journal=journal, line_no=99, account=_account(journal.entity, "4000"), credit=Decimal("5")),
    ])


def _line_sql_update(journal):
    _sql("UPDATE ledger_journalline SET debit = debit + 1 WHERE journal_id = %s AND debit > 0", [journal.pk])


def _line_sql_move(journal):
    # Moving a line out of a posted journal into another one is a change too.
    other = _journal(journal.entity)
    _sql("UPDATE ledger_journalline SET journal_id = %s WHERE journal_id = %s AND line_no = 1", [other.pk, journal.pk])


def _line_sql_delete(journal):
    _sql("DELETE FROM ledger_journalline WHERE journal_id = %s", [journal.pk])


def _line_sql_insert(journal):
    _sql("INSERT INTO ledger_journalline (journal_id, line_no, account_id, debit, credit, customer_id, invoice_id, "
         "payment_id, jurisdiction, memo) VALUES (%s, 50, %s, 1, 0, '', '', '', '', ''), "
         "(%s, 51, %s, 0, 1, '', '', '', '', '')",
         [journal.pk, _account(journal.entity, "1200").pk, journal.pk, _account(journal.entity, "4000").pk])


@pytest.mark.parametrize("change", [
    _line_orm_save, _line_orm_save_amounts, _line_orm_update, _line_orm_update_account, _line_orm_delete,
    _line_orm_queryset_delete, _line_orm_insert, _line_orm_insert_balanced_pair,
    _line_sql_update, _line_sql_move, _line_sql_delete, _line_sql_insert,
])
def test_the_lines_of_a_posted_journal_never_change(entity, change):
    journal = _posted_journal(entity)
    before = _snapshot(journal)
    error = _refused(change, journal)
    assert "lines of posted journal" in str(error)
    assert _snapshot(journal) == before


def test_a_line_cannot_be_moved_into_a_posted_journal(entity):
    journal = _posted_journal(entity)
    other = _journal(entity)
    line = _line(other, 1, _account(entity, "1200"), debit="3.00")
    _line(other, 2, _account(entity, "4000"), credit="3.00")
    before = _snapshot(journal)

    def move():
        JournalLine.objects.filter(pk=line.pk).update(journal=journal)

    _refused(move)
    assert _snapshot(journal) == before


@pytest.mark.parametrize("statement", [
    "TRUNCATE ledger_journal CASCADE",
    "TRUNCATE ledger_journalline",
    "TRUNCATE ledger_journalline CASCADE",
])
def test_journals_are_never_truncated(entity, statement):
    journal = _posted_journal(entity)
    unposted = _journal(entity)
    _line(unposted, 1, _account(entity, "1200"), debit="3.00")
    _line(unposted, 2, _account(entity, "4000"), credit="3.00")
    _commit_checks()  # TRUNCATE refuses to run with trigger events pending; flush them first.
    error = _refused(_sql, statement)
    assert "TRUNCATE on ledger_journal" in str(error)
    assert Journal.objects.filter(pk__in=[journal.pk, unposted.pk]).count() == 2
    assert JournalLine.objects.count() == 5


# ------------------------------------------------------------------------------------------- money columns
@pytest.mark.parametrize("debit, credit, constraint", [
    ("-5.00", "0", "line_money_non_negative"),
    ("0", "-5.00", "line_money_non_negative"),
    ("-5.00", "-5.00", "line_money_non_negative"),
    ("5.00", "5.00", "line_one_side"),
    ("5.00", "0.01", "line_one_side"),
    ("0", "0", "line_one_side"),
])
def test_money_checks_on_lines_through_the_orm(entity, debit, credit, constraint):
    with pytest.raises(IntegrityError, match=constraint):
        with transaction.atomic():
            journal = _journal(entity)
            _line(journal, 1, _account(entity, "1200"), debit=debit, credit=credit)


@pytest.mark.parametrize("debit, credit, constraint", [
    ("-1", "0", "line_money_non_negative"),
    ("0", "-1", "line_money_non_negative"),
    ("1", "1", "line_one_side"),
    ("0", "0", "line_one_side"),
])
def test_money_checks_on_lines_through_raw_sql(entity, debit, credit, constraint):
    with pytest.raises(IntegrityError, match=constraint):
        with transaction.atomic():
            journal = _journal(entity)
            _sql("INSERT INTO ledger_journalline (journal_id, line_no, account_id, debit, credit, customer_id, "
                 "invoice_id, payment_id, jurisdiction, memo) VALUES (%s, 1, %s, %s, %s, '', '', '', '', '')",
                 [journal.pk, _account(entity, "1200").pk, debit, credit])


def test_money_checks_on_update_of_an_unposted_line(entity):
    journal = _journal(entity)
    line = _line(journal, 1, _account(entity, "1200"), debit="5.00")
    _line(journal, 2, _account(entity, "4000"), credit="5.00")
    with pytest.raises(IntegrityError, match="line_one_side"):
        with transaction.atomic():
            JournalLine.objects.filter(pk=line.pk).update(credit=Decimal("5.00"))
    with pytest.raises(IntegrityError, match="line_money_non_negative"):
        with transaction.atomic():
            _sql("UPDATE ledger_journalline SET debit = -5 WHERE id = %s", [line.pk])


def test_erp_document_refs_are_unique(entity):
    first = _posted_journal(entity)
    other = _journal(entity)
    _line(other, 1, _account(entity, "1200"), debit="1.00")
    _line(other, 2, _account(entity, "4000"), credit="1.00")
    with pytest.raises(IntegrityError):
        with transaction.atomic():
            Journal.objects.filter(pk=other.pk).update(
                status=Journal.Status.POSTED, erp_document_ref=first.erp_document_ref, posted_at=timezone.now())


# ------------------------------------------------------------------------------------------- audit log
def _entry(action="test.happened") -> AuditEntry:
    with transaction.atomic():
        return audit.record(actor="test", action=action, object_type="thing", object_id="1",
                            after={"amount": Decimal("1.00")})


def _entry_row(entry):
    return AuditEntry.objects.filter(pk=entry.pk).values(
        "at", "actor", "action", "object_type", "object_id", "content", "correlation_id", "entry_hash").first()


def _entry_save(entry):
    entry.action = "test.rewritten"
    entry.save()


def _entry_update(entry):
    AuditEntry.objects.filter(pk=entry.pk).update(content=entry.content.replace("}", ",\"x\":1}", 1))


def _entry_update_all(entry):
    AuditEntry.objects.all().update(actor="nobody")


def _entry_delete(entry):
    entry.delete()


def _entry_queryset_delete(entry):
    AuditEntry.objects.filter(pk=entry.pk).delete()


def _entry_sql_update(entry):
    _sql("UPDATE audit_auditentry SET entry_hash = repeat('0', 64) WHERE id = %s", [entry.pk])


def _entry_sql_delete(entry):
    _sql("DELETE FROM audit_auditentry WHERE id = %s", [entry.pk])


def _entry_sql_truncate_cascade(entry):
    _sql("TRUNCATE audit_auditentry CASCADE")


def _entry_sql_truncate_both(entry):
    _sql("TRUNCATE audit_auditentry, audit_auditseal")


@pytest.mark.parametrize("change", [
    _entry_save, _entry_update, _entry_update_all, _entry_delete, _entry_queryset_delete,
    _entry_sql_update, _entry_sql_delete, _entry_sql_truncate_cascade, _entry_sql_truncate_both,
])
def test_audit_entries_are_append_only(entity, change):
    entry = _entry()
    before = _entry_row(entry)
    count = AuditEntry.objects.count()
    _commit_checks()
    error = _refused(change, entry)
    assert "append-only" in str(error)
    assert _entry_row(entry) == before
    assert AuditEntry.objects.count() == count


def _seal_save(seal):
    seal.chain_hash = "0" * 64
    seal.save()


def _seal_update(seal):
    AuditSeal.objects.filter(pk=seal.pk).update(entry_hash="f" * 64)


def _seal_delete(seal):
    seal.delete()


def _seal_queryset_delete(seal):
    AuditSeal.objects.filter(seq__gte=seal.seq).delete()


def _seal_sql_update(seal):
    _sql("UPDATE audit_auditseal SET prev_hash = chain_hash WHERE seq = %s", [seal.seq])


def _seal_sql_renumber(seal):
    _sql("UPDATE audit_auditseal SET seq = seq + 1000")


def _seal_sql_delete(seal):
    _sql("DELETE FROM audit_auditseal WHERE seq = %s", [seal.seq])


def _seal_sql_truncate(seal):
    _sql("TRUNCATE audit_auditseal")


@pytest.mark.parametrize("change", [
    _seal_save, _seal_update, _seal_delete, _seal_queryset_delete,
    _seal_sql_update, _seal_sql_renumber, _seal_sql_delete, _seal_sql_truncate,
])
def test_the_audit_chain_is_append_only(entity, change):
    _entry()
    result = audit.chain_seal()
    assert result.sealed >= 1
    seal = AuditSeal.objects.get(seq=result.head_seq)
    rows = list(AuditSeal.objects.order_by("seq").values_list(
        "seq", "entry_id", "entry_hash", "prev_hash", "chain_hash"))
    _commit_checks()
    error = _refused(change, seal)
    assert "append-only" in str(error)
    assert list(AuditSeal.objects.order_by("seq").values_list(
        "seq", "entry_id", "entry_hash", "prev_hash", "chain_hash")) == rows
    assert audit.chain_verify().ok


def test_a_sealed_entry_cannot_be_deleted_either(entity):
    entry = _entry()
    audit.chain_seal()
    _commit_checks()
    with pytest.raises((ProtectedError, IntegrityError)):
        with transaction.atomic():
            entry.delete()
    _refused(_entry_sql_delete, entry)
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


def test_audit_entries_can_still_be_appended(entity):
    first = _entry("test.one")
    second = _entry("test.two")
    assert second.pk > first.pk
    assert audit.chain_seal().sealed >= 2
    assert audit.chain_verify().ok
