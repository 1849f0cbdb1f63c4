"""A small receivables history for the report tests, sent through the API as a billing platform would (Celery
eager: processed and posted to the built-in ERP before each call returns): customers, invoices with chosen
issue and due dates, payments (allocated, partly unapplied, applied later), a refund, a credit note, an
approved write-off. Amounts are chosen so that every bucket and every line can be told apart."""
from decimal import Decimal

from django.contrib.auth import get_user_model

from exceptions_queue import services as queue
from tests import factories as f


def at(day: str) -> str:
    """An event time on `day` (noon UTC): its accounting date is `day`."""
    return f"{day}T12:00:00Z"


def customer(integration, customer_id: str, name: str = "Acme Corp") -> None:
    assert integration.send(f.customer(customer_id, name=name)).status_code == 202


def invoice(integration, invoice_id: str, customer_id: str, amount: str, *, issued: str, due: str,
            tax: str = "0") -> None:
    payload = f.invoice(invoice_id, customer_id=customer_id, lines=[(amount, tax)], issue_date=issued, due_date=due,
                        occurred_at=at(issued))
    assert integration.send(payload).status_code == 202


def payment(integration, payment_id: str, customer_id: str, amount: str, *, on: str, allocations=()) -> None:
    payload = f.payment(payment_id, customer_id=customer_id, amount=amount, allocations=allocations,
                        received_at=at(on), occurred_at=at(on))
    assert integration.send(payload).status_code == 202


def applied(integration, payment_id: str, allocations, *, on: str) -> None:
    assert integration.send(f.payment_applied(payment_id, allocations, occurred_at=at(on))).status_code == 202


def refund(integration, payment_id: str, amount: str, *, on: str, invoice_id=None) -> None:
    payload = f.refund(payment_id, amount, invoice_id=invoice_id, occurred_at=at(on))
    assert integration.send(payload).status_code == 202


def credit_note(integration, invoice_id: str, amount: str, *, on: str) -> None:
    assert integration.send(f.credit_note(invoice_id, amount, occurred_at=at(on))).status_code == 202


def write_off(integration, controller, invoice_id: str, amount: str, *, on: str) -> None:
    """A write-off (every one needs approval): requested by the source, approved by `controller` (an Api)."""
    assert integration.send(f.write_off(invoice_id, amount, occurred_at=at(on))).status_code == 202
    pending = controller.get("/api/v1/approvals", status="pending").json()["results"]
    approval = next(a for a in pending if a["kind"] == "write_off")
    assert controller.post(f"/api/v1/approvals/{approval['id']}/approve", {}).status_code == 200


def manual_journal(run, controller, *, entity, on, lines, description="manual adjustment") -> None:
    """A manual journal written by finance (fiona-ops must exist) and approved by `controller`: posted."""
    fiona = get_user_model().objects.get(username="fiona-ops")
    journal = run(queue.manual_journal_create, entity=entity, accounting_date=on, lines=lines,
                  description=description, user=fiona)
    response = controller.post(f"/api/v1/approvals/{journal.approval.pk}/approve", {})
    assert response.status_code == 200, response.content


def D(value) -> Decimal:  # noqa: N802 - reads as a literal in the tests
    return Decimal(value)
