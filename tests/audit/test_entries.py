"""Audit entries (`audit.services.entries`): written with every state change in the same transaction,
stored as the exact canonical bytes that were hashed.

* Sending an invoice writes event.received, invoice.created, journal.created, journal.posted and
  event.processed, each naming the event and carrying the request's correlation id; an approval
  decision is audited with its actor.
* An entry exists exactly when its change committed: a rolled-back change (or a failed processing
  step) leaves no entry, and `record` refuses to run outside a transaction.
* What is stored is `canonical_json` of the record, byte for byte, awkward characters included, and the
  database refuses a row whose columns differ from that content.
"""
import datetime
import hashlib

import pytest
from django.db import IntegrityError, connection, transaction

from audit import services as audit
from audit.models import AuditEntry
from audit.services import entries as audit_entries
from audit.services import verification
from billing_sync.services import canonical_bytes
from exceptions_queue.models import Approval
from ledger import services as ledger
from ledger.models import Journal, Period
from tests import factories as f
from tests.audit.helpers import sealed
from tests.audit.tamper import triggers_off

pytestmark = pytest.mark.django_db


def _customer(integration) -> str:
    payload = f.customer()
    assert integration.send(payload).status_code == 202
    return payload["data"]["customer_id"]


def _actions(event_id) -> list[str]:
    return list(AuditEntry.objects.filter(event_id=event_id).order_by("id").values_list("action", flat=True))


# ------------------------------------------------------------------------------------------- written with the change
def test_sending_an_invoice_writes_every_step_with_the_event_and_correlation_id(entity, integration):
    customer_id = _customer(integration)
    payload = f.invoice(customer_id=customer_id)
    response = integration.send(payload, HTTP_X_CORRELATION_ID="corr-audit-1")
    assert response.status_code == 202
    event_id = response.json()["id"]
    journal = Journal.objects.get(event_id=event_id)

    actions = _actions(event_id)
    for action in ("event.received", "invoice.created", "journal.created", "event.processed", "journal.posted"):
        assert action in actions, actions
    assert actions[0] == "event.received"
    assert actions.index("journal.created") < actions.index("event.processed") < actions.index("journal.posted")

    entries = AuditEntry.objects.filter(event_id=event_id)
    assert set(entries.values_list("correlation_id", flat=True)) == {"corr-audit-1"}
    assert journal.correlation_id == "corr-audit-1"
    assert response["X-Correlation-ID"] == "corr-audit-1"

    received = entries.get(action="event.received")
    assert received.object_type == "event" and received.object_id == event_id
    assert received.actor == "billing-system"
    assert received.after["payload_sha256"] == hashlib.sha256(canonical_bytes(payload)).hexdigest()
    created = entries.get(action="invoice.created")
    assert created.object_id == f"{f.SOURCE}:{payload['data']['invoice_id']}"
    assert created.after["total"].startswith("107.25")
    assert entries.get(action="journal.created").object_id == str(journal.pk)
    posted = entries.get(action="journal.posted")
    assert posted.object_id == str(journal.pk)
    assert posted.after == {"status": "posted", "erp_document_ref": journal.erp_document_ref}
    assert posted.before == {"status": "ready"}
    for entry in entries:
        assert entry.entry_hash == audit.compute_entry_hash(entry)


def test_an_approval_decision_is_audited_with_its_actor(entity, integration, controller):
    customer_id = _customer(integration)
    invoice = f.invoice(customer_id=customer_id)
    integration.send(invoice)
    event_id = integration.send(f.write_off(invoice["data"]["invoice_id"], "10.00")).json()["id"]
    approval = Approval.objects.get(event_id=event_id)
    controller.post(f"/api/v1/approvals/{approval.pk}/approve", {"comment": "fine"},
                    HTTP_X_CORRELATION_ID="corr-approve")
    entries = AuditEntry.objects.filter(event_id=event_id)
    decided = entries.get(action="approval.approve")
    assert decided.actor == "carl-controller"
    assert decided.after == {"decision": "approve", "comment": "fine"}
    assert decided.correlation_id == "corr-approve"
    assert entries.filter(action="approval.requested", actor="system").exists()
    assert {"approval.approved", "invoice.written_off", "journal.released", "journal.posted"} <= set(
        entries.values_list("action", flat=True))


def test_a_failed_processing_step_leaves_no_entry_for_the_undone_work(entity, integration):
    """The handler's savepoint rolls back with its audit entries; the exception is audited instead."""
    customer_id = _customer(integration)
    first, second = (f.invoice(customer_id=customer_id) for _ in range(2))
    integration.send(first)
    integration.send(second)
    # The first allocation fits, the second over-applies: the whole payment goes to the queue.
    event_id = integration.send(f.payment(customer_id=customer_id, amount="300.00", allocations=[
        (first["data"]["invoice_id"], "100.00"), (second["data"]["invoice_id"], "200.00")])).json()["id"]
    assert integration.event(event_id)["status"] == "exception"
    actions = _actions(event_id)
    assert "invoice.payment_applied" not in actions
    assert "payment.created" not in actions
    assert "journal.created" not in actions
    assert {"event.received", "exception.opened", "event.exception"} <= set(actions)


def test_a_rolled_back_change_leaves_no_entry(entity):
    count = AuditEntry.objects.count()
    with pytest.raises(RuntimeError, match="changed my mind"):
        with transaction.atomic():
            ledger.period_set_status(entity=entity, year=2026, month=10, status=Period.Status.CLOSED, actor="test")
            assert AuditEntry.objects.filter(action="period.closed").exists()
            raise RuntimeError("changed my mind")
    assert not Period.objects.filter(entity=entity, year=2026, month=10, status="closed").exists()
    assert AuditEntry.objects.count() == count
    ledger.period_set_status(entity=entity, year=2026, month=10, status=Period.Status.CLOSED, actor="test")
    entry = AuditEntry.objects.get(action="period.closed")
    assert (entry.object_id, entry.before, entry.after) == ("US01:2026-10", {"status": "open"}, {"status": "closed"})


@pytest.mark.django_db(transaction=True)
def test_record_refuses_to_run_outside_a_transaction(entity):
    count = AuditEntry.objects.count()
    with pytest.raises(RuntimeError, match="inside the transaction"):
        audit.record(actor="test", action="test.outside", object_type="thing", object_id="1")
    assert AuditEntry.objects.count() == count


# ------------------------------------------------------------------------------------------- stored as hashed
@pytest.mark.django_db
def test_awkward_content_is_stored_canonically_and_verifies_on_the_fast_pass():
    """What is stored is `canonical_json` of the record, byte for byte; and the fast pass, which reads it
    through COPY's escaped text format, hashes exactly those bytes (backslashes, quotes, non-ASCII)."""
    awkward = [
        {"before": None, "after": {"note": 'quote " backslash \\ tab \t newline \n bell \x07', "ünïcødé": "日本語 €"}},
        {"before": {"b": [1, 2.5, None, True, {"z": "1", "a": "2"}]}, "after": {"": "", "A": "a", "a": "A"}},
        {"before": [], "after": "a bare string"},
        {"before": {"amount": "1234.5600"}, "after": 42},
    ]
    with transaction.atomic():
        for i, item in enumerate(awkward):
            audit.record(actor="tëster \"q\"", action="test.awkward", object_type="thing/ü", object_id=f"id {i} \\",
                         event_id="6f1c1c8e-1d2b-4c44-9a53-0a2f7f2b1e3d" if i % 2 else None,
                         correlation_id="corr\u2028x", **item)
        # Whole seconds: isoformat() then has no fraction, and the database's check must still agree.
        entry = audit_entries._build(actor="t", action="test.whole_second", object_type="thing", object_id="w",
                                     after={"n": 1},
                                     at=datetime.datetime(2026, 11, 30, 23, 59, 59, tzinfo=datetime.UTC))
        with connection.cursor() as cursor:
            cursor.execute(audit_entries._RECORD_SQL, audit.record_params(entry))
    audit.chain_seal()
    for stored, item in zip(AuditEntry.objects.order_by("id"), awkward + [{"before": None, "after": {"n": 1}}]):
        assert stored.content.encode() == audit.canonical_json(audit.entry_content(
            at=stored.at, actor=stored.actor, action=stored.action, object_type=stored.object_type,
            object_id=stored.object_id, event_id=stored.event_id, before=item["before"], after=item["after"],
            correlation_id=stored.correlation_id))
        assert (stored.before, stored.after) == (item["before"], item["after"])
        assert stored.entry_hash == audit.compute_entry_hash(stored)
    with transaction.atomic():
        fast = verification._fast_pass([], 1, audit.GENESIS, 0)
    assert fast is not None and fast[0] == len(awkward) + 1  # no fall-back to the thorough pass was needed
    result = audit.chain_verify()
    assert result.ok and result.count == len(awkward) + 1, result


@pytest.mark.django_db
def test_a_column_that_differs_from_the_hashed_content_is_refused_by_the_database():
    victim = sealed()[1]
    for column, value in (("actor", "mallory"), ("object_id", "other"), ("at", "2020-01-01T00:00:00Z"),
                          ("event_id", "6f1c1c8e-1d2b-4c44-9a53-0a2f7f2b1e3d"), ("correlation_id", "x")):
        with triggers_off() as cursor, pytest.raises(IntegrityError, match="audit_entry_fields_match"):
            with transaction.atomic():
                cursor.execute(f"UPDATE audit_auditentry SET {column} = %s WHERE id = %s", [value, victim.pk])
