"""Reconciliation runs (billing_sync.services.reconciliation): each break code produced exactly, by realistic
means (a journal row edited as a superuser would, a manual journal through the manual journal path, a document
written without its journal, the ERP changed behind our back), with its expected and actual values; a later run
after the fix resolves the break and its exception ("resolved by run N", audited); marks; the run record is
immutable; a failed run opens nothing; incremental runs; one run at a time per entity; the break's actions.

Billing ↔ ledger cases run on the built-in ERP (our own records: it reads back what the ledger holds, so only
the ledger is in question); ledger ↔ ERP cases on the ERPNext stand-in (`tests.standins.erpnext`, the `erp`
fixture), changed with its helpers as a person would change ERPNext. Every ERP-side break code against every
vendor's stand-in is in test_reconciliation_vendors.py."""
import datetime
import uuid
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import DatabaseError, transaction

from audit.models import AuditEntry
from billing_sync import services
from billing_sync.reconciliation import billing as billing_checks
from billing_sync.models import (Event, Invoice, ReconciliationBreak, ReconciliationMark, ReconciliationRun,
                                 WriteOff)
from config.errors import Codes, TieoutError
from exceptions_queue import services as queue
from exceptions_queue.models import Approval, ExceptionRecord
from ledger import rules
from ledger import services as ledger
from ledger.models import ErpBatch, Journal, JournalLine
from tests import factories as f
from tests.audit.tamper import triggers_off
from tests.fixtures import erpnext_configure
from tests.helpers import send

pytestmark = pytest.mark.django_db
NOV = (datetime.date(2026, 11, 1), datetime.date(2026, 11, 30))
SS = f.SOURCE
BANK = "1000"  # an ERP account Tieout does not map: the other side of a manual entry booked in the ERP


def post_books(integration):
    """Customer cus_1; inv_1 and inv_2 (107.25 each); pay_1 50.00 on inv_1; pay_2 50.00 unapplied."""
    send(integration, f.customer("cus_1"))
    send(integration, f.invoice("inv_1", customer_id="cus_1"))
    send(integration, f.invoice("inv_2", customer_id="cus_1"))
    send(integration, f.payment("pay_1", customer_id="cus_1", amount="50.00", allocations=[("inv_1", "50.00")]))
    send(integration, f.payment("pay_2", customer_id="cus_1", amount="50.00"))
    assert not Journal.objects.exclude(status="posted").exists()


@pytest.fixture
def books(entity, integration):
    """The books, posted to the built-in ERP."""
    post_books(integration)
    return entity


@pytest.fixture
def erp_books(erp_us01, entity, integration):
    """The books, posted into the ERPNext stand-in (`erp`)."""
    post_books(integration)
    return entity


def run(entity, *, full=True, **kwargs) -> ReconciliationRun:
    result = services.reconciliation_run(entity=entity, date_from=NOV[0], date_to=NOV[1], full=full, actor="test",
                                         **kwargs)
    assert result.status == "finished", result.error
    return result


def open_breaks(code=None):
    qs = ReconciliationBreak.objects.filter(status="open").order_by("id")
    return list(qs.filter(code=code) if code else qs)


def mark(subject) -> str:
    row = ReconciliationMark.objects.filter(subject=subject).first()
    return row.status if row else "unreconciled"


def journal_of(kind, document_id) -> Journal:
    return Journal.objects.get(kind=kind, document_id=document_id)


def assert_resolved_by(brk: ReconciliationBreak, later: ReconciliationRun):
    brk.refresh_from_db()
    assert brk.status == "resolved"
    assert brk.resolved_by_run_id == later.pk
    assert brk.resolution == f"resolved by run {later.pk}"
    exc = ExceptionRecord.objects.get(pk=brk.exception_id)
    assert exc.status == "resolved" and exc.resolution == f"resolved by run {later.pk}"
    actions = set(AuditEntry.objects.filter(object_type="reconciliation_break", object_id=str(brk.pk))
                  .values_list("action", flat=True))
    assert {"reconciliation_break.opened", "reconciliation_break.resolved"} <= actions
    assert AuditEntry.objects.filter(object_type="exception", object_id=str(exc.pk), action="exception.resolved").exists()
    assert later.resolved >= 1


def edit_line(journal: Journal, account: str, **changes):
    """Rewrite a posted journal's line in place, as a superuser with the append-only triggers off would."""
    line = JournalLine.objects.get(journal=journal, account__code=account)
    assignments = ", ".join(f"{name} = %s" for name in changes)
    with triggers_off() as cursor:
        cursor.execute(f"UPDATE ledger_journalline SET {assignments} WHERE id = %s", [*changes.values(), line.pk])


# ------------------------------------------------------------------------------------------------ a clean run
def test_a_clean_history_matches_every_journal_and_document(erp_books):
    books = erp_books
    result = run(books)
    assert result.breaks == {} and result.resolved == 0
    assert ReconciliationBreak.objects.count() == 0
    journals = Journal.objects.filter(entity=books)
    subjects = {f"journal:{j.pk}" for j in journals} | {f"invoice:{SS}:inv_1", f"invoice:{SS}:inv_2",
                                                        f"payment:{SS}:pay_1", f"payment:{SS}:pay_2"}
    assert {m.subject: m.status for m in ReconciliationMark.objects.all()} == {s: "matched" for s in subjects}
    assert result.matched == len(subjects)
    assert result.erp_documents == journals.count() and result.erp_requests >= 2
    assert result.finished_at and result.erp_modified_since is None
    entries = AuditEntry.objects.filter(object_type="reconciliation_run", object_id=str(result.pk))
    assert set(entries.values_list("action", flat=True)) == {"reconciliation.started", "reconciliation.finished"}
    # A second run changes no mark (only changed marks are written): they keep the first run.
    again = run(books)
    assert set(ReconciliationMark.objects.values_list("run_id", flat=True)) == {result.pk}
    assert again.matched == result.matched


def test_a_finished_run_cannot_change_or_be_deleted(books):
    result = run(books)
    for statement in ("UPDATE billing_sync_reconciliationrun SET matched = 0 WHERE id = %s",
                      "DELETE FROM billing_sync_reconciliationrun WHERE id = %s"):
        with pytest.raises(DatabaseError, match="reconciliation run"), transaction.atomic():
            with transaction.get_connection().cursor() as cursor:
                cursor.execute(statement, [result.pk])
    with pytest.raises(DatabaseError), transaction.atomic():
        ReconciliationRun.objects.filter(pk=result.pk).update(error="x")


def test_marks_refer_to_a_run_of_their_entity_and_keep_the_entity(books):
    """The marks' references are checked once per statement by triggers (migration 0012), not by foreign keys."""
    result = run(books)
    other, _ = ledger.entity_setup(code="EU01", currency="EUR", actor="test")
    mark = ReconciliationMark.objects.filter(run=result).first()
    statements = [
        ("INSERT INTO billing_sync_reconciliationmark (subject, entity_id, status, checked_at, run_id) "
         "VALUES ('invoice:x:1', %s, 'matched', now(), %s)", [books.pk, result.pk + 1000]),  # no such run
        ("INSERT INTO billing_sync_reconciliationmark (subject, entity_id, status, checked_at, run_id) "
         "VALUES ('invoice:x:1', %s, 'matched', now(), %s)", [other.pk, result.pk]),  # a run of another entity
        ("UPDATE billing_sync_reconciliationmark SET entity_id = %s WHERE subject = %s", [other.pk + 1000,
                                                                                          mark.subject]),
        ("DELETE FROM ledger_entity WHERE id = %s", [books.pk]),
    ]
    for statement, params in statements:
        with pytest.raises(DatabaseError, match="reconciliation mark"), transaction.atomic():
            with transaction.get_connection().cursor() as cursor:
                cursor.execute(statement, params)
    # Many rows in one statement: one check, and a valid statement passes.
    with transaction.get_connection().cursor() as cursor:
        cursor.execute("""INSERT INTO billing_sync_reconciliationmark (subject, entity_id, status, checked_at, run_id)
                          SELECT 'invoice:x:' || g, %s, 'matched', now(), %s FROM generate_series(1, 500) g""",
                       [books.pk, result.pk])
    assert ReconciliationMark.objects.filter(subject__startswith="invoice:x:").count() == 500


def test_one_run_at_a_time_per_entity(books):
    first = services.reconciliation_run_start(entity=books, date_from=NOV[0], date_to=NOV[1], actor="test")
    with pytest.raises(TieoutError) as refused:
        services.reconciliation_run_start(entity=books, date_from=NOV[0], date_to=NOV[1], actor="test")
    assert refused.value.code == Codes.RECONCILIATION_RUNNING and refused.value.status == 409
    services.reconciliation_run_execute(run_id=first.pk)
    assert ReconciliationRun.objects.get(pk=first.pk).status == "finished"
    # Executing it again (a redelivered task) leaves it as it is.
    assert services.reconciliation_run_execute(run_id=first.pk).status == "finished"
    run(books)  # the entity is free again


def test_a_failed_run_is_recorded_and_opens_nothing(erp_books, erp, settings):
    erp.delete(journal_of("invoice", "inv_1").erp_document_ref)  # a break it would find
    erp.read_faults.add("error_503", settings.TIEOUT_READBACK_MAX_ATTEMPTS)  # every attempt of the first read
    result = services.reconciliation_run(entity=erp_books, date_from=NOV[0], date_to=NOV[1], full=True, actor="test")
    assert result.status == "failed" and result.error.startswith("TransientError: the ERP failed with 503")
    assert f"gave up after {settings.TIEOUT_READBACK_MAX_ATTEMPTS} attempts" in result.error
    assert result.finished_at and result.erp_requests == settings.TIEOUT_READBACK_MAX_ATTEMPTS
    assert ReconciliationBreak.objects.count() == 0 and ReconciliationMark.objects.count() == 0
    assert not ExceptionRecord.objects.filter(process="reconciliation").exists()
    assert AuditEntry.objects.filter(object_id=str(result.pk), action="reconciliation.failed").exists()


# ------------------------------------------------------------------------------------------------ billing ↔ ledger
def test_missing_journal_a_write_off_booked_without_its_journal(books):
    invoice = Invoice.objects.get(invoice_id="inv_2")
    event = Event.objects.filter(type="invoice.issued").first()
    WriteOff.objects.create(source_system=SS, write_off_id="wo_x", invoice=invoice, currency="USD",
                            amount=Decimal("10.00"), reason="uncollectible", status="approved", event=event)
    first = run(books)
    assert first.breaks == {"missing_journal": 1}
    [brk] = open_breaks()
    assert brk.document == f"write_off:{SS}:wo_x" and brk.account == "1200" and brk.journal_id is None
    assert brk.expected == {"side": "billing", "journal_kind": "write_off", "amount": "10.00"}
    assert brk.actual == {"side": "ledger", "journals": 0}
    exc = brk.exception
    assert (exc.process, exc.code, exc.status, exc.entity_code) == ("reconciliation", "missing_journal", "open", "US01")
    assert exc.owner is None and "wo_x" in exc.message and exc.amount == Decimal("10.00")
    assert mark(f"write_off:{SS}:wo_x") == "break"
    # The fix: the write-off's journal booked as the posting rule says, and the invoice's total with it.
    with transaction.atomic():
        ledger.journal_create(rules.write_off(entity=books, source_system=SS, write_off_id="wo_x", invoice_id="inv_2",
                                              customer_id="cus_1", amount=Decimal("10.00"), on=NOV[0],
                                              event_id=event.pk, needs_approval=False), actor="test")
        Invoice.objects.filter(pk=invoice.pk).update(written_off_total=Decimal("10.00"))
    later = run(books)
    assert later.breaks == {}
    assert_resolved_by(brk, later)
    assert mark(f"write_off:{SS}:wo_x") == "matched"


def test_journal_amount_mismatch_a_posted_journal_edited_in_the_database(books):
    journal = journal_of("payment", "pay_2")
    edit_line(journal, "1010", debit=Decimal("45.00"))
    first = run(books)
    assert first.breaks == {"journal_amount_mismatch": 1}
    [brk] = open_breaks()
    assert (brk.document, brk.journal_id, brk.account) == (f"payment:{SS}:pay_2", journal.pk, "1010")
    assert brk.expected == {"side": "billing", "journal_kind": "payment", "amount": "50.00"}
    assert brk.actual == {"side": "ledger", "amount": "45.00"}
    assert mark(f"payment:{SS}:pay_2") == "break" and mark(f"journal:{journal.pk}") == "break"
    edit_line(journal, "1010", debit=Decimal("50.00"))
    later = run(books)
    assert later.breaks == {}
    assert_resolved_by(brk, later)
    assert mark(f"journal:{journal.pk}") == "matched"


def test_ledger_open_amount_mismatch_a_payment_line_moved_to_another_invoice(books):
    journal = journal_of("payment", "pay_1")
    edit_line(journal, "1200", invoice_id="inv_2")
    first = run(books)
    assert first.breaks == {"ledger_open_amount_mismatch": 2}
    by_doc = {b.document: b for b in open_breaks()}
    assert by_doc[f"invoice:{SS}:inv_1"].expected == {"side": "billing", "open_amount": "57.25"}
    assert by_doc[f"invoice:{SS}:inv_1"].actual == {"side": "ledger", "receivable_balance": "107.25"}
    assert by_doc[f"invoice:{SS}:inv_2"].expected == {"side": "billing", "open_amount": "107.25"}
    assert by_doc[f"invoice:{SS}:inv_2"].actual == {"side": "ledger", "receivable_balance": "57.25"}
    edit_line(journal, "1200", invoice_id="inv_1")
    later = run(books)
    assert later.breaks == {} and later.resolved == 2
    for brk in by_doc.values():
        assert_resolved_by(brk, later)


def _manual_journal(entity, maker, checker, capture, lines, description):
    """A manual journal through the manual journal path: written by one person, approved by a controller."""
    users = get_user_model().objects
    with capture(execute=True):
        journal = queue.manual_journal_create(entity=entity, accounting_date=datetime.date(2026, 11, 20), lines=lines,
                                              description=description, user=users.get(username=maker))
    approval = Approval.objects.get(journal=journal)
    with capture(execute=True):
        queue.approval_approve(approval_id=approval.pk, user=users.get(username=checker), comment="ok")
    journal.refresh_from_db()
    assert journal.status == "posted"
    return journal


@pytest.mark.parametrize("code, account, other, billing, ledger_before", [
    ("ar_control_mismatch", "1200", "4000", "164.50", "264.50"),
    ("unapplied_cash_mismatch", "2300", "1010", "50.00", "150.00"),
])
def test_control_account_mismatch_a_manual_journal_on_the_control_account(
        books, finance, controller, django_capture_on_commit_callbacks, code, account, other, billing, ledger_before):
    capture = django_capture_on_commit_callbacks
    # Dr 1200 (receivable grows) / Cr 2300 (unapplied cash grows): the side that grows the account's balance.
    lines = [(account, "100.00", "", "by hand"), (other, "", "100.00", "")] if account == "1200" else [
        (other, "100.00", "", ""), (account, "", "100.00", "by hand")]
    _manual_journal(books, "fiona-ops", "carl-controller", capture, lines, "Correction by hand")
    first = run(books)
    assert first.breaks == {code: 1}
    [brk] = open_breaks()
    assert brk.account == account and brk.period == "" and brk.document == ""
    assert brk.expected == {"side": "billing", "amount": billing}
    assert brk.actual == {"side": "ledger", "balance": ledger_before}
    reverse = [(a, c, d, m) for a, d, c, m in lines]
    _manual_journal(books, "fiona-ops", "carl-controller", capture, reverse, "Reversal of the correction")
    later = run(books)
    assert later.breaks == {}
    assert_resolved_by(brk, later)


# ------------------------------------------------------------------------------------------------ ledger ↔ ERP
# Each ERP-side code, found and resolved, against every vendor: test_reconciliation_vendors.py. Here, what the
# engine does around them.
def test_missing_in_erp_is_looked_up_by_reference_before_it_is_called_missing(erp_books, erp):
    journal = journal_of("invoice", "inv_1")
    erp.delete(journal.erp_document_ref)
    first = run(erp_books)
    assert first.breaks == {"missing_in_erp": 1}
    [brk] = open_breaks()
    assert (brk.journal_id, brk.erp_document_ref) == (journal.pk, journal.erp_document_ref)
    # The listing did not return it: ERPNext was asked for the document by name, and answered 404.
    assert ("GET", f"/api/resource/Journal%20Entry/{journal.erp_document_ref}") in erp.requests
    assert mark(f"journal:{journal.pk}") == "break" and mark(f"invoice:{SS}:inv_1") == "break"


def test_unexpected_in_erp_a_reference_no_journal_of_ours_has(erp_books, erp):
    """A document carrying a reference of our form that no journal or batch of ours has (another system's, or
    typed by hand): a break of its own; cancelled in the ERP, it no longer counts."""
    stray = str(uuid.uuid4())
    name = erp.add_manual_entry(account="1200", amount="5.00", against="4000", posting_date="2026-11-10",
                                cheque_no=stray)
    assert run(erp_books).breaks == {"unexpected_in_erp": 1}
    [brk] = open_breaks()
    assert (brk.journal_id, brk.erp_document_ref, brk.document, brk.period) == (None, name, "", "2026-11")
    assert brk.expected == {"side": "ledger", "our_ref": stray, "known": False}
    assert brk.actual == {"side": "erp", "erp_document_ref": name, "our_ref": stray, "posting_date": "2026-11-10"}
    assert stray in brk.exception.message
    erp.cancel(name)
    assert_resolved_by(brk, run(erp_books))


def test_marks_and_an_accepted_difference_stays_accepted(erp_books, erp, controller, finance):
    books = erp_books
    users = get_user_model().objects
    erp.add_manual_entry(account="1200", amount="3.00", against=BANK, posting_date="2026-11-15")
    run(books)
    [brk] = open_breaks()
    with pytest.raises(TieoutError) as refused:
        services.reconciliation_break_accept(break_id=brk.pk, reason="rounding", user=users.get(username="fiona-ops"))
    assert refused.value.code == Codes.PERMISSION_DENIED
    with pytest.raises(TieoutError) as refused:
        services.reconciliation_break_accept(break_id=brk.pk, reason=" ", user=users.get(username="carl-controller"))
    assert refused.value.code == Codes.INVALID_REQUEST
    services.reconciliation_break_accept(break_id=brk.pk, reason="ERP rounding entry, agreed with the auditors",
                                         user=users.get(username="carl-controller"))
    brk.refresh_from_db()
    assert brk.status == "resolved" and brk.accepted_by == "carl-controller"
    assert brk.exception.status == "resolved" and "agreed with the auditors" in brk.exception.resolution
    assert AuditEntry.objects.filter(object_id=str(brk.pk), action="reconciliation_break.accepted").exists()
    assert run(books).breaks == {}  # the same figures: not opened again
    erp.add_manual_entry(account="1200", amount="1.00", against=BANK, posting_date="2026-11-16")
    assert run(books).breaks == {"erp_balance_mismatch": 1}  # other figures: a new break
    with pytest.raises(TieoutError) as refused:
        services.reconciliation_break_accept(break_id=brk.pk, reason="again", user=users.get(username="carl-controller"))
    assert refused.value.code == Codes.BREAK_RESOLVED


def test_a_batch_documents_break_marks_its_journals_and_their_documents(entity, erp, integration, controller,
                                                                      django_capture_on_commit_callbacks):
    """Posted in batches: a break of the batch document (no journal of its own) holds every journal it carries
    and their documents at `break`; accepted by a controller, they are matched again."""
    with transaction.atomic():
        erpnext_configure(entity, erp, posting_mode="batch")
    send(integration, f.customer("cus_1"))
    send(integration, f.invoice("inv_1", customer_id="cus_1"))
    send(integration, f.invoice("inv_2", customer_id="cus_1"))
    with django_capture_on_commit_callbacks(execute=True):
        ledger.erp_batches_sweep(window_seconds=0)
    batch = ErpBatch.objects.get(status="posted")
    erp.edit_amount(batch.erp_document_ref, "1.00")
    assert run(entity).breaks == {"erp_amount_mismatch": 1}
    [brk] = open_breaks()
    assert (brk.journal_id, brk.erp_document_ref, brk.document) == (None, batch.erp_document_ref, "")
    held = [f"journal:{j.pk}" for j in Journal.objects.filter(erp_batch=batch)] + [
        f"invoice:{SS}:inv_1", f"invoice:{SS}:inv_2"]
    assert len(held) == 4 and {mark(subject) for subject in held} == {"break"}
    carl = get_user_model().objects.get(username="carl-controller")
    services.reconciliation_break_accept(break_id=brk.pk, reason="rounding in the ERP's batch", user=carl)
    assert {mark(subject) for subject in held} == {"matched"}


# ------------------------------------------------------------------------------------------------ actions
def test_rerun_repost_and_the_queue_retry(erp_books, erp, finance, django_capture_on_commit_callbacks):
    books = erp_books
    fiona = get_user_model().objects.get(username="fiona-ops")
    journal = journal_of("invoice", "inv_1")
    erp.delete(journal.erp_document_ref)
    run(books)
    [brk] = open_breaks()
    # Re-run for the object: the break is still there, so it stays open (seen again by the subject run).
    with django_capture_on_commit_callbacks(execute=True):
        rerun = services.reconciliation_break_rerun(break_id=brk.pk, actor=fiona)
    rerun.refresh_from_db()
    assert rerun.subject == f"journal:{journal.pk}" and rerun.status == "finished"
    brk.refresh_from_db()
    assert brk.status == "open" and brk.last_seen_run_id == rerun.pk
    # Re-post: the ERP has no live document, so the journal is sent again; the queued run resolves the break.
    with django_capture_on_commit_callbacks(execute=True):
        services.reconciliation_break_repost(break_id=brk.pk, actor=fiona)
    [reposted] = erp.by_cheque(str(journal.pk))  # sent once, as a new Journal Entry
    assert ledger.effective_erp_ref(journal) == reposted["name"] != journal.erp_document_ref
    assert AuditEntry.objects.filter(object_id=str(journal.pk), action="journal.reposted").exists()
    brk.refresh_from_db()
    assert brk.status == "resolved" and brk.resolution.startswith("resolved by run")
    assert run(books).breaks == {}  # the re-posted document is the journal's now; no duplicate
    # A break the queue's retry re-runs: an edited amount, fixed in the ERP, retried from the exception.
    pay = journal_of("payment", "pay_2")
    erp.edit_amount(pay.erp_document_ref, "-49.00")
    run(books)
    [second] = open_breaks()
    with pytest.raises(TieoutError) as refused:
        services.reconciliation_break_repost(break_id=second.pk, actor=fiona)
    assert refused.value.code == Codes.BREAK_ACTION_NOT_APPLICABLE
    erp.edit_amount(pay.erp_document_ref, "49.00")
    with django_capture_on_commit_callbacks(execute=True):
        queue.exception_retry(exception_id=second.exception_id, actor=fiona)
    second.refresh_from_db()
    assert second.status == "resolved"


def test_adjusting_journal_and_resolving_in_the_queue(erp_books, erp, finance, django_capture_on_commit_callbacks):
    fiona = get_user_model().objects.get(username="fiona-ops")
    erp.add_manual_entry(account="1200", amount="100.00", against=BANK, posting_date="2026-11-15")
    run(erp_books)
    [brk] = open_breaks()
    lines = [("1200", "100.00", "", "as booked in the ERP"), ("4000", "", "100.00", "")]
    journal = services.reconciliation_break_adjust(break_id=brk.pk, accounting_date=datetime.date(2026, 11, 15),
                                                   lines=lines, description="ERP manual entry", user=fiona)
    again = services.reconciliation_break_adjust(break_id=brk.pk, accounting_date=datetime.date(2026, 11, 15),
                                                 lines=lines, description="ERP manual entry", user=fiona)
    assert again.pk == journal.pk and journal.status == "pending_approval"
    brk.refresh_from_db()
    assert brk.adjusting_journal_id == journal.pk and brk.status == "open"
    assert Approval.objects.get(journal=journal).status == "pending"
    # A person resolves the exception in the queue: the break goes with it.
    with django_capture_on_commit_callbacks(execute=True):
        queue.exception_resolve(exception_id=brk.exception_id, resolution="booked by hand, approval pending",
                                actor=fiona)
    brk.refresh_from_db()
    assert brk.status == "resolved" and brk.resolution.startswith("resolved in the exception queue")


# ------------------------------------------------------------------------------------------------ two sessions
@pytest.mark.django_db(transaction=True)
def test_a_run_outside_any_transaction_checks_open_amounts_on_a_second_session(entity, integration, settings,
                                                                               monkeypatch):
    """Run as the task and the command run it (no outer transaction, data committed), the open-amount check
    runs on a session of its own beside the document check, and finds what one session finds."""
    post_books(integration)
    started = []
    beside = billing_checks._Beside
    monkeypatch.setattr(billing_checks, "_Beside", lambda sql, params: started.append(sql) or beside(sql, params))
    journal = journal_of("payment", "pay_1")
    edit_line(journal, "1200", invoice_id="inv_2")
    first = run(entity)
    assert len(started) == 1
    assert first.breaks == {"ledger_open_amount_mismatch": 2}
    by_doc = {b.document: b for b in open_breaks()}
    assert by_doc[f"invoice:{SS}:inv_1"].actual == {"side": "ledger", "receivable_balance": "107.25"}
    assert by_doc[f"invoice:{SS}:inv_2"].actual == {"side": "ledger", "receivable_balance": "57.25"}
    assert mark(f"invoice:{SS}:inv_1") == "break" and mark(f"payment:{SS}:pay_2") == "matched"
    # One session, one after the other: the same findings (found again, nothing new, nothing resolved).
    settings.TIEOUT_RECONCILIATION_PARALLEL = False
    again = run(entity)
    assert len(started) == 1
    assert again.breaks == first.breaks and again.resolved == 0
    assert {b.pk for b in open_breaks()} == {b.pk for b in by_doc.values()}
    # Fixed, and back to two sessions: resolved.
    settings.TIEOUT_RECONCILIATION_PARALLEL = True
    edit_line(journal, "1200", invoice_id="inv_1")
    later = run(entity)
    assert len(started) == 2 and later.breaks == {} and later.resolved == 2
