"""GET /api/v1/events/{id}/trace: the chain of custody of an event (receipt and payload hashes, canonical
changes, journals with lines and ERP attempts, exceptions, approvals, reconciliation) with the audit
entries of every step and their hashes, and their chain positions once sealed.
"""
import hashlib
import json

import pytest

from audit import services as audit
from audit.models import AuditEntry, AuditSeal
from billing_sync.services import canonical_bytes
from exceptions_queue.models import Approval
from ledger.models import Journal
from tests import factories as f

pytestmark = pytest.mark.django_db


def _customer(integration) -> str:
    payload = f.customer()
    assert integration.send(payload).status_code == 202
    return payload["data"]["customer_id"]


def test_trace_of_a_posted_invoice(entity, integration, auditor):
    customer_id = _customer(integration)
    payload = f.invoice(customer_id=customer_id)
    response = integration.send(payload, HTTP_X_CORRELATION_ID="corr-trace")
    event_id = response.json()["id"]
    journal = Journal.objects.get(event_id=event_id)

    trace = auditor.get(f"/api/v1/events/{event_id}/trace").json()

    assert trace["event"]["id"] == event_id and trace["event"]["status"] == "posted"
    assert trace["receipt"]["body_sha256"] == hashlib.sha256(json.dumps(payload).encode()).hexdigest()
    assert trace["receipt"]["headers"]["X-Correlation-ID"] == "corr-trace"
    assert trace["receipt"]["received_at"]
    assert trace["payload_sha256"] == hashlib.sha256(canonical_bytes(payload)).hexdigest()
    [change] = trace["canonical_changes"]
    assert (change["document"], change["id"], change["version"], change["outcome"]) == (
        "invoice", payload["data"]["invoice_id"], 1, "created")

    [body] = trace["journals"]
    assert body["id"] == str(journal.pk)
    assert body["status"] == "posted"
    assert body["erp_document_ref"] == journal.erp_document_ref
    assert body["correlation_id"] == "corr-trace"
    assert sorted((ln["account"], ln["debit"], ln["credit"]) for ln in body["lines"]) == [
        ("1200", "107.25", "0.00"), ("2200", "0.00", "7.25"), ("4000", "0.00", "100.00")]
    [attempt] = body["erp_attempts"]
    assert attempt["outcome"] == "posted"
    assert attempt["erp_document_ref"] == journal.erp_document_ref
    assert attempt["at"] and attempt["connector"] == "builtin"

    assert trace["exceptions"] == []
    [recon] = trace["reconciliation"]["invoices"]
    assert recon == {"invoice_id": payload["data"]["invoice_id"], "open_amount": "107.25",
                     "ledger_open_amount": "107.25", "ties_out": True}

    actions = [entry["action"] for entry in trace["audit"]]
    assert {"event.received", "invoice.created", "journal.created", "event.processed", "journal.posted"} <= set(actions)
    ids = [entry["id"] for entry in trace["audit"]]
    assert ids == sorted(ids)
    for entry in trace["audit"]:
        stored = AuditEntry.objects.get(pk=entry["id"])
        assert entry["entry_hash"] == stored.entry_hash and len(entry["entry_hash"]) == 64
        assert entry["chain_seq"] is None  # not sealed yet

    audit.chain_seal()
    sealed = auditor.get(f"/api/v1/events/{event_id}/trace").json()["audit"]
    assert [e["id"] for e in sealed] == ids
    seqs = [e["chain_seq"] for e in sealed]
    assert all(isinstance(s, int) for s in seqs) and seqs == sorted(seqs)
    for entry in sealed:
        seal = AuditSeal.objects.get(entry_id=entry["id"])
        assert (entry["chain_seq"], entry["chain_hash"]) == (seal.seq, seal.chain_hash)


def test_trace_shows_an_exception_and_its_resolution(entity, integration, finance):
    customer_id = _customer(integration)
    invoice = f.invoice(customer_id=customer_id)
    # The payment arrives before its invoice: it waits, then is processed when the invoice comes.
    event_id = integration.send(f.payment(customer_id=customer_id, amount="107.25",
                                          allocations=[(invoice["data"]["invoice_id"], "107.25")])).json()["id"]
    assert integration.event(event_id)["status"] == "exception"
    integration.send(invoice)
    assert integration.event(event_id)["status"] == "posted"

    trace = finance.get(f"/api/v1/events/{event_id}/trace").json()
    [exc] = trace["exceptions"]
    assert exc["code"] == "awaiting_dependency"
    assert exc["status"] == "resolved"
    assert exc["resolved_at"] and exc["resolution"]
    [journal] = trace["journals"]
    assert journal["status"] == "posted" and journal["erp_attempts"][0]["outcome"] == "posted"
    [recon] = trace["reconciliation"]["invoices"]
    assert recon["ties_out"] is True and recon["open_amount"] == "0.00"
    actions = [entry["action"] for entry in trace["audit"]]
    for action in ("exception.opened", "event.exception", "event.requeued", "exception.resolved", "journal.posted"):
        assert action in actions, actions
    assert actions.index("exception.opened") < actions.index("exception.resolved")


def test_trace_shows_approvals(entity, integration, controller, auditor):
    customer_id = _customer(integration)
    invoice = f.invoice(customer_id=customer_id)
    integration.send(invoice)
    event_id = integration.send(f.write_off(invoice["data"]["invoice_id"], "7.25")).json()["id"]
    approval = Approval.objects.get(event_id=event_id)
    controller.post(f"/api/v1/approvals/{approval.pk}/approve", {"comment": "small balance"})
    trace = auditor.get(f"/api/v1/events/{event_id}/trace").json()
    [body] = trace["approvals"]
    assert body["id"] == str(approval.pk) and body["status"] == "approved" and body["kind"] == "write_off"
    assert [(d["user"], d["decision"], d["comment"]) for d in body["decisions"]] == [
        ("carl-controller", "approve", "small balance")]
    actions = {entry["action"] for entry in trace["audit"]}
    assert {"approval.requested", "approval.approve", "approval.approved", "journal.released"} <= actions
