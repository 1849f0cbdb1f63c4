"""The audit log: written with every state change in the same transaction, chained, verifiable, traced.

* Sending an invoice writes event.received, invoice.created, journal.created, journal.posted and
  event.processed, each naming the event and carrying the request's correlation id.
* An entry exists exactly when its change committed: a rolled-back change leaves no entry, and
  `audit.services.record` refuses to run outside a transaction.
* `manage.py audit_verify` seals what is pending and prints `OK <n> entries` on a clean chain; after
  tampering (done as the superuser with `session_replication_role = replica`, which is what it takes to
  get past the append-only triggers) it exits 1 naming the first bad entry.
* GET /api/v1/events/{id}/trace returns the chain of custody: receipt and payload hashes, canonical
  changes, journals with lines and ERP attempts, exceptions, reconciliation and the audit entries with
  their hashes (and their chain positions once sealed).
"""
import hashlib
import io
import json

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from audit import services as audit
from audit.models import AuditEntry, AuditSeal
from billing_sync.services import canonical_bytes
from ledger import services as ledger
from ledger.models import Journal, Period
from tests import factories as f
from tests.audit.tamper import edit_entry, triggers_off

pytestmark = pytest.mark.django_db


# ------------------------------------------------------------------------------------------- helpers
def _customer(integration) -> str:
    payload = f.customer()
    assert integration.send(payload).status_code == 202
    return payload["data"]["customer_id"]


def _actions(event_id) -> list[str]:
    return list(AuditEntry.objects.filter(event_id=event_id).order_by("id").values_list("action", flat=True))


def _verify() -> tuple[int, str]:
    """Run `manage.py audit_verify`; return (exit code, stdout)."""
    out = io.StringIO()
    try:
        call_command("audit_verify", stdout=out)
    except SystemExit as exc:
        return exc.code, out.getvalue()
    return 0, out.getvalue()



def _history(integration) -> dict:
    """Some audited history: a customer, an invoice (posted), a payment (posted)."""
    customer_id = _customer(integration)
    invoice = f.invoice(customer_id=customer_id)
    integration.send(invoice)
    integration.send(f.payment(customer_id=customer_id, amount="50.00",
                               allocations=[(invoice["data"]["invoice_id"], "50.00")]))
    return invoice


# ------------------------------------------------------------------------------------------- entries
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
    from exceptions_queue.models import Approval

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


# ------------------------------------------------------------------------------------------- audit_verify
def test_audit_verify_is_ok_on_a_clean_chain(entity, integration):
    _history(integration)
    code, out = _verify()
    total = AuditEntry.objects.count()
    assert code == 0
    assert out.strip().splitlines()[-1] == f"OK {total} entries"
    assert AuditSeal.objects.count() == total  # it sealed everything pending first
    seqs = list(AuditSeal.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, total + 1))

    # More history, verified again: the chain grows, still OK.
    _history(integration)
    code, out = _verify()
    assert code == 0
    assert out.strip().splitlines()[-1] == f"OK {AuditEntry.objects.count()} entries"


def test_audit_verify_on_an_empty_log(db):
    assert not AuditEntry.objects.exists()
    code, out = _verify()
    assert (code, out.strip()) == (0, "OK 0 entries")


def _sealed_history(integration) -> list[AuditEntry]:
    _history(integration)
    audit.chain_seal()
    with connection.cursor() as cursor:  # run the seals' deferred FK checks now, as their commit would
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
    entries = list(AuditEntry.objects.order_by("id"))
    assert AuditSeal.objects.count() == len(entries)
    return entries


def test_audit_verify_names_an_entry_whose_content_was_changed(entity, integration):
    entries = _sealed_history(integration)
    victim = next(e for e in entries if e.action == "journal.posted")
    seq = AuditSeal.objects.get(entry=victim).seq
    with triggers_off() as cursor:
        edit_entry(cursor, victim.pk, after={**victim.after, "erp_document_ref": "JE-FAKE"})
    code, out = _verify()
    assert code == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"FAIL entry {victim.pk}:")
    assert f"entry {victim.pk} (seq {seq}) was altered" in last


def test_audit_verify_catches_a_change_whose_entry_hash_was_recomputed(entity, integration):
    entries = _sealed_history(integration)
    victim = next(e for e in entries if e.action == "invoice.created")
    with triggers_off() as cursor:
        edit_entry(cursor, victim.pk, actor="someone-else", rehash=True)
    code, out = _verify()
    assert code == 1
    assert out.strip().splitlines()[-1].startswith(f"FAIL entry {victim.pk}:")


def test_audit_verify_names_a_deleted_entry(entity, integration):
    entries = _sealed_history(integration)
    victim = entries[len(entries) // 2]
    seq = AuditSeal.objects.get(entry=victim).seq
    with triggers_off() as cursor:
        cursor.execute("DELETE FROM audit_auditentry WHERE id = %s", [victim.pk])
    code, out = _verify()
    assert code == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"FAIL entry {victim.pk}:")
    assert f"entry {victim.pk} (seq {seq}) was deleted" in last


def test_audit_verify_names_a_deleted_entry_and_its_seal(entity, integration):
    entries = _sealed_history(integration)
    victim = entries[3]
    with triggers_off() as cursor:
        cursor.execute("DELETE FROM audit_auditseal WHERE entry_id = %s", [victim.pk])
        cursor.execute("DELETE FROM audit_auditentry WHERE id = %s", [victim.pk])
    code, out = _verify()
    assert code == 1
    assert "FAIL entry" in out
    assert "chain position 4 is missing" in out


def test_audit_verify_names_a_broken_chain_link(entity, integration):
    entries = _sealed_history(integration)
    victim = entries[5]
    with triggers_off() as cursor:
        cursor.execute("UPDATE audit_auditseal SET chain_hash = repeat('a', 64) WHERE entry_id = %s", [victim.pk])
    code, out = _verify()
    assert code == 1
    assert out.strip().splitlines()[-1].startswith(f"FAIL entry {victim.pk}: chain broken at entry {victim.pk}")


# ------------------------------------------------------------------------------------------- trace
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
    from exceptions_queue.models import Approval

    approval = Approval.objects.get(event_id=event_id)
    controller.post(f"/api/v1/approvals/{approval.pk}/approve", {"comment": "small balance"})
    trace = auditor.get(f"/api/v1/events/{event_id}/trace").json()
    [body] = trace["approvals"]
    assert body["id"] == str(approval.pk) and body["status"] == "approved" and body["kind"] == "write_off"
    assert [(d["user"], d["decision"], d["comment"]) for d in body["decisions"]] == [
        ("carl-controller", "approve", "small balance")]
    actions = {entry["action"] for entry in trace["audit"]}
    assert {"approval.requested", "approval.approve", "approval.approved", "journal.released"} <= actions


def test_audit_verify_gives_the_same_answer_when_asked_again(entity, integration):
    """An operator (or a script, or an admin view inside one transaction) re-runs the check after a failure.

    Today `chain_verify()` returns from inside its `DECLARE audit_verify_cur` loop without `CLOSE`, so in the
    same transaction a second run fails with `cursor "audit_verify_cur" already exists`."""
    entries = _sealed_history(integration)
    victim = entries[2]
    with triggers_off() as cursor:
        edit_entry(cursor, victim.pk, actor="mallory")
    first = audit.chain_verify()
    assert not first.ok and first.bad_entry_id == victim.pk
    second = audit.chain_verify()
    assert (second.ok, second.bad_entry_id, second.problem) == (False, victim.pk, first.problem)
