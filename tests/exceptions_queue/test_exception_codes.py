"""The exception queue: every business-rule code, fixing and retrying, and the queue's own actions.

Each business-rule failure of API.md is accepted (202), leaves the event in status `exception` with an
open exception carrying the stable code of config/errors.py, and books nothing. After the cause is fixed,
POST /exceptions/{id}/retry processes and posts the event exactly once and resolves the exception.
Assign, resolve (a resolution is required), list filters, the event resource's `exception` field and the
role checks (auditors and source systems change nothing) are covered too.
"""
from decimal import Decimal

import pytest

from billing_sync.models import Event, Invoice, Payment
from exceptions_queue.models import ExceptionRecord
from ledger import services as ledger
from ledger.models import Account, DocumentSequence, Journal
from tests import factories as f
from tests.close_helpers import reconciled
from tests.helpers import send

pytestmark = pytest.mark.django_db

SS = f.SOURCE
CUS = "cus_q"
INV = "inv_q"  # 100.00 + 7.25 tax = 107.25


# --------------------------------------------------------------------------------------------- helpers
def send_exception(api, payload, code: str) -> dict:
    """Send an event that must fail a business rule: 202, status `exception`, an open exception, no journal."""
    event = send(api, payload)
    assert event["status"] == "exception", event
    brief = event["exception"]
    assert brief is not None
    assert set(brief) == {"id", "code", "status", "message", "owner"}
    assert brief["code"] == code, brief
    assert brief["status"] == "open"
    assert brief["message"]
    assert brief["owner"] is None
    assert event["journal_ids"] == []
    assert not Journal.objects.filter(event_id=event["id"]).exists()
    record = ExceptionRecord.objects.get(pk=brief["id"])
    assert str(record.event_id) == event["id"]
    assert record.entity_code == payload["entity"]
    return event


def retry(api, event: dict):
    return api.post(f"/api/v1/exceptions/{event['exception']['id']}/retry")


def assert_posted_once(api, event: dict, journals: int = 1) -> dict:
    after = api.event(event["id"])
    assert after["status"] == "posted", after
    assert after["exception"]["status"] == "resolved"
    assert len(after["journal_ids"]) == journals
    assert Journal.objects.filter(event_id=event["id"]).count() == journals
    assert not Journal.objects.filter(event_id=event["id"]).exclude(status="posted").exists()
    return after


def assert_numbers_gapless() -> None:
    """Every posted journal has one number and the sequences were not advanced by anything else."""
    posted = Journal.objects.filter(status="posted")
    refs = list(posted.values_list("erp_document_ref", flat=True))
    assert len(refs) == len(set(refs))
    assert sum(DocumentSequence.objects.values_list("last_number", flat=True)) == posted.count()


def open_amounts(reader, invoice_id=INV) -> tuple[str, str]:
    body = reader.get(f"/api/v1/invoices/{SS}/{invoice_id}").json()
    return body["open_amount"], body["ledger_open_amount"]


@pytest.fixture
def invoiced(entity, integration):
    """A customer and one posted invoice of 107.25."""
    send(integration, f.customer(CUS))
    event = send(integration, f.invoice(INV, customer_id=CUS, lines=[("100.00", "7.25")]))
    assert event["status"] == "posted"
    return event


# --------------------------------------------------------------------------------------------- unknown_entity
def test_unknown_entity_then_entity_set_up_and_retry_posts_once(entity, integration, finance, auditor):
    send(integration, f.customer(CUS))
    event = send_exception(integration, f.invoice("inv_zz", customer_id=CUS, lines=[("10.00", "0")], entity="ZZ99"),
                           "unknown_entity")
    assert not Invoice.objects.filter(invoice_id="inv_zz").exists()
    ledger.entity_setup(code="ZZ99", currency="USD", actor="test")

    response = retry(finance, event)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "resolved" and body["retry_count"] == 1 and body["resolution"]
    assert_posted_once(integration, event)
    journal = Journal.objects.get(event_id=event["id"])
    assert journal.entity.code == "ZZ99"
    assert journal.erp_document_ref == "JE-ZZ99-2026-000001"
    # A second retry is refused and books nothing more.
    assert retry(finance, event).status_code == 409
    assert Journal.objects.filter(event_id=event["id"]).count() == 1
    assert_numbers_gapless()


def test_unknown_entity_payment(entity, integration):
    send(integration, f.customer(CUS))
    send_exception(integration, f.payment("pay_zz", customer_id=CUS, amount="10.00", entity="ZZ99"),
                   "unknown_entity")
    assert not Payment.objects.filter(payment_id="pay_zz").exists()


@pytest.mark.parametrize("builder", [
    pytest.param(lambda: f.invoice_voided(INV, entity="ZZ99"), id="invoice.voided"),
    pytest.param(lambda: f.refund("pay_e", "5.00", entity="ZZ99"), id="payment.refunded"),
    pytest.param(lambda: f.payment_applied("pay_e", [(INV, "5.00")], entity="ZZ99"), id="payment.applied"),
])
def test_events_naming_an_unknown_entity_never_book_into_another_entity(invoiced, integration, builder):
    """API.md: an unknown entity is a business-rule failure, whatever the event type."""
    send(integration, f.payment("pay_e", customer_id=CUS, amount="20.00"))
    journals_before = Journal.objects.count()
    send_exception(integration, builder(), "unknown_entity")
    assert Journal.objects.count() == journals_before
    assert Invoice.objects.get(invoice_id=INV).status == "open"


# --------------------------------------------------------------------------------------------- unknown_customer
def test_unknown_customer_retry_before_the_fix_keeps_the_exception_open(entity, integration, finance):
    event = send_exception(integration, f.invoice("inv_uc", customer_id="cus_nobody", lines=[("10.00", "0")]),
                           "unknown_customer")
    response = retry(finance, event)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == event["exception"]["id"]
    assert (body["status"], body["code"], body["retry_count"]) == ("open", "unknown_customer", 1)
    after = integration.event(event["id"])
    assert after["status"] == "exception"
    assert after["exception"]["id"] == event["exception"]["id"]  # updated, not a second exception
    assert ExceptionRecord.objects.filter(event_id=event["id"]).count() == 1
    assert Event.objects.get(pk=event["id"]).attempts == 2

    send(integration, f.customer("cus_nobody"))  # the fix: the customer arrives and wakes the invoice
    assert_posted_once(integration, event)


def test_unknown_customer_on_a_payment(entity, integration):
    send_exception(integration, f.payment("pay_uc", customer_id="cus_nobody", amount="10.00"), "unknown_customer")


# --------------------------------------------------------------------------------------------- awaiting_dependency
@pytest.mark.parametrize("builder", [
    pytest.param(lambda: f.payment("pay_ad", customer_id=CUS, amount="5.00", allocations=[("inv_none", "5.00")]),
                 id="payment.received"),
    pytest.param(lambda: f.payment_applied("pay_none", [(INV, "5.00")]), id="payment.applied"),
    pytest.param(lambda: f.refund("pay_none", "5.00"), id="payment.refunded"),
    pytest.param(lambda: f.credit_note("inv_none", "5.00"), id="credit_note.issued"),
    pytest.param(lambda: f.write_off("inv_none", "5.00"), id="write_off.requested"),
    pytest.param(lambda: f.invoice_voided("inv_none"), id="invoice.voided"),
])
def test_awaiting_dependency(invoiced, integration, builder):
    event = send_exception(integration, builder(), "awaiting_dependency")
    assert ExceptionRecord.objects.get(event_id=event["id"]).dependency_key.endswith("_none")


# --------------------------------------------------------------------------------------------- over_application
def test_allocation_above_open_amount_then_fixed_by_amendment_and_retried(invoiced, integration, finance, auditor):
    event = send_exception(integration, f.payment("pay_oa", customer_id=CUS, amount="200.00",
                                                  allocations=[(INV, "150.00")]), "over_application")
    assert not Payment.objects.filter(payment_id="pay_oa").exists()
    assert Invoice.objects.get(invoice_id=INV).applied_total == 0
    assert open_amounts(auditor) == ("107.25", "107.25")

    send(integration, f.invoice(INV, customer_id=CUS, lines=[("150.00", "0")], version=2, type_="invoice.amended"))
    assert integration.event(event["id"])["status"] == "exception"  # not a dependency: a person retries
    response = retry(finance, event)
    assert response.status_code == 200 and response.json()["status"] == "resolved"
    assert_posted_once(integration, event)
    assert open_amounts(auditor) == ("0.00", "0.00")
    assert Payment.objects.get(payment_id="pay_oa").allocated_total == 150
    assert retry(finance, event).status_code == 409
    assert Journal.objects.filter(event_id=event["id"]).count() == 1
    assert_numbers_gapless()


def test_second_payment_over_applying_what_is_left(invoiced, integration, auditor):
    send(integration, f.payment("pay_1", customer_id=CUS, amount="100.00", allocations=[(INV, "100.00")]))
    send_exception(integration, f.payment("pay_2", customer_id=CUS, amount="10.00", allocations=[(INV, "7.26")]),
                   "over_application")
    assert open_amounts(auditor) == ("7.25", "7.25")


def test_payment_applied_above_the_unapplied_balance(invoiced, integration, auditor):
    send(integration, f.payment("pay_ua", customer_id=CUS, amount="50.00", allocations=[(INV, "20.00")]))
    send_exception(integration, f.payment_applied("pay_ua", [(INV, "30.01")]), "over_application")
    assert Payment.objects.get(payment_id="pay_ua").allocated_total == 20
    assert open_amounts(auditor) == ("87.25", "87.25")
    ok = send(integration, f.payment_applied("pay_ua", [(INV, "30.00")]))
    assert ok["status"] == "posted"


def test_payment_applied_above_the_invoice_open_amount(invoiced, integration):
    send(integration, f.payment("pay_big", customer_id=CUS, amount="500.00"))
    send_exception(integration, f.payment_applied("pay_big", [(INV, "107.26")]), "over_application")
    assert Payment.objects.get(payment_id="pay_big").allocated_total == 0


def test_allocation_to_a_voided_invoice(invoiced, integration):
    send(integration, f.invoice_voided(INV))
    send_exception(integration, f.payment("pay_v", customer_id=CUS, amount="10.00", allocations=[(INV, "10.00")]),
                   "over_application")


# --------------------------------------------------------------------------------------------- amendment_below_applied
def test_amendment_below_applied_then_refund_and_retry(invoiced, integration, finance, auditor):
    original_journal = invoiced["journal_ids"][0]
    send(integration, f.payment("pay_ab", customer_id=CUS, amount="100.00", allocations=[(INV, "100.00")]))
    event = send_exception(integration, f.invoice(INV, customer_id=CUS, lines=[("50.00", "0")], version=2,
                                                  type_="invoice.amended"), "amendment_below_applied")
    invoice = Invoice.objects.get(invoice_id=INV)
    assert (invoice.version, invoice.total, str(invoice.current_journal_id)) == (1, Decimal("107.25"),
                                                                                original_journal)
    assert not Journal.objects.filter(reverses_id=original_journal).exists()

    send(integration, f.refund("pay_ab", "60.00", invoice_id=INV))  # applied 100 − refunded 60 = 40 ≤ 50
    assert retry(finance, event).status_code == 200
    assert_posted_once(integration, event, journals=2)
    assert Journal.objects.get(reverses_id=original_journal).event_id == Event.objects.get(pk=event["id"]).pk
    assert open_amounts(auditor) == ("10.00", "10.00")


# --------------------------------------------------------------------------------------------- void_with_applications
@pytest.mark.parametrize("setup", [
    pytest.param(lambda api: api.send(f.payment("pay_vw", customer_id=CUS, amount="1.00",
                                                allocations=[(INV, "1.00")])), id="payment"),
    pytest.param(lambda api: api.send(f.credit_note(INV, "1.00")), id="credit_note"),
    pytest.param(lambda api: api.send(f.write_off(INV, "1.00")), id="pending_write_off"),
])
def test_void_with_applications(invoiced, integration, auditor, setup):
    assert setup(integration).status_code == 202
    before = open_amounts(auditor)
    send_exception(integration, f.invoice_voided(INV), "void_with_applications")
    invoice = Invoice.objects.get(invoice_id=INV)
    assert invoice.status == "open" and invoice.current_journal_id is not None
    assert open_amounts(auditor) == before


# --------------------------------------------------------------------------------------------- period_closed
def test_period_closed_then_reopened_and_retried(entity, integration, controller, controller2, finance, auditor):
    send(integration, f.customer(CUS))
    reconciled(entity, 2026, 11)  # the close checks pass: nothing unposted, reconciled, the chain verifies
    response = controller.post("/api/v1/periods/US01/2026-11/close")
    assert response.status_code == 200
    assert response.json()["status"] == "closed"
    assert finance.post("/api/v1/periods/US01/2026-11/reopen").status_code == 403

    event = send_exception(integration, f.invoice("inv_pc", customer_id=CUS, lines=[("10.00", "0")],
                                                  issue_date="2026-11-30"), "period_closed")
    assert not Invoice.objects.filter(invoice_id="inv_pc").exists()
    # December is open: an invoice issued then is booked.
    assert send(integration, f.invoice("inv_dec", customer_id=CUS, lines=[("1.00", "0")],
                                       issue_date="2026-12-01", due_date="2026-12-31"))["status"] == "posted"

    # Reopening always takes a second controller's approval.
    reopen = controller.post("/api/v1/periods/US01/2026-11/reopen", {"reason": "a November invoice arrived late"})
    assert reopen.status_code == 202 and reopen.json()["status"] == "closed"
    approval = reopen.json()["approval"]["id"]
    assert controller2.post(f"/api/v1/approvals/{approval}/approve", {"comment": "ok"}).status_code == 200
    assert controller.get("/api/v1/periods/US01/2026-11/close").json()["status"] == "open"
    assert retry(finance, event).json()["status"] == "resolved"
    assert_posted_once(integration, event)
    assert Journal.objects.get(event_id=event["id"]).accounting_date.isoformat() == "2026-11-30"
    assert open_amounts(auditor, "inv_pc") == ("10.00", "10.00")
    assert_numbers_gapless()


def test_period_closed_for_a_payment_uses_the_received_at_date(entity, invoiced, integration):
    ledger.period_set_status(entity=entity, year=2026, month=10,
                             status="closed", actor="test")
    send_exception(integration, f.payment("pay_pc", customer_id=CUS, amount="5.00",
                                          received_at="2026-10-31T23:00:00Z", occurred_at="2026-11-02T10:00:00Z"),
                   "period_closed")
    ok = send(integration, f.payment("pay_pc2", customer_id=CUS, amount="5.00", received_at="2026-11-01T01:00:00Z",
                                     occurred_at="2026-10-30T10:00:00Z"))
    assert ok["status"] == "posted"


# --------------------------------------------------------------------------------------------- no_account_mapping
def test_no_account_mapping_then_account_created_and_retried(entity, integration, finance, auditor):
    send(integration, f.customer(CUS))
    event = send_exception(integration, f.invoice("inv_nm", customer_id=CUS,
                                                  lines=[("10.00", "0", "4999"), ("5.00", "0")]), "no_account_mapping")
    assert "4999" in event["exception"]["message"]
    assert not Invoice.objects.filter(invoice_id="inv_nm").exists()
    Account.objects.create(entity=entity, code="4999", name="Other revenue", type=Account.Type.INCOME)

    assert retry(finance, event).status_code == 200
    assert_posted_once(integration, event)
    journal = auditor.get(f"/api/v1/journals/{integration.event(event['id'])['journal_ids'][0]}").json()
    assert sorted((ln["account"], ln["credit"]) for ln in journal["lines"] if ln["account"].startswith("4")) == [
        ("4000", "5.00"), ("4999", "10.00")]
    assert retry(finance, event).status_code == 409
    assert_numbers_gapless()


def test_inactive_account_has_no_mapping(entity, integration):
    Account.objects.create(entity=entity, code="4800", name="Retired", type=Account.Type.INCOME, is_active=False)
    send(integration, f.customer(CUS))
    send_exception(integration, f.invoice("inv_ia", customer_id=CUS, lines=[("10.00", "0", "4800")]),
                   "no_account_mapping")


# --------------------------------------------------------------------------------------------- over_refund
def test_refund_above_the_payment(invoiced, integration):
    send(integration, f.payment("pay_r", customer_id=CUS, amount="50.00", allocations=[(INV, "50.00")]))
    send_exception(integration, f.refund("pay_r", "50.01", invoice_id=INV), "over_refund")
    send(integration, f.refund("pay_r", "30.00", invoice_id=INV))
    send_exception(integration, f.refund("pay_r", "20.01", invoice_id=INV), "over_refund")  # 50 − 30 left
    assert Payment.objects.get(payment_id="pay_r").refunded_total == 30


def test_refund_without_invoice_above_the_unapplied_balance(invoiced, integration, auditor):
    send(integration, f.payment("pay_ru", customer_id=CUS, amount="50.00", allocations=[(INV, "40.00")]))
    send_exception(integration, f.refund("pay_ru", "10.01"), "over_refund")
    assert send(integration, f.refund("pay_ru", "10.00"))["status"] == "posted"
    assert open_amounts(auditor) == ("67.25", "67.25")


def test_refund_naming_a_voided_invoice_is_refused_and_books_nothing(invoiced, integration, auditor):
    """Found by the property test: the refund's Dr 1200 would reopen a receivable billing shows as 0."""
    send(integration, f.invoice("inv_v", customer_id=CUS, lines=[("20.00", "0")]))
    send(integration, f.invoice_voided("inv_v"))
    send(integration, f.payment("pay_v", customer_id=CUS, amount="30.00"))
    send_exception(integration, f.refund("pay_v", "2.28", invoice_id="inv_v"), "over_refund")
    assert open_amounts(auditor, "inv_v") == ("0.00", "0.00")
    assert Payment.objects.get(payment_id="pay_v").refunded_total == 0


# --------------------------------------------------------------------------------------------- over_credit
def test_credit_note_above_the_invoice_total(invoiced, integration, auditor):
    send_exception(integration, f.credit_note(INV, "100.00", tax="7.26"), "over_credit")
    assert send(integration, f.credit_note(INV, "50.00", tax="3.00"))["status"] == "posted"
    send_exception(integration, f.credit_note(INV, "54.26"), "over_credit")  # 107.25 − 53.00 = 54.25 left
    assert open_amounts(auditor) == ("54.25", "54.25")


def test_pending_credit_notes_count_against_the_cap(entity, integration):
    send(integration, f.customer(CUS))
    send(integration, f.invoice("inv_big", customer_id=CUS, lines=[("3000.00", "0")]))
    assert send(integration, f.credit_note("inv_big", "2000.00"))["status"] == "pending_approval"
    send_exception(integration, f.credit_note("inv_big", "1000.01"), "over_credit")


# --------------------------------------------------------------------------------------------- over_write_off
def test_write_off_above_the_open_amount_then_retried_after_amendment(invoiced, integration, finance):
    send(integration, f.payment("pay_w", customer_id=CUS, amount="100.00", allocations=[(INV, "100.00")]))
    event = send_exception(integration, f.write_off(INV, "7.26"), "over_write_off")
    send(integration, f.invoice(INV, customer_id=CUS, lines=[("100.00", "8.00")], version=2, type_="invoice.amended"))
    response = retry(finance, event)
    assert response.status_code == 200 and response.json()["status"] == "resolved"
    after = integration.event(event["id"])
    assert after["status"] == "pending_approval"  # write-offs still need their approval
    assert Journal.objects.get(event_id=event["id"]).status == "pending_approval"


def test_pending_write_offs_count_against_the_open_amount(invoiced, integration):
    assert send(integration, f.write_off(INV, "100.00"))["status"] == "pending_approval"
    send_exception(integration, f.write_off(INV, "7.26"), "over_write_off")


# --------------------------------------------------------------------------------------------- currency_mismatch
@pytest.mark.parametrize("builder", [
    pytest.param(lambda: f.invoice("inv_eur", customer_id=CUS, currency="EUR"), id="invoice.issued"),
    pytest.param(lambda: f.payment("pay_eur", customer_id=CUS, amount="5.00", currency="EUR"), id="payment.received"),
    pytest.param(lambda: f.credit_note(INV, "5.00", currency="EUR"), id="credit_note.issued"),
    pytest.param(lambda: f.write_off(INV, "5.00", currency="EUR"), id="write_off.requested"),
    pytest.param(lambda: f.refund("pay_usd", "5.00", currency="EUR"), id="payment.refunded"),
    pytest.param(lambda: f.invoice(INV, customer_id=CUS, currency="EUR", version=2, type_="invoice.amended"),
                 id="invoice.amended"),
])
def test_currency_mismatch(invoiced, integration, auditor, builder):
    send(integration, f.payment("pay_usd", customer_id=CUS, amount="10.00"))
    journals_before = Journal.objects.count()
    send_exception(integration, builder(), "currency_mismatch")
    assert Journal.objects.count() == journals_before
    assert open_amounts(auditor) == ("107.25", "107.25")


# --------------------------------------------------------------------------------------------- queue actions
@pytest.fixture
def waiting(entity, integration):
    """An open `unknown_customer` exception."""
    return send_exception(integration, f.invoice("inv_wait", customer_id="cus_missing", lines=[("10.00", "0")]),
                          "unknown_customer")


def test_assign_defaults_to_the_caller_and_can_name_an_owner(waiting, finance, controller, integration):
    exc_id = waiting["exception"]["id"]
    response = finance.post(f"/api/v1/exceptions/{exc_id}/assign")
    assert response.status_code == 200
    assert (response.json()["owner"], response.json()["status"]) == ("fiona-ops", "assigned")
    brief = integration.event(waiting["id"])["exception"]
    assert brief == {"id": exc_id, "code": "unknown_customer", "status": "assigned",
                     "message": waiting["exception"]["message"], "owner": "fiona-ops"}

    response = finance.post(f"/api/v1/exceptions/{exc_id}/assign", {"owner": "carl-controller"})
    assert response.status_code == 200 and response.json()["owner"] == "carl-controller"
    assert ExceptionRecord.objects.get(pk=exc_id).owner.username == "carl-controller"


def test_assign_to_someone_who_cannot_own_exceptions_is_refused(waiting, finance, auditor):
    exc_id = waiting["exception"]["id"]
    response = finance.post(f"/api/v1/exceptions/{exc_id}/assign", {"owner": "aude-auditor"})
    assert response.status_code == 422
    response = finance.post(f"/api/v1/exceptions/{exc_id}/assign", {"owner": "no-such-user"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "owner"
    record = ExceptionRecord.objects.get(pk=exc_id)
    assert (record.status, record.owner_id) == ("open", None)


@pytest.mark.parametrize("body", [{}, {"resolution": ""}, {"resolution": "   "}], ids=["missing", "empty", "blank"])
def test_resolve_without_a_resolution_is_422(waiting, finance, body):
    exc_id = waiting["exception"]["id"]
    response = finance.post(f"/api/v1/exceptions/{exc_id}/resolve", body)
    assert response["Content-Type"] == "application/problem+json"
    assert "resolution" in {e["field"] for e in response.json().get("errors", [])}
    assert ExceptionRecord.objects.get(pk=exc_id).status == "open"
    assert response.status_code == 422


def test_resolve_with_a_resolution_closes_the_exception(waiting, finance, integration):
    exc_id = waiting["exception"]["id"]
    response = finance.post(f"/api/v1/exceptions/{exc_id}/resolve", {"resolution": "Duplicate of INV-7 in billing"})
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["resolution"], body["resolved_by"]) == ("resolved", "Duplicate of INV-7 in billing",
                                                                         "fiona-ops")
    assert body["resolved_at"]
    assert integration.event(waiting["id"])["exception"]["status"] == "resolved"

    assert finance.post(f"/api/v1/exceptions/{exc_id}/retry").status_code == 409
    assert finance.post(f"/api/v1/exceptions/{exc_id}/resolve", {"resolution": "again"}).status_code == 409
    assert finance.post(f"/api/v1/exceptions/{exc_id}/assign").status_code == 409
    # A resolved exception no longer waits: the customer arriving does not process the invoice.
    integration.send(f.customer("cus_missing"))
    assert not Journal.objects.filter(event_id=waiting["id"]).exists()


def test_list_filters(entity, integration, finance, controller, auditor):
    a = send_exception(integration, f.invoice("inv_l1", customer_id="cus_l", lines=[("1.00", "0")]),
                       "unknown_customer")
    b = send_exception(integration, f.payment("pay_l", customer_id="cus_l", amount="1.00"), "unknown_customer")
    c = send_exception(integration, f.invoice("inv_l2", customer_id="cus_l", lines=[("1.00", "0")], entity="ZZ99"),
                       "unknown_entity")
    finance.post(f"/api/v1/exceptions/{b['exception']['id']}/assign", {"owner": "carl-controller"})

    def ids(**params):
        response = auditor.get("/api/v1/exceptions", **params)
        assert response.status_code == 200
        return {e["id"] for e in response.json()["results"]}

    assert ids() == {a["exception"]["id"], b["exception"]["id"], c["exception"]["id"]}
    assert ids(status="open") == {a["exception"]["id"], c["exception"]["id"]}
    assert ids(status="assigned") == {b["exception"]["id"]}
    assert ids(code="unknown_customer") == {a["exception"]["id"], b["exception"]["id"]}
    assert ids(status="open", code="unknown_customer", entity="US01") == {a["exception"]["id"]}
    assert ids(entity="ZZ99") == {c["exception"]["id"]}
    assert ids(owner="carl-controller") == {b["exception"]["id"]}
    assert ids(owner="fiona-ops") == set()
    listed = auditor.get("/api/v1/exceptions", code="unknown_entity").json()["results"][0]
    assert listed["event"] == c["id"]
    assert listed["source"] == {"source_system": SS, "event_id": c["event_id"], "type": "invoice.issued"}


@pytest.mark.parametrize("role", ["auditor", "integration"])
@pytest.mark.parametrize("action, body", [("assign", {}), ("retry", {}), ("resolve", {"resolution": "x"})])
def test_auditor_and_integration_cannot_work_the_queue(waiting, request, role, action, body):
    api = request.getfixturevalue(role)
    exc_id = waiting["exception"]["id"]
    response = api.post(f"/api/v1/exceptions/{exc_id}/{action}", body)
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    record = ExceptionRecord.objects.get(pk=exc_id)
    assert (record.status, record.owner_id, record.retry_count) == ("open", None, 0)


def test_readers_see_the_queue_and_integration_does_not(waiting, auditor, integration, controller):
    assert auditor.get("/api/v1/exceptions").json()["count"] == 1
    assert auditor.get(f"/api/v1/exceptions/{waiting['exception']['id']}").status_code == 200
    assert integration.get("/api/v1/exceptions").status_code == 403


def test_controller_and_admin_may_retry(waiting, controller, admin_api):
    assert controller.post(f"/api/v1/exceptions/{waiting['exception']['id']}/retry").status_code == 200
    assert admin_api.post(f"/api/v1/exceptions/{waiting['exception']['id']}/retry").json()["retry_count"] == 2


def test_unknown_exception_is_404(entity, finance):
    assert finance.post("/api/v1/exceptions/00000000-0000-0000-0000-000000000000/retry").status_code == 404
