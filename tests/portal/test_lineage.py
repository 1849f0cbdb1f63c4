"""Lineage both ways through the API: a journal back to its event and invoice and on to the other
journals; an invoice to every event, version (with field diffs), payment, credit, journal and the
reconciliation; an ERP document reference back to the journal and event; an exception to its trace.
Every step carries its audit entries with their hashes (and seal once sealed). Scoped to the caller's
entities (404 outside, the same as unknown); auditors may read; source systems may not (403).

Every trace built in these tests leaves through its typed serializer (portal.serializers) with exactly the
bytes it had as the plain dict lineage assembled (`typed_bodies_keep_their_bytes`, for each test here).
"""
import hashlib
import json

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from audit import services as audit
from audit.models import AuditEntry, AuditSeal
from billing_sync import tokens
from config import correlation
from exceptions_queue.models import ExceptionRecord
from ledger import services as ledger
from ledger.models import ErpBatch, Journal
from portal import lineage
from tests import factories as f
from tests.fixtures import Api, erpnext_configure

pytestmark = pytest.mark.django_db
TRACE_SERIALIZERS = {"EventTraceSerializer", "ExceptionTraceSerializer", "JournalTraceSerializer",
                     "InvoiceTraceSerializer", "ErpReferenceTraceSerializer"}


@pytest.fixture(autouse=True)
def typed_bodies_keep_their_bytes(monkeypatch):
    """Each trace's JSON through its serializer is byte for byte its JSON as lineage built it: the serializers
    declare every key, in order, and change no value (a key they missed would be dropped and fail here)."""
    seen = []
    typed = lineage._typed

    def checked(serializer_class, trace):
        before = json.dumps(trace)
        data = typed(serializer_class, trace)
        seen.append((serializer_class.__name__, before, json.dumps(data)))
        return data

    monkeypatch.setattr(lineage, "_typed", checked)
    yield seen
    for name, before, after in seen:
        assert after == before, f"{name} changed the body"


@pytest.fixture
def book(entity, integration):
    """A posted invoice (amended once), a payment on it, a credit note, and an over-application exception."""
    integration.send(f.customer("cus_ln"))
    issued = f.invoice("inv_ln", customer_id="cus_ln", lines=[("100.00", "7.25")])
    response = integration.send(issued)
    assert response.status_code == 202, response.content
    issued_event = response.json()["id"]
    amended_event = integration.send(f.invoice("inv_ln", customer_id="cus_ln", lines=[("120.00", "8.70")],
                                               version=2, type_="invoice.amended")).json()["id"]
    pay_event = integration.send(f.payment("pay_ln", customer_id="cus_ln", amount="50.00",
                                           allocations=[("inv_ln", "50.00")])).json()["id"]
    credit_event = integration.send(f.credit_note("inv_ln", "10.00", credit_note_id="cn_ln")).json()["id"]
    over_event = integration.send(f.payment("pay_over", customer_id="cus_ln", amount="900.00",
                                            allocations=[("inv_ln", "900.00")])).json()["id"]
    first = Journal.objects.filter(event_id=issued_event).get()
    return {"issued": issued_event, "amended": amended_event, "pay": pay_event, "credit": credit_event,
            "over": over_event, "journal": first, "body": json.dumps(issued).encode()}


def _entry_ok(entry):
    stored = AuditEntry.objects.get(pk=entry["id"])
    assert entry["entry_hash"] == stored.entry_hash == audit.compute_entry_hash(stored)
    assert entry["action"] == stored.action and entry["actor"] == stored.actor


def test_journal_trace_goes_back_to_the_event_and_forward_to_the_erp_and_other_journals(book, auditor):
    journal = book["journal"]
    trace = auditor.get(f"/api/v1/journals/{journal.pk}/trace").json()
    # Back: the event and its raw body's hash.
    [event] = trace["events"]
    assert event["id"] == book["issued"]
    assert event["receipt_sha256"] == hashlib.sha256(book["body"]).hexdigest()
    assert any(c["document"] == "invoice" and c["id"] == "inv_ln" for c in event["canonical_changes"])
    assert "event.received" in [e["action"] for e in event["audit"]]
    # The journal itself: lines, ERP acknowledgement, its own entries.
    body = trace["journal"]
    assert body["id"] == str(journal.pk) and body["status"] == "posted"
    assert body["erp_document_ref"] == journal.erp_document_ref
    assert [a["outcome"] for a in body["erp_attempts"]][-1] == "posted"
    assert body["invoice_ids"] == ["inv_ln"]
    actions = [e["action"] for e in body["audit"]]
    assert "journal.created" in actions and "journal.posted" in actions
    assert all(e["object_id"] == str(journal.pk) for e in body["audit"])
    # Forward: the amendment's reversal, the payment's and the credit note's journals on the same invoice.
    related = {r["id"]: r["relation"] for r in trace["related_journals"]}
    reversal = Journal.objects.get(reverses=journal)
    assert related[str(reversal.pk)] == "reversed_by"
    pay_journal = Journal.objects.get(event_id=book["pay"])
    assert related[str(pay_journal.pk)] == "same_invoice"
    [recon] = trace["reconciliation"]["invoices"]
    assert recon["invoice_id"] == "inv_ln" and recon["ties_out"] is True
    for entry in trace["audit"]:
        _entry_ok(entry)
    # The reversal's trace points back at the original.
    back = auditor.get(f"/api/v1/journals/{reversal.pk}/trace").json()
    assert {r["id"]: r["relation"] for r in back["related_journals"]}[str(journal.pk)] == "reverses"


def test_invoice_trace_has_every_event_version_and_money_movement(book, auditor):
    trace = auditor.get(f"/api/v1/invoices/{f.SOURCE}/inv_ln/trace").json()
    assert trace["invoice"]["invoice_id"] == "inv_ln" and trace["invoice"]["version"] == 2
    event_ids = {e["id"] for e in trace["events"]}
    assert {book["issued"], book["amended"], book["pay"], book["credit"], book["over"]} <= event_ids
    # Versions from simple-history, newest first, with readable field diffs.
    versions = trace["versions"]
    assert versions[-1]["type"] == "created"
    changed = {(c["field"], c["old"], c["new"]) for v in versions for c in v["changes"]}
    assert ("total", "107.2500", "128.7000") in changed
    assert ("version", "1", "2") in changed
    assert ("applied_total", "0.0000", "50.0000") in changed
    assert [a["payment_id"] for a in trace["allocations"]] == ["pay_ln"]
    assert trace["allocations"][0]["amount"] == "50.00"
    assert [p["payment_id"] for p in trace["payments"]] == ["pay_ln"]
    assert "payment.created" in {e["action"] for e in trace["payments"][0]["audit"]}
    assert [c["credit_note_id"] for c in trace["credit_notes"]] == ["cn_ln"]
    # Journals: issue, reversal, re-issue, payment, credit note (all naming the invoice on their lines).
    journal_events = {j["event_id"] for j in trace["journals"]}
    assert {book["issued"], book["amended"], book["pay"], book["credit"]} <= journal_events
    assert all(j["erp_document_ref"] for j in trace["journals"] if j["status"] == "posted")
    # The exception the over-application raised, with its own entries.
    [exc] = [x for x in trace["exceptions"] if x["code"] == "over_application"]
    assert exc["event_id"] == book["over"] and "exception.opened" in {e["action"] for e in exc["audit"]}
    invoice_actions = {e["action"] for e in trace["invoice"]["audit"]}
    assert {"invoice.created", "invoice.amended", "invoice.payment_applied", "invoice.credited"} <= invoice_actions
    [recon] = trace["reconciliation"]["invoices"]
    assert recon["open_amount"] == "68.70" and recon["ledger_open_amount"] == "68.70" and recon["ties_out"]
    ids = [e["id"] for e in trace["audit"]]
    assert ids == sorted(set(ids))
    for entry in trace["audit"]:
        _entry_ok(entry)


def test_erp_reference_leads_back_to_journal_event_and_invoice(book, auditor):
    journal = book["journal"]
    trace = auditor.get("/api/v1/trace", erp_document_ref=journal.erp_document_ref, entity="US01").json()
    assert trace["erp_document_ref"] == journal.erp_document_ref and trace["erp_batch"] is None
    assert [j["id"] for j in trace["journals"]] == [str(journal.pk)]
    assert [e["id"] for e in trace["events"]] == [book["issued"]]
    assert [i["invoice_id"] for i in trace["reconciliation"]["invoices"]] == ["inv_ln"]
    missing = auditor.get("/api/v1/trace", erp_document_ref="NOPE-1", entity="US01")
    assert missing.status_code == 404 and missing["Content-Type"] == "application/problem+json"
    assert missing.json()["code"] == "not_found"
    bad = auditor.get("/api/v1/trace", erp_document_ref=journal.erp_document_ref)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"


def test_seal_positions_appear_once_sealed(book, auditor):
    audit.chain_seal()
    trace = auditor.get(f"/api/v1/journals/{book['journal'].pk}/trace").json()
    for entry in trace["journal"]["audit"]:
        seal = AuditSeal.objects.get(entry_id=entry["id"])
        assert entry["chain_seq"] == seal.seq and entry["chain_hash"] == seal.chain_hash


def test_exception_trace_endpoint(book, finance):
    exc = ExceptionRecord.objects.get(event_id=book["over"])
    trace = finance.get(f"/api/v1/exceptions/{exc.pk}/trace").json()
    assert trace["exception"]["id"] == str(exc.pk) and trace["event"]["id"] == book["over"]
    assert trace == json.loads(json.dumps(lineage.exception_trace(exc.pk)))  # the selector the page uses


def test_scope_not_found_outside_entities_and_integration_refused(book, integration,
                                                                  django_capture_on_commit_callbacks):
    with correlation.bound(None):
        with transaction.atomic():
            ledger.entity_setup(code="GB01", currency="GBP", name="Tieout UK", actor="test")
        raw = tokens.token_issue(username="gb-ops", role="finance_ops", entities=["GB01"], actor="test")
    outsider = Api(raw, django_capture_on_commit_callbacks)
    journal = book["journal"]
    exc = ExceptionRecord.objects.get(event_id=book["over"])
    paths = [f"/api/v1/journals/{journal.pk}/trace", f"/api/v1/invoices/{f.SOURCE}/inv_ln/trace",
             f"/api/v1/exceptions/{exc.pk}/trace"]
    for path in paths:
        response = outsider.get(path)
        assert response.status_code == 404, path
        assert response["Content-Type"] == "application/problem+json" and response.json()["code"] == "not_found"
    assert outsider.get("/api/v1/trace", erp_document_ref=journal.erp_document_ref, entity="US01").status_code == 404
    # Unknown ids answer the same 404.
    assert outsider.get("/api/v1/journals/00000000-0000-0000-0000-000000000000/trace").status_code == 404
    for path in paths:
        assert integration.get(path).status_code == 403
    assert integration.get("/api/v1/trace", erp_document_ref="x", entity="US01").status_code == 403


def test_trace_endpoints_are_in_the_openapi_schema(auditor, entity):
    schema = auditor.client.get("/api/v1/schema", HTTP_ACCEPT="application/json").content.decode()
    for path in ("/api/v1/journals/{id}/trace", "/api/v1/invoices/{source_system}/{invoice_id}/trace",
                 "/api/v1/exceptions/{id}/trace", "/api/v1/trace"):
        assert path in schema, path
    for operation in ("journal_trace", "invoice_trace", "exception_trace", "erp_reference_trace"):
        assert operation in schema


def test_erp_batch_reference_finds_every_member_journal(entity, integration, auditor, erp,
                                                        django_capture_on_commit_callbacks):
    erpnext_configure(entity, erp, posting_mode="batch")
    integration.send(f.customer("cus_bt"))
    integration.send(f.invoice("inv_b1", customer_id="cus_bt", lines=[("10.00", "0")]))
    integration.send(f.invoice("inv_b2", customer_id="cus_bt", lines=[("20.00", "0")]))
    with django_capture_on_commit_callbacks(execute=True):
        ledger.erp_batches_sweep(window_seconds=0)
    batch = ErpBatch.objects.get(status="posted")
    trace = auditor.get("/api/v1/trace", erp_document_ref=batch.erp_document_ref, entity="US01").json()
    assert trace["erp_batch"]["id"] == str(batch.pk) and trace["erp_batch"]["audit"]
    assert {j["erp_batch"] for j in trace["journals"]} == {str(batch.pk)} and len(trace["journals"]) == 2
    assert {i["invoice_id"] for i in trace["reconciliation"]["invoices"]} == {"inv_b1", "inv_b2"}
    assert len(trace["events"]) == 2


def test_invoice_and_journal_traces_run_a_fixed_number_of_queries(entity, integration):
    """More payments on the invoice add rows, not queries (no per-event or per-journal look-ups)."""
    integration.send(f.customer("cus_q"))
    integration.send(f.invoice("inv_q", customer_id="cus_q", lines=[("500.00", "0")]))
    counts = []
    for batch in range(2):
        for n in range(3):
            integration.send(f.payment(f"pay_q{batch}{n}", customer_id="cus_q", amount="10.00",
                                       allocations=[("inv_q", "10.00")]))
        journal = Journal.objects.filter(document_id="inv_q").order_by("created_at").first()
        with CaptureQueriesContext(connection) as invoice_queries:
            trace = lineage.invoice_trace(f.SOURCE, "inv_q")
        with CaptureQueriesContext(connection) as journal_queries:
            lineage.journal_trace(journal.pk)
        counts.append((len(invoice_queries), len(journal_queries)))
        assert len(trace["payments"]) == 3 * (batch + 1)
    assert counts[0] == counts[1], counts


def test_every_trace_is_typed_and_keeps_its_bytes(book, auditor, integration, typed_bodies_keep_their_bytes):
    """All five trace shapes, the exception trace both with its event and with only a journal."""
    journal = book["journal"]
    exc = ExceptionRecord.objects.get(event_id=book["over"])
    journal_only = ExceptionRecord.objects.create(code="posting_failed", process="posting", entity_code="US01",
                                                  message="the ERP refused it", journal=journal)
    for path, params in ((f"/api/v1/events/{book['issued']}/trace", {}), (f"/api/v1/journals/{journal.pk}/trace", {}),
                         (f"/api/v1/invoices/{f.SOURCE}/inv_ln/trace", {}), (f"/api/v1/exceptions/{exc.pk}/trace", {}),
                         (f"/api/v1/exceptions/{journal_only.pk}/trace", {}),
                         ("/api/v1/trace", {"erp_document_ref": journal.erp_document_ref, "entity": "US01"})):
        response = auditor.get(path, **params)
        assert response.status_code == 200, (path, response.content[:300])
    assert integration.get(f"/api/v1/events/{book['issued']}/trace").status_code == 200  # its own event
    assert {name for name, _, _ in typed_bodies_keep_their_bytes} == TRACE_SERIALIZERS
    no_event = auditor.get(f"/api/v1/exceptions/{journal_only.pk}/trace").json()
    assert no_event["event"] is None and no_event["validation"] is None
    assert [j["id"] for j in no_event["journals"]] == [str(journal.pk)]


def test_trace_responses_are_typed_in_the_openapi_schema(auditor, entity):
    schema = auditor.client.get("/api/v1/schema", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    for path, component in (("/api/v1/events/{id}/trace", "EventTrace"),
                            ("/api/v1/journals/{id}/trace", "JournalTrace"),
                            ("/api/v1/invoices/{source_system}/{invoice_id}/trace", "InvoiceTrace"),
                            ("/api/v1/exceptions/{id}/trace", "ExceptionTrace"),
                            ("/api/v1/trace", "ErpReferenceTrace")):
        body = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{component}"}, path
    audit_entry = schema["components"]["schemas"]["TraceAuditEntry"]["properties"]
    assert audit_entry["at"] == {"type": "string", "format": "date-time"}
    assert audit_entry["chain_seq"]["nullable"] is True
    assert schema["components"]["schemas"]["TraceJournalLine"]["properties"]["debit"]["format"] == "decimal"


def test_invoice_trace_finds_failed_events_by_the_documents_they_touch_not_by_the_message(book, auditor,
                                                                                          integration):
    """An exception's message is for people: the trace finds the failed events through the documents each
    event touched (Event.order_keys), so a reworded message loses nothing and a message that happens to
    name the invoice adds nothing."""
    over = ExceptionRecord.objects.get(event_id=book["over"])
    ExceptionRecord.objects.filter(pk=over.pk).update(message="allocation larger than the open amount")
    integration.send(f.invoice("inv_other", customer_id="cus_ln", lines=[("5.00", "0")]))
    other = integration.send(f.payment("pay_other", customer_id="cus_ln", amount="900.00",
                                       allocations=[("inv_other", "900.00")])).json()["id"]
    ExceptionRecord.objects.filter(event_id=other).update(message="over-application, see invoice inv_ln")
    trace = auditor.get(f"/api/v1/invoices/{f.SOURCE}/inv_ln/trace").json()
    assert book["over"] in {e["id"] for e in trace["events"]}
    assert str(over.pk) in {x["id"] for x in trace["exceptions"]}
    assert other not in {e["id"] for e in trace["events"]}
    assert not [x for x in trace["exceptions"] if x["event_id"] == other]
