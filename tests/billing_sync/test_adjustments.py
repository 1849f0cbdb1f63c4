"""Manual adjustments raised by a person: credit memos and write-offs through the events pipeline, and
manual journals; their API endpoints.

A manual credit memo or write-off must be indistinguishable from one a billing platform sent, except for
who sent it: a receipt with its raw bytes, an event under the invoice's source system with the person as
sender, the same journal and an approval whose requester is that person (so they cannot approve it).
What can be checked up front (caps, money format, a voided invoice) is refused with the pipeline's code
and leaves nothing behind. A manual journal must balance, use active accounts of its entity and an open
period; it waits for approval under the policy, posts when approved and never when rejected.
"""
import datetime
import hashlib
import json
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from audit.models import AuditEntry
from billing_sync import adjustments, tokens
from billing_sync.models import CreditNote, Event, Invoice, Receipt, WriteOff
from config.errors import ApiError, Codes, PermissionRefused, TieoutError
from exceptions_queue import services as queue
from exceptions_queue.models import Approval, ExceptionRecord
from ledger import services as ledger
from ledger.models import Account, Journal
from ledger.selectors import receivable_balance
from tests import factories as f
from tests.fixtures import Api

pytestmark = pytest.mark.django_db
User = get_user_model()


# ------------------------------------------------------------------------------------------- helpers
def _user(username):
    return User.objects.get(username=username)


@pytest.fixture
def run(django_capture_on_commit_callbacks):
    """Call a service and run what it queued after commit (processing, posting), as a committed request would."""
    def call(fn, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(**kwargs)
    return call


def _issue_invoice(integration, lines=(("18000.00", "2000.00"),)) -> Invoice:
    customer = f.customer()
    assert integration.send(customer).status_code == 202
    payload = f.invoice(customer_id=customer["data"]["customer_id"], lines=list(lines))
    assert integration.send(payload).status_code == 202
    return Invoice.objects.get(source_system=f.SOURCE, invoice_id=payload["data"]["invoice_id"])


@pytest.fixture
def invoice(entity, integration) -> Invoice:
    """A posted invoice of 20,000.00 (18,000.00 + 2,000.00 tax in US-CA)."""
    return _issue_invoice(integration)


def _refused(excinfo, code: str, field: str | None = None):
    assert excinfo.value.code == code, excinfo.value.detail
    if field is not None:
        assert [e["field"] for e in excinfo.value.errors] == [field], excinfo.value.errors


def _nothing_sent():
    assert not Event.objects.filter(event_id__startswith="tieout-manual-").exists()
    assert not Receipt.objects.filter(client__in=["fiona-ops", "carl-controller"]).exists()


# ------------------------------------------------------------------------------------------- write-offs
def test_a_manual_write_off_goes_through_receipt_event_and_approval_as_its_raiser(invoice, finance, controller, run):
    fiona = _user("fiona-ops")
    result = run(adjustments.manual_write_off_raise, invoice=invoice, amount="150.00",
                 reason="Customer in liquidation", user=fiona)

    assert result.status == "pending_approval"
    assert result.document_id.startswith("MAN-WO-")
    event = result.event
    assert event.event_id.startswith("tieout-manual-")
    assert (event.source_system, event.type, event.entity_code, event.sent_by) == (
        f.SOURCE, "write_off.requested", "US01", fiona)
    # The receipt keeps the exact bytes the pipeline read, as for any event received over HTTP.
    receipt = event.receipt
    assert receipt.outcome == "accepted" and receipt.client == "fiona-ops"
    body = bytes(receipt.body)
    assert receipt.sha256 == hashlib.sha256(body).hexdigest()
    sent = json.loads(body)
    assert sent["event_id"] == event.event_id
    assert sent["data"] == {"write_off_id": result.document_id, "invoice_id": invoice.invoice_id, "currency": "USD",
                            "amount": "150.00", "reason": "Customer in liquidation"}
    assert AuditEntry.objects.filter(action="event.received", object_id=str(event.pk), actor="fiona-ops").exists()

    write_off = WriteOff.objects.get(source_system=f.SOURCE, write_off_id=result.document_id)
    assert (write_off.amount, write_off.status, write_off.event_id) == (Decimal("150.00"), "pending_approval", event.pk)
    approval = result.approval
    assert (approval.kind, approval.requested_by, approval.reason, approval.required_approvals) == (
        "write_off", fiona, "Customer in liquidation", 1)
    assert result.journal.status == Journal.Status.PENDING_APPROVAL
    invoice.refresh_from_db()
    assert invoice.written_off_total == 0  # nothing booked while it waits

    response = controller.post(f"/api/v1/approvals/{approval.pk}/approve", {"comment": "agreed"})
    assert response.status_code == 200, response.content
    result.journal.refresh_from_db()
    assert result.journal.status == Journal.Status.POSTED
    invoice.refresh_from_db()
    assert invoice.written_off_total == Decimal("150.00")
    assert invoice.open_amount == receivable_balance(entity=invoice.entity, source_system=f.SOURCE,
                                                     invoice_id=invoice.invoice_id) == Decimal("19850.00")
    # The trace of a manual event reads like any other: receipt, approval, journal posted.
    trace = controller.get(f"/api/v1/events/{event.pk}/trace").json()
    assert (trace["receipt"]["body_sha256"], trace["receipt"]["client"]) == (receipt.sha256, "fiona-ops")
    assert trace["receipt"]["headers"]["User-Agent"] == adjustments.USER_AGENT
    assert [(a["kind"], a["status"]) for a in trace["approvals"]] == [("write_off", "approved")]
    assert [j["status"] for j in trace["journals"]] == ["posted"]


def test_the_raiser_of_a_manual_write_off_cannot_approve_it(invoice, controller, controller2, run):
    carl = _user("carl-controller")
    result = run(adjustments.manual_write_off_raise, invoice=invoice, amount="75.00", reason="Disputed", user=carl)
    with pytest.raises(PermissionRefused) as excinfo:
        queue.approval_approve(approval_id=result.approval.pk, user=carl, comment="mine")
    assert excinfo.value.code == Codes.SEGREGATION_OF_DUTIES
    response = controller.post(f"/api/v1/approvals/{result.approval.pk}/approve", {"comment": "mine"})
    assert response.status_code == 403 and response.json()["code"] == "segregation_of_duties"
    assert controller2.post(f"/api/v1/approvals/{result.approval.pk}/approve", {}).status_code == 200


def test_a_write_off_above_the_open_amount_is_refused_up_front(invoice, finance, run):
    with pytest.raises(ApiError) as excinfo:
        run(adjustments.manual_write_off_raise, invoice=invoice, amount="20000.01", reason="too much",
            user=_user("fiona-ops"))
    _refused(excinfo, Codes.OVER_WRITE_OFF, "amount")
    assert "20000.00" in excinfo.value.detail
    _nothing_sent()
    assert not ExceptionRecord.objects.exists()


def test_pending_write_offs_count_against_the_open_amount(invoice, finance, run):
    fiona = _user("fiona-ops")
    run(adjustments.manual_write_off_raise, invoice=invoice, amount="15000.00", reason="first", user=fiona)
    with pytest.raises(ApiError) as excinfo:
        run(adjustments.manual_write_off_raise, invoice=invoice, amount="5000.01", reason="second", user=fiona)
    _refused(excinfo, Codes.OVER_WRITE_OFF, "amount")
    assert adjustments.write_off_room(invoice) == Decimal("5000.00")


@pytest.mark.parametrize("amount, message", [("12.345", "more than 2 decimal places"), ("1e3", "plain decimal"),
                                             ("-5.00", "greater than 0"), ("0", "greater than 0"),
                                             ("", "required")])
def test_bad_money_is_refused_with_invalid_event(invoice, finance, run, amount, message):
    with pytest.raises(ApiError) as excinfo:
        run(adjustments.manual_write_off_raise, invoice=invoice, amount=amount, reason="x", user=_user("fiona-ops"))
    _refused(excinfo, Codes.INVALID_EVENT, "amount")
    assert message in excinfo.value.errors[0]["message"]
    _nothing_sent()


def test_a_reason_is_required(invoice, finance, run):
    with pytest.raises(ApiError) as excinfo:
        run(adjustments.manual_write_off_raise, invoice=invoice, amount="1.00", reason="  ", user=_user("fiona-ops"))
    _refused(excinfo, Codes.INVALID_EVENT, "reason")


def test_auditors_and_source_systems_cannot_raise_adjustments(invoice, auditor, integration, run):
    for username in ("aude-auditor", "billing-system"):
        with pytest.raises(PermissionRefused):
            run(adjustments.manual_write_off_raise, invoice=invoice, amount="1.00", reason="x", user=_user(username))
    _nothing_sent()


def test_a_user_outside_the_invoices_entity_does_not_find_it(invoice, run):
    ledger.entity_setup(code="GB01", currency="GBP", actor="test")
    tokens.token_issue(username="gina-gb", role="finance_ops", entities=["GB01"], actor="test")
    with pytest.raises(ApiError) as excinfo:
        run(adjustments.manual_write_off_raise, invoice=invoice, amount="1.00", reason="x", user=_user("gina-gb"))
    assert excinfo.value.status == 404


def test_a_race_past_the_precheck_lands_in_the_exception_queue(invoice, finance, integration, run, monkeypatch):
    """If a payment takes the open amount between the check and the processing, the event is an exception."""
    monkeypatch.setattr(adjustments, "_precheck", lambda *args, **kwargs: None)
    result = run(adjustments.manual_write_off_raise, invoice=invoice, amount="20000.01", reason="race",
                 user=_user("fiona-ops"))
    assert result.status == "exception"
    assert result.exception.code == Codes.OVER_WRITE_OFF
    assert result.approval is None


# ------------------------------------------------------------------------------------------- credit memos
def test_a_small_manual_credit_memo_posts_at_once_with_its_tax(invoice, finance, run):
    result = run(adjustments.manual_credit_memo_raise, invoice=invoice, amount="100.00", tax_amount="7.25",
                 reason="Goodwill", user=_user("fiona-ops"))
    assert result.status == "processed"  # processed in the call; posted once it committed
    result.event.refresh_from_db()
    assert result.event.status == "posted"
    assert result.approval is None
    note = CreditNote.objects.get(source_system=f.SOURCE, credit_note_id=result.document_id)
    assert result.document_id.startswith("MAN-CN-")
    assert (note.amount, note.tax_amount, note.taxes, note.status) == (
        Decimal("100.00"), Decimal("7.25"), [{"jurisdiction": "US-CA", "amount": "7.25"}], "approved")
    result.journal.refresh_from_db()
    assert result.journal.status == Journal.Status.POSTED
    assert {(ln.account.code, ln.debit, ln.credit) for ln in result.journal.lines.all()} == {
        ("4900", Decimal("100.00"), 0), ("2200", Decimal("7.25"), 0), ("1200", 0, Decimal("107.25"))}
    invoice.refresh_from_db()
    assert invoice.credited_total == Decimal("107.25")


def test_a_large_manual_credit_memo_waits_and_a_rejection_never_posts(invoice, finance, controller, run):
    fiona = _user("fiona-ops")
    result = run(adjustments.manual_credit_memo_raise, invoice=invoice, amount="1500.00", reason="Outage credit",
                 user=fiona)
    assert result.status == "pending_approval"
    assert (result.approval.requested_by, result.approval.reason, result.approval.amount) == (
        fiona, "Outage credit", Decimal("1500.00"))
    response = controller.post(f"/api/v1/approvals/{result.approval.pk}/reject", {"comment": "not agreed"})
    assert response.status_code == 200, response.content
    result.journal.refresh_from_db()
    assert result.journal.status == Journal.Status.REJECTED
    assert result.journal.erp_document_ref is None
    invoice.refresh_from_db()
    assert invoice.credited_total == 0 and invoice.open_amount == Decimal("20000.00")
    assert CreditNote.objects.get(credit_note_id=result.document_id).status == "rejected"


def test_a_credit_above_what_is_creditable_and_on_a_voided_invoice_is_refused(entity, integration, finance, run):
    invoice = _issue_invoice(integration, lines=[("100.00", "0")])
    fiona = _user("fiona-ops")
    with pytest.raises(ApiError) as excinfo:
        run(adjustments.manual_credit_memo_raise, invoice=invoice, amount="100.01", reason="x", user=fiona)
    _refused(excinfo, Codes.OVER_CREDIT, "amount")
    assert integration.send(f.invoice_voided(invoice.invoice_id)).status_code == 202
    invoice.refresh_from_db()
    assert invoice.status == "voided"
    with pytest.raises(ApiError) as excinfo:
        run(adjustments.manual_credit_memo_raise, invoice=invoice, amount="1.00", reason="x", user=fiona)
    _refused(excinfo, Codes.OVER_CREDIT, "amount")
    _nothing_sent()


def test_a_tax_credit_on_an_untaxed_invoice_needs_a_jurisdiction(entity, integration, finance, run):
    invoice = _issue_invoice(integration, lines=[("100.00", "0")])
    with pytest.raises(ApiError) as excinfo:
        run(adjustments.manual_credit_memo_raise, invoice=invoice, amount="10.00", tax_amount="1.00", reason="x",
            user=_user("fiona-ops"))
    _refused(excinfo, Codes.INVALID_EVENT, "tax_jurisdiction")


def test_two_approvers_from_10000(invoice, finance, controller, controller2, run):
    result = run(adjustments.manual_write_off_raise, invoice=invoice, amount="10000.00", reason="Bankrupt",
                 user=_user("fiona-ops"))
    assert result.approval.required_approvals == 2
    assert controller.post(f"/api/v1/approvals/{result.approval.pk}/approve", {}).json()["status"] == "pending"
    result.journal.refresh_from_db()
    assert result.journal.status == Journal.Status.PENDING_APPROVAL
    assert controller2.post(f"/api/v1/approvals/{result.approval.pk}/approve", {}).json()["status"] == "approved"
    result.journal.refresh_from_db()
    assert result.journal.status == Journal.Status.POSTED


# ------------------------------------------------------------------------------------------- manual journals
ACCRUAL = [("6100", "250.00", "", "Processor fees for October"), ("2300", "", "250.00", "accrued")]


def test_a_manual_journal_waits_for_approval_and_posts_when_approved(entity, finance, controller, run):
    fiona = _user("fiona-ops")
    journal = run(queue.manual_journal_create, entity=entity, accounting_date=datetime.date(2026, 11, 30),
                  lines=ACCRUAL, description="October fee accrual", user=fiona)
    assert (journal.kind, journal.status, journal.document_type) == ("manual", "pending_approval", "manual_journal")
    assert journal.document_id.startswith("MJ-")
    assert [(ln.line_no, ln.account.code, ln.debit, ln.credit, ln.memo) for ln in journal.lines.order_by("line_no")] == [
        (1, "6100", Decimal("250.00"), 0, "Processor fees for October"), (2, "2300", 0, Decimal("250.00"), "accrued")]
    approval = Approval.objects.get(journal=journal)
    assert (approval.kind, approval.event, approval.requested_by, approval.amount, approval.document_id,
            approval.reason, approval.required_approvals) == (
        "manual_journal", None, fiona, Decimal("250.00"), journal.document_id, "October fee accrual", 1)
    assert AuditEntry.objects.filter(action="journal.created", object_id=str(journal.pk), actor="fiona-ops").exists()
    assert AuditEntry.objects.filter(action="approval.requested", object_id=str(approval.pk)).exists()

    with pytest.raises(PermissionRefused):
        queue.approval_approve(approval_id=approval.pk, user=fiona)  # finance_ops never decides
    response = controller.post(f"/api/v1/approvals/{approval.pk}/approve", {"comment": "fine"})
    assert response.status_code == 200, response.content
    journal.refresh_from_db()
    assert journal.status == Journal.Status.POSTED and journal.erp_document_ref
    tb = controller.get("/api/v1/ledger/trial-balance", entity="US01").json()
    assert {a["code"]: a["balance"] for a in tb["accounts"]}["6100"] == "250.00"


def test_a_rejected_manual_journal_never_posts(entity, finance, controller, run):
    journal = run(queue.manual_journal_create, entity=entity, accounting_date=datetime.date(2026, 11, 30),
                  lines=ACCRUAL, description="accrual", user=_user("fiona-ops"))
    response = controller.post(f"/api/v1/approvals/{journal.approval.pk}/reject", {"comment": "wrong month"})
    assert response.status_code == 200, response.content
    journal.refresh_from_db()
    assert journal.status == Journal.Status.REJECTED and journal.erp_document_ref is None
    assert not journal.outbox.exists()


def test_an_unbalanced_manual_journal_is_refused(entity, finance, run):
    with pytest.raises(TieoutError) as excinfo:
        run(queue.manual_journal_create, entity=entity, accounting_date=datetime.date(2026, 11, 30),
            lines=[("6100", "250.00", "", ""), ("2300", "", "249.99", "")], description="x", user=_user("fiona-ops"))
    _refused(excinfo, Codes.UNBALANCED_JOURNAL, "lines")
    assert "differ by 0.01" in excinfo.value.detail
    assert not Journal.objects.filter(kind="manual").exists()
    assert not Approval.objects.exists()


def test_manual_journal_lines_are_checked_one_by_one(entity, finance, run):
    with pytest.raises(TieoutError) as excinfo:
        run(queue.manual_journal_create, entity=entity, accounting_date=datetime.date(2026, 11, 30),
            lines=[("6100", "250.001", "", ""), ("2300", "10.00", "10.00", ""), ("", "5.00", "", ""), ("", "", "", "")],
            description="", user=_user("fiona-ops"))
    _refused(excinfo, Codes.INVALID_REQUEST)
    assert {e["field"] for e in excinfo.value.errors} == {
        "description", "lines[0].debit", "lines[1].debit", "lines[2].account"}


def test_an_inactive_or_unknown_account_is_refused(entity, finance, run):
    ledger.account_update(entity=entity, account_code="6100", name="Fees (retired)", is_active=False,
                          erp_account="", actor="test")
    with pytest.raises(TieoutError) as excinfo:
        run(queue.manual_journal_create, entity=entity, accounting_date=datetime.date(2026, 11, 30),
            lines=[("6100", "250.00", "", ""), ("9999", "", "250.00", "")], description="x", user=_user("fiona-ops"))
    _refused(excinfo, Codes.UNKNOWN_ACCOUNT)
    assert [(e["field"], e["message"]) for e in excinfo.value.errors] == [
        ("lines[0].account", "Account 6100 is not active."), ("lines[1].account", "US01 has no account 9999.")]
    assert Account.objects.get(entity=entity, code="6100").is_active is False


def test_a_manual_journal_into_a_closed_period_is_refused(entity, finance, run):
    ledger.period_set_status(entity=entity, year=2026, month=10, status="closed", actor="test")
    with pytest.raises(TieoutError) as excinfo:
        run(queue.manual_journal_create, entity=entity, accounting_date=datetime.date(2026, 10, 31),
            lines=ACCRUAL, description="late accrual", user=_user("fiona-ops"))
    _refused(excinfo, Codes.PERIOD_CLOSED, "accounting_date")
    assert not Journal.objects.filter(kind="manual").exists()


def test_below_the_policy_threshold_a_manual_journal_posts_without_approval(entity, finance, run):
    queue.approval_policy_update(entity=entity, values={"manual_journal_threshold": Decimal("1000")}, actor="test")
    journal = run(queue.manual_journal_create, entity=entity, accounting_date=datetime.date(2026, 11, 30),
                  lines=ACCRUAL, description="small accrual", user=_user("fiona-ops"))
    journal.refresh_from_db()
    assert journal.status == Journal.Status.POSTED
    assert not Approval.objects.filter(journal=journal).exists()


def test_auditors_cannot_write_manual_journals(entity, auditor, run):
    with pytest.raises(TieoutError) as excinfo:
        run(queue.manual_journal_create, entity=entity, accounting_date=datetime.date(2026, 11, 30),
            lines=ACCRUAL, description="x", user=_user("aude-auditor"))
    assert excinfo.value.status == 403
    assert not Journal.objects.filter(kind="manual").exists()


# ------------------------------------------------------------------------------------------- API
def _problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code
    return body


def test_api_credit_memo_and_write_off(invoice, finance):
    response = finance.post("/api/v1/adjustments/write-offs", {
        "source_system": f.SOURCE, "invoice_id": invoice.invoice_id, "amount": "25.00", "reason": "Small balance"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["kind"] == "write_off" and body["status"] == "pending_approval"
    assert body["document_id"].startswith("MAN-WO-")
    assert body["approval"]["requested_by"] == "fiona-ops" and body["approval"]["amount"] == "25.00"
    assert body["journal"]["status"] == "pending_approval"
    assert body["event"]["type"] == "write_off.requested" and body["event"]["source_system"] == f.SOURCE

    response = finance.post("/api/v1/adjustments/credit-memos", {
        "source_system": f.SOURCE, "invoice_id": invoice.invoice_id, "amount": "10.00",
        "taxes": [{"jurisdiction": "US-CA", "amount": "0.73"}], "reason": "Late delivery"})
    assert response.status_code == 201, response.content
    body = response.json()
    # Below 1,000.00 no approval: the journal is ready when the response is built and posts after commit.
    assert (body["kind"], body["status"], body["approval"], body["journal"]["status"]) == (
        "credit_note", "processed", None, "ready")
    assert finance.event(body["event"]["id"])["status"] == "posted"
    assert CreditNote.objects.get(credit_note_id=body["document_id"]).tax_amount == Decimal("0.73")


def test_api_refusals_are_problems_with_codes(invoice, finance, auditor, integration):
    target = {"source_system": f.SOURCE, "invoice_id": invoice.invoice_id, "reason": "x"}
    _problem(finance.post("/api/v1/adjustments/write-offs", {**target, "amount": "20000.01"}), 422, "over_write_off")
    _problem(finance.post("/api/v1/adjustments/credit-memos", {**target, "amount": "20000.01"}), 422, "over_credit")
    body = _problem(finance.post("/api/v1/adjustments/write-offs", {**target, "amount": "1.001"}), 422,
                    "invalid_event")
    assert body["errors"][0]["field"] == "amount"
    _problem(finance.post("/api/v1/adjustments/write-offs", {**target, "invoice_id": "nope", "amount": "1.00"}),
             404, "not_found")
    _problem(finance.post("/api/v1/adjustments/write-offs", {"amount": "1.00"}), 400, "invalid_request")
    for api in (auditor, integration):
        _problem(api.post("/api/v1/adjustments/write-offs", {**target, "amount": "1.00"}), 403, "permission_denied")
        _problem(api.post("/api/v1/journals/manual", {}), 403, "permission_denied")
    _nothing_sent()


def test_api_manual_journal(entity, finance, controller):
    request = {"entity": "US01", "accounting_date": "2026-11-30", "description": "Reclass",
               "lines": [{"account": "4000", "debit": "40.00", "memo": "reclass"},
                         {"account": "4900", "credit": "40.00"}]}
    response = finance.post("/api/v1/journals/manual", request)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["journal"]["kind"] == "manual" and body["journal"]["status"] == "pending_approval"
    assert [(ln["account"], ln["debit"], ln["credit"]) for ln in body["journal"]["lines"]] == [
        ("4000", "40.00", "0.00"), ("4900", "0.00", "40.00")]
    assert body["approval"]["kind"] == "manual_journal" and body["approval"]["requested_by"] == "fiona-ops"
    assert controller.post(f"/api/v1/approvals/{body['approval']['id']}/approve", {}).status_code == 200
    assert controller.get(f"/api/v1/journals/{body['journal']['id']}").json()["status"] == "posted"

    unbalanced = {**request, "lines": [{"account": "4000", "debit": "40.00"}, {"account": "4900", "credit": "4.00"}]}
    _problem(finance.post("/api/v1/journals/manual", unbalanced), 422, "unbalanced_journal")
    _problem(finance.post("/api/v1/journals/manual", {**request, "entity": "ZZ99"}), 404, "not_found")
    _problem(finance.post("/api/v1/journals/manual", {**request, "accounting_date": "30/11/2026"}), 400,
             "invalid_request")


def test_api_approvals_carry_the_reason_and_stay_inside_the_callers_entities(invoice, finance, controller, run):
    result = run(adjustments.manual_write_off_raise, invoice=invoice, amount="5.00", reason="Rounding residue",
                 user=_user("fiona-ops"))
    body = controller.get(f"/api/v1/approvals/{result.approval.pk}").json()
    assert (body["reason"], body["requested_by"]) == ("Rounding residue", "fiona-ops")
    ledger.entity_setup(code="GB01", currency="GBP", actor="test")
    raw = tokens.token_issue(username="gail-gb", role="controller", entities=["GB01"], actor="test")

    outsider = Api(raw, controller.capture)
    assert outsider.get("/api/v1/approvals").json()["results"] == []
    assert outsider.get(f"/api/v1/approvals/{result.approval.pk}").status_code == 404
    _problem(outsider.post(f"/api/v1/approvals/{result.approval.pk}/approve", {}), 404, "not_found")
    assert Approval.objects.get(pk=result.approval.pk).status == "pending"


# ------------------------------------------------------------------------------------------- one request, once
def test_the_same_request_key_is_one_write_off(invoice, finance, run):
    fiona = _user("fiona-ops")
    first = run(adjustments.manual_write_off_raise, invoice=invoice, amount="40.00", reason="x", user=fiona,
                request_key="form-1")
    again = run(adjustments.manual_write_off_raise, invoice=invoice, amount="40.00", reason="x", user=fiona,
                request_key="form-1")
    assert (again.event.pk, again.document_id, again.approval.pk) == (first.event.pk, first.document_id,
                                                                     first.approval.pk)
    assert WriteOff.objects.count() == 1 and Approval.objects.count() == 1
    with pytest.raises(ApiError) as excinfo:
        run(adjustments.manual_write_off_raise, invoice=invoice, amount="41.00", reason="x", user=fiona,
            request_key="form-1")
    assert (excinfo.value.code, excinfo.value.status) == (Codes.IDEMPOTENCY_CONFLICT, 409)
    # Another key, or the same key from someone else, is another request.
    run(adjustments.manual_write_off_raise, invoice=invoice, amount="40.00", reason="x", user=fiona,
        request_key="form-2")
    tokens.token_issue(username="felix-ops", role="finance_ops", actor="test")
    run(adjustments.manual_write_off_raise, invoice=invoice, amount="40.00", reason="x", user=_user("felix-ops"),
        request_key="form-1")
    assert WriteOff.objects.count() == 3


def test_the_same_request_key_is_one_manual_journal(entity, finance, run):
    fiona = _user("fiona-ops")
    kwargs = {"entity": entity, "accounting_date": datetime.date(2026, 11, 30), "lines": ACCRUAL,
              "description": "accrual", "user": fiona, "request_key": "journal-form-1"}
    first = run(queue.manual_journal_create, **kwargs)
    again = run(queue.manual_journal_create, **kwargs)
    assert again.pk == first.pk
    assert Journal.objects.filter(kind="manual").count() == 1 and Approval.objects.count() == 1
    with pytest.raises(TieoutError) as excinfo:
        run(queue.manual_journal_create, **{**kwargs, "lines": [("6100", "251.00", "", ""), ("2300", "", "251.00", "")]})
    assert (excinfo.value.code, excinfo.value.status) == (Codes.IDEMPOTENCY_CONFLICT, 409)


def test_api_idempotency_keys(invoice, finance):
    body = {"source_system": f.SOURCE, "invoice_id": invoice.invoice_id, "amount": "15.00", "reason": "dup?"}
    first = finance.post("/api/v1/adjustments/write-offs", body, HTTP_IDEMPOTENCY_KEY="k-1")
    again = finance.post("/api/v1/adjustments/write-offs", body, HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 201
    assert first.json()["document_id"] == again.json()["document_id"]
    assert WriteOff.objects.count() == 1
    _problem(finance.post("/api/v1/adjustments/write-offs", {**body, "amount": "16.00"}, HTTP_IDEMPOTENCY_KEY="k-1"),
             409, "idempotency_conflict")
    journal = {"entity": "US01", "accounting_date": "2026-11-30", "description": "x",
               "lines": [{"account": "4000", "debit": "1.00"}, {"account": "4900", "credit": "1.00"}]}
    a = finance.post("/api/v1/journals/manual", journal, HTTP_IDEMPOTENCY_KEY="j-1").json()
    b = finance.post("/api/v1/journals/manual", journal, HTTP_IDEMPOTENCY_KEY="j-1").json()
    assert a["journal"]["id"] == b["journal"]["id"] and a["approval"]["id"] == b["approval"]["id"]
