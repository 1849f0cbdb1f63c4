"""API.md's approvals: who must approve what, maker-checker, and what approving or rejecting does.

Defaults: every write-off needs one approval; a credit note whose total (amount plus taxes) is 1,000.00
or more needs one, below that it posts at once; from 10,000.00 two distinct approvers. The requester
never decides their own request, no one decides twice, only controllers and admins decide, and a decided
approval is `already_decided`. Approving posts the journal; rejecting posts nothing and leaves the
invoice as it was. An approval that the world has overtaken (a payment reduced the open amount below
the write-off) is refused with 409 and changes nothing.
"""
from decimal import Decimal

import pytest

from audit.models import AuditEntry
from billing_sync import tokens
from billing_sync.models import Event, Invoice, WriteOff
from exceptions_queue.models import Approval
from ledger.models import Journal, PostingAttempt
from tests import factories as f
from tests.fixtures import Api
from tests.helpers import send

pytestmark = pytest.mark.django_db


# ------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def invoice_id(entity, integration):
    """A posted invoice of 20,000.00 (18,000.00 + 2,000.00 tax) for a fresh customer."""
    customer = f.customer()
    assert integration.send(customer).status_code == 202
    payload = f.invoice(customer_id=customer["data"]["customer_id"], lines=[("18000.00", "2000.00")])
    assert integration.send(payload).status_code == 202
    return payload["data"]["invoice_id"]


def _approval(event) -> Approval:
    return Approval.objects.get(event_id=event["id"])


def _journal(event) -> Journal:
    [journal_id] = event["journal_ids"]
    return Journal.objects.get(pk=journal_id)


def _invoice(api, invoice_id) -> dict:
    response = api.get(f"/api/v1/invoices/{f.SOURCE}/{invoice_id}")
    assert response.status_code == 200
    return response.json()


def _approve(api, approval, comment="ok"):
    return api.post(f"/api/v1/approvals/{approval.pk}/approve", {"comment": comment})


def _reject(api, approval, comment="no"):
    return api.post(f"/api/v1/approvals/{approval.pk}/reject", {"comment": comment})


def _problem(response, status: int, code: str) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == code


def _assert_untouched(api, approval, event, invoice_id, invoice_before) -> None:
    approval.refresh_from_db()
    assert approval.status == Approval.Status.PENDING
    assert approval.decided_at is None
    assert not approval.decisions.exists()
    assert _journal(event).status == Journal.Status.PENDING_APPROVAL
    assert _journal(event).erp_document_ref is None
    assert api.event(event["id"])["status"] == "pending_approval"
    assert _invoice(api, invoice_id) == invoice_before


@pytest.fixture
def requester_as_controller(integration, django_capture_on_commit_callbacks):
    """The integration user (who sends the events, hence raises the requests) also holds the controller role."""
    raw = tokens.token_issue(username="billing-system", role="controller", actor="test")
    return Api(raw, django_capture_on_commit_callbacks)


# ------------------------------------------------------------------------------------------- who must approve
def test_a_write_off_needs_one_approval_by_default(invoice_id, integration, controller):
    before = _invoice(controller, invoice_id)
    event = send(integration, f.write_off(invoice_id, "50.00"))

    assert event["status"] == "pending_approval"
    journal = _journal(event)
    assert journal.status == Journal.Status.PENDING_APPROVAL
    approval = _approval(event)
    assert (approval.kind, approval.required_approvals, approval.status) == ("write_off", 1, "pending")
    assert _invoice(controller, invoice_id) == before  # nothing booked while it waits

    response = _approve(controller, approval, "uncollectible, agreed")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "approved"
    assert [(d["user"], d["decision"], d["comment"]) for d in body["decisions"]] == [
        ("carl-controller", "approve", "uncollectible, agreed")]

    journal.refresh_from_db()
    assert journal.status == Journal.Status.POSTED
    assert journal.erp_document_ref.startswith("JE-US01-2026-")
    assert integration.event(event["id"])["status"] == "posted"
    after = _invoice(controller, invoice_id)
    assert after["written_off_total"] == "50.00"
    assert after["open_amount"] == after["ledger_open_amount"] == "19950.00"


@pytest.mark.parametrize("amount, tax", [("999.99", "0"), ("900.00", "99.99"), ("0.01", "0")])
def test_a_credit_note_below_1000_posts_without_approval(invoice_id, integration, controller, amount, tax):
    event = send(integration, f.credit_note(invoice_id, amount, tax=tax))
    assert event["status"] == "posted"
    assert not Approval.objects.filter(event_id=event["id"]).exists()
    journal = _journal(event)
    assert journal.status == Journal.Status.POSTED and journal.erp_document_ref
    invoice = _invoice(controller, invoice_id)
    assert invoice["credited_total"] == str(Decimal(amount) + Decimal(tax))
    assert invoice["open_amount"] == invoice["ledger_open_amount"]


@pytest.mark.parametrize("amount, tax", [("1000.00", "0"), ("900.00", "100.00"), ("9999.99", "0")])
def test_a_credit_note_from_1000_needs_one_approval(invoice_id, integration, controller, amount, tax):
    event = send(integration, f.credit_note(invoice_id, amount, tax=tax))
    assert event["status"] == "pending_approval"
    approval = _approval(event)
    assert (approval.kind, approval.required_approvals) == ("credit_note", 1)
    assert _journal(event).status == Journal.Status.PENDING_APPROVAL
    assert _invoice(controller, invoice_id)["credited_total"] == "0.00"

    assert _approve(controller, approval).json()["status"] == "approved"
    assert _journal(event).status == Journal.Status.POSTED
    assert integration.event(event["id"])["status"] == "posted"
    invoice = _invoice(controller, invoice_id)
    assert invoice["open_amount"] == invoice["ledger_open_amount"]


@pytest.mark.parametrize("make", [
    lambda inv: f.credit_note(inv, "10000.00"),
    lambda inv: f.credit_note(inv, "9000.00", tax="1000.00"),
    lambda inv: f.write_off(inv, "10000.00"),
    lambda inv: f.write_off(inv, "15000.00"),
], ids=["credit_note", "credit_note_with_tax", "write_off", "large_write_off"])
def test_from_10000_two_distinct_controllers_must_approve(invoice_id, integration, controller, controller2, make):
    event = send(integration, make(invoice_id))
    approval = _approval(event)
    assert approval.required_approvals == 2
    before = _invoice(controller, invoice_id)

    first = _approve(controller, approval, "first")
    assert first.status_code == 200
    assert first.json()["status"] == "pending"
    assert [d["user"] for d in first.json()["decisions"]] == ["carl-controller"]
    assert _journal(event).status == Journal.Status.PENDING_APPROVAL
    assert integration.event(event["id"])["status"] == "pending_approval"
    assert _invoice(controller, invoice_id) == before

    _problem(_approve(controller, approval, "again"), 403, "segregation_of_duties")
    assert approval.decisions.count() == 1

    second = _approve(controller2, approval, "second")
    assert second.status_code == 200
    assert second.json()["status"] == "approved"
    assert [d["user"] for d in second.json()["decisions"]] == ["carl-controller", "cora-controller"]
    assert _journal(event).status == Journal.Status.POSTED
    assert integration.event(event["id"])["status"] == "posted"
    invoice = _invoice(controller, invoice_id)
    assert invoice["open_amount"] == invoice["ledger_open_amount"]
    assert invoice["open_amount"] != before["open_amount"]


def test_just_below_10000_one_approval_is_enough(invoice_id, integration, controller):
    event = send(integration, f.write_off(invoice_id, "9999.99"))
    approval = _approval(event)
    assert approval.required_approvals == 1
    assert _approve(controller, approval).json()["status"] == "approved"
    assert _journal(event).status == Journal.Status.POSTED


def test_an_admin_may_decide(invoice_id, integration, admin_api):
    event = send(integration, f.write_off(invoice_id, "5.00"))
    response = _approve(admin_api, _approval(event))
    assert response.status_code == 200
    assert response.json()["status"] == "approved"


# ------------------------------------------------------------------------------------------- who may decide
def test_the_requester_cannot_approve_their_own_request(invoice_id, integration, requester_as_controller):
    event = send(integration, f.write_off(invoice_id, "50.00"))
    approval = _approval(event)
    assert approval.requested_by.get_username() == "billing-system"
    before = _invoice(requester_as_controller, invoice_id)

    _problem(_approve(requester_as_controller, approval), 403, "segregation_of_duties")
    _problem(_reject(requester_as_controller, approval), 403, "segregation_of_duties")

    _assert_untouched(requester_as_controller, approval, event, invoice_id, before)


def test_the_same_controller_cannot_approve_twice(invoice_id, integration, controller):
    event = send(integration, f.credit_note(invoice_id, "12000.00"))
    approval = _approval(event)
    assert _approve(controller, approval).status_code == 200
    _problem(_approve(controller, approval), 403, "segregation_of_duties")
    _problem(_reject(controller, approval), 403, "segregation_of_duties")
    approval.refresh_from_db()
    assert approval.status == Approval.Status.PENDING
    assert approval.decisions.count() == 1


@pytest.mark.parametrize("first_decision", ["approve", "reject"])
def test_a_decided_approval_is_already_decided(invoice_id, integration, controller, controller2, first_decision):
    event = send(integration, f.write_off(invoice_id, "50.00"))
    approval = _approval(event)
    decide = _approve if first_decision == "approve" else _reject
    assert decide(controller, approval).status_code == 200
    journal_status = _journal(event).status

    _problem(_approve(controller2, approval), 409, "already_decided")
    _problem(_reject(controller2, approval), 409, "already_decided")
    _problem(_approve(controller, approval), 409, "already_decided")

    approval.refresh_from_db()
    assert approval.status == ("approved" if first_decision == "approve" else "rejected")
    assert approval.decisions.count() == 1
    assert _journal(event).status == journal_status


@pytest.mark.parametrize("role_fixture", ["finance", "auditor", "integration"])
def test_other_roles_may_not_decide(invoice_id, integration, request, role_fixture):
    event = send(integration, f.write_off(invoice_id, "50.00"))
    approval = _approval(event)
    api = request.getfixturevalue(role_fixture)
    before = _invoice(request.getfixturevalue("controller"), invoice_id)

    _problem(_approve(api, approval), 403, "permission_denied")
    _problem(_reject(api, approval), 403, "permission_denied")

    _assert_untouched(request.getfixturevalue("controller"), approval, event, invoice_id, before)


def test_an_unknown_approval_is_404(entity, controller):
    response = controller.post("/api/v1/approvals/00000000-0000-0000-0000-000000000000/approve", {"comment": ""})
    _problem(response, 404, "not_found")


# ------------------------------------------------------------------------------------------- rejection
@pytest.mark.parametrize("make", [
    lambda inv: f.write_off(inv, "50.00"),
    lambda inv: f.credit_note(inv, "1500.00", tax="100.00"),
], ids=["write_off", "credit_note"])
def test_rejection_posts_nothing_and_leaves_the_invoice_alone(invoice_id, integration, controller, make):
    before = _invoice(controller, invoice_id)
    tb_before = controller.get("/api/v1/ledger/trial-balance", entity="US01").json()
    event = send(integration, make(invoice_id))
    approval = _approval(event)

    response = _reject(controller, approval, "not justified")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "rejected"
    assert [(d["user"], d["decision"], d["comment"]) for d in body["decisions"]] == [
        ("carl-controller", "reject", "not justified")]

    journal = _journal(event)
    assert journal.status == Journal.Status.REJECTED
    assert journal.erp_document_ref is None
    assert journal.posted_at is None
    assert not PostingAttempt.objects.filter(journal=journal).exists()
    assert integration.event(event["id"])["status"] == "rejected"
    assert Event.objects.get(pk=event["id"]).status == "rejected"
    assert _invoice(controller, invoice_id) == before
    assert controller.get("/api/v1/ledger/trial-balance", entity="US01").json() == tb_before


# ------------------------------------------------------------------------------------------- the list
def test_pending_approvals_list_has_the_fields_of_api_md(invoice_id, integration, controller, controller2, auditor):
    small = send(integration, f.write_off(invoice_id, "50.00"))
    large = send(integration, f.credit_note(invoice_id, "10000.00", tax="500.00"))
    done = send(integration, f.write_off(invoice_id, "1.00"))
    assert _approve(controller, _approval(done)).status_code == 200
    assert _approve(controller2, _approval(large), "looks right").status_code == 200  # 1 of 2

    response = auditor.get("/api/v1/approvals", status="pending")
    assert response.status_code == 200
    results = {item["event"]: item for item in response.json()["results"]}
    assert set(results) == {small["id"], large["id"]}

    for item in results.values():
        assert {"id", "event", "kind", "amount", "currency", "entity", "requested_by", "required_approvals",
                "decisions", "status"} <= set(item)
        assert item["status"] == "pending"
        assert item["currency"] == "USD"
        assert item["entity"] == "US01"
        assert item["requested_by"] == "billing-system"

    w = results[small["id"]]
    assert (w["id"], w["kind"], w["amount"], w["required_approvals"], w["decisions"]) == (
        str(_approval(small).pk), "write_off", "50.00", 1, [])
    c = results[large["id"]]
    assert (c["kind"], c["amount"], c["required_approvals"]) == ("credit_note", "10500.00", 2)
    [decision] = c["decisions"]
    assert set(decision) == {"user", "decision", "comment", "at"}
    assert (decision["user"], decision["decision"], decision["comment"]) == ("cora-controller", "approve",
                                                                           "looks right")
    assert decision["at"]

    approved = controller.get("/api/v1/approvals", status="approved").json()["results"]
    assert [a["event"] for a in approved] == [done["id"]]
    detail = controller.get(f"/api/v1/approvals/{w['id']}").json()
    assert detail["id"] == w["id"] and detail["status"] == "pending"


# ------------------------------------------------------------------------------------------- overtaken by events
def test_approving_a_write_off_above_the_open_amount_after_a_payment_is_409(invoice_id, integration, controller):
    invoice_before = Invoice.objects.get(invoice_id=invoice_id)
    event = send(integration, f.write_off(invoice_id, "5000.00"))
    approval = _approval(event)
    customer_id = invoice_before.customer.customer_id
    paid = send(integration, f.payment(customer_id=customer_id, amount="16000.00",
                                        allocations=[(invoice_id, "16000.00")]))
    assert paid["status"] == "posted"
    before = _invoice(controller, invoice_id)
    assert before["open_amount"] == "4000.00"
    audit_before = AuditEntry.objects.count()

    _problem(_approve(controller, approval), 409, "over_write_off")

    _assert_untouched(controller, approval, event, invoice_id, before)
    assert WriteOff.objects.get(event_id=event["id"]).status == "pending_approval"
    assert AuditEntry.objects.count() == audit_before
    # It can still be rejected.
    assert _reject(controller, approval).json()["status"] == "rejected"
