"""Lineage of an event: from the bytes received to the ERP acknowledgement, with every audit entry.

The trace reads through the other apps' models (read-only) and returns the chain of custody in order:
receipt (payload SHA-256), validation, canonical changes, approvals, journals with lines and ERP
attempts, exceptions and their resolution, reconciliation of the invoices touched, and the audit entries
(id, entry hash and chain position) that recorded each step.
"""
from audit.models import AuditEntry, AuditSeal


def _iso(value):
    return value.isoformat() if value else None


def _journal_body(j) -> dict:
    from ledger.money import fmt

    c = j.entity.currency
    return {"id": str(j.pk), "kind": j.kind, "status": j.status, "accounting_date": _iso(j.accounting_date),
            "reverses": str(j.reverses_id) if j.reverses_id else None, "erp_document_ref": j.erp_document_ref,
            "posted_at": _iso(j.posted_at), "correlation_id": j.correlation_id,
            "lines": [{"account": ln.account.code, "debit": fmt(ln.debit, c), "credit": fmt(ln.credit, c),
                       "customer_id": ln.customer_id or None, "invoice_id": ln.invoice_id or None,
                       "jurisdiction": ln.jurisdiction or None} for ln in j.lines.all()],
            "erp_attempts": [{"at": _iso(a.started_at), "finished_at": _iso(a.finished_at),
                              "connector": a.connector, "outcome": a.outcome,
                              "erp_document_ref": a.erp_document_ref or None, "message": a.message}
                             for a in sorted(j.attempts.all(), key=lambda a: a.started_at)]}


def _exception_body(x) -> dict:
    return {"id": str(x.pk), "code": x.code, "status": x.status, "message": x.message,
            "owner": x.owner.get_username() if x.owner_id else None, "created_at": _iso(x.created_at),
            "resolved_at": _iso(x.resolved_at), "resolved_by": x.resolved_by or None,
            "resolution": x.resolution or None}


def _audit_bodies(entries) -> list[dict]:
    ids = [e.pk for e in entries]
    seals = {entry_id: (seq, chain) for entry_id, seq, chain in
             AuditSeal.objects.filter(entry_id__in=ids).values_list("entry_id", "seq", "chain_hash")}
    return [{"id": e.pk, "at": _iso(e.at), "actor": e.actor, "action": e.action, "object_type": e.object_type,
             "object_id": e.object_id, "entry_hash": e.entry_hash, "chain_seq": seals.get(e.pk, (None, None))[0],
             "chain_hash": seals.get(e.pk, (None, None))[1], "correlation_id": e.correlation_id}
            for e in entries]


def _callbacks(event_id) -> list[dict]:
    from billing_sync.models import CallbackDelivery

    return [{"id": str(d.pk), "source_system": d.source_system.name, "kind": d.kind, "status": d.status,
             "attempts": d.attempts, "last_status_code": d.last_status_code, "last_error": d.last_error or None,
             "created_at": _iso(d.created_at), "delivered_at": _iso(d.delivered_at)}
            for d in CallbackDelivery.objects.filter(event_id=event_id).select_related("source_system")
            .order_by("created_at")]


def exception_trace(exception_id) -> dict:
    """The trace behind one exception: its event's whole trace when it has one, plus what concerns the
    exception alone (entries on it that name no event, e.g. a failed callback's); for an exception with
    only a journal (a manual journal that could not post) or nothing at all, the journal and the entries.
    Keys are those of `event_trace` (empty where there is no event), with `callbacks` and `exception`.
    """
    from exceptions_queue.models import ExceptionRecord
    from ledger.models import Journal

    exc = ExceptionRecord.objects.select_related("owner").get(pk=exception_id)
    if exc.event_id:
        trace = event_trace(exc.event_id)
        known = {entry["id"] for entry in trace["audit"]}
        extra = [e for e in AuditEntry.objects.filter(object_id=str(exc.pk)).order_by("id") if e.pk not in known]
        if extra:
            trace["audit"] = sorted(trace["audit"] + _audit_bodies(extra), key=lambda entry: entry["id"])
        trace["exception"] = _exception_body(exc)
        return trace
    journals = []
    if exc.journal_id:
        journals = list(Journal.objects.filter(pk=exc.journal_id).select_related("entity", "reverses")
                        .prefetch_related("lines__account", "attempts"))
    object_ids = {str(exc.pk)} | {str(j.pk) for j in journals}
    entries = list(AuditEntry.objects.filter(object_id__in=object_ids).order_by("id"))
    return {"event": None, "receipt": None, "payload_sha256": None, "validation": None, "canonical_changes": [],
            "approvals": [], "journals": [_journal_body(j) for j in journals],
            "exceptions": [_exception_body(exc)], "reconciliation": {"invoices": []}, "callbacks": [],
            "audit": _audit_bodies(entries), "exception": _exception_body(exc)}


def event_trace(event_id) -> dict:
    from billing_sync.models import CanonicalChange, Event, Invoice
    from billing_sync.selectors import event_resources
    from exceptions_queue.models import Approval, ExceptionRecord
    from ledger.models import Journal
    from ledger.money import fmt
    from ledger.selectors import receivable_balance

    event = Event.objects.select_related("receipt").get(pk=event_id)
    receipt = event.receipt
    journals = list(Journal.objects.filter(event_id=event.pk).select_related("entity", "reverses")
                    .prefetch_related("lines__account", "attempts").order_by("created_at"))
    changes = list(CanonicalChange.objects.filter(event=event).order_by("at", "id"))
    approvals = list(Approval.objects.filter(event=event).prefetch_related("decisions__user"))
    exceptions = list(ExceptionRecord.objects.filter(event=event).select_related("owner").order_by("created_at"))
    object_ids = {str(event.pk)} | {str(j.pk) for j in journals} | {str(a.pk) for a in approvals} | {
        str(x.pk) for x in exceptions}
    entries = list(AuditEntry.objects.filter(event_id=event.pk).order_by("id")) + list(
        AuditEntry.objects.filter(object_id__in=object_ids, event_id__isnull=True).order_by("id"))
    entries.sort(key=lambda e: e.pk)
    seals = dict(AuditSeal.objects.filter(entry_id__in=[e.pk for e in entries]).values_list("entry_id", "seq"))
    chain = dict(AuditSeal.objects.filter(entry_id__in=[e.pk for e in entries]).values_list("entry_id", "chain_hash"))

    invoices = []
    for change in changes:
        if change.document_type == "invoice":
            invoice = Invoice.objects.select_related("entity").filter(
                source_system=event.source_system, invoice_id=change.document_id).first()
            if invoice and invoice.invoice_id not in {i["invoice_id"] for i in invoices}:
                ledger_open = receivable_balance(entity=invoice.entity, source_system=invoice.source_system,
                                                 invoice_id=invoice.invoice_id)
                invoices.append({"invoice_id": invoice.invoice_id, "open_amount": fmt(invoice.open_amount,
                                                                                      invoice.currency),
                                 "ledger_open_amount": fmt(ledger_open, invoice.currency),
                                 "ties_out": invoice.open_amount == ledger_open})

    journal_body = _journal_body

    return {
        "event": event_resources([event])[0],
        "receipt": None if receipt is None else {
            "id": receipt.pk, "received_at": _iso(receipt.received_at), "endpoint": receipt.endpoint,
            "client": receipt.client, "body_sha256": receipt.sha256, "headers": receipt.headers,
            "outcome": receipt.outcome, "status_code": receipt.status_code, "size": len(receipt.body or b"")},
        "payload_sha256": event.payload_hash,
        "validation": {"result": "passed", "schema_version": event.payload.get("schema_version")},
        "canonical_changes": [{"document": c.document_type, "id": c.document_id, "version": c.version,
                               "outcome": c.outcome, "at": _iso(c.at)} for c in changes],
        "approvals": [{"id": str(a.pk), "kind": a.kind, "status": a.status, "required_approvals": a.required_approvals,
                       "requested_by": a.requested_by_label,
                       "decisions": [{"user": d.user.get_username(), "decision": d.decision, "comment": d.comment,
                                      "at": _iso(d.at)} for d in a.decisions.all()]} for a in approvals],
        "journals": [journal_body(j) for j in journals],
        "exceptions": [{"id": str(x.pk), "code": x.code, "status": x.status, "message": x.message,
                        "owner": x.owner.get_username() if x.owner_id else None, "created_at": _iso(x.created_at),
                        "resolved_at": _iso(x.resolved_at), "resolved_by": x.resolved_by or None,
                        "resolution": x.resolution or None} for x in exceptions],
        "reconciliation": {"invoices": invoices},
        "callbacks": _callbacks(event.pk),
        "audit": [{"id": e.pk, "at": _iso(e.at), "actor": e.actor, "action": e.action, "object_type": e.object_type,
                   "object_id": e.object_id, "entry_hash": e.entry_hash, "chain_seq": seals.get(e.pk),
                   "chain_hash": chain.get(e.pk), "correlation_id": e.correlation_id} for e in entries],
    }
