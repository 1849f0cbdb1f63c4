"""Lineage: the chain of custody, read-only through other apps' models, from bytes received to ERP
acknowledgement (receipt, validation, canonical changes, approvals, journals, ERP attempts, exceptions,
reconciliation), each step with its audit entries. `event_trace` / `exception_trace` start from what arrived;
`journal_trace`, `invoice_trace` (with `history_diffs`) and `erp_reference_trace` from the ledger or ERP,
taking the reader as `user` and raising `TraceNotFound` outside their entities. Every trace leaves through its
typed serializer in `portal.serializers`."""
from django.core.exceptions import ValidationError
from django.db.models import Q

from audit.models import AuditEntry, AuditSeal
from billing_sync.models import (
    CallbackDelivery,
    CanonicalChange,
    CreditNote,
    Event,
    Invoice,
    PaymentAllocation,
    Refund,
    WriteOff,
)
from billing_sync.ordering import document_key
from billing_sync.selectors import event_resources, invoice_resource, receipt_archive, reconciliation_statuses
from config import roles
from exceptions_queue.models import Approval, ExceptionRecord
from ledger.models import Account, ErpBatch, Journal, JournalLine
from config.money import fmt
from ledger.selectors import receivable_balance
from portal.serializers import (
    ErpReferenceTraceSerializer,
    EventTraceSerializer,
    ExceptionTraceSerializer,
    InvoiceTraceSerializer,
    JournalTraceSerializer,
)


def _iso(value):
    return value.isoformat() if value else None


def _typed(serializer_class, trace: dict) -> dict:
    """The trace as its serializer declares it (the same keys, in the same order, with the same values)."""
    return serializer_class(trace).data


def _journal_body(j) -> dict:
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
    return _callbacks_of([event_id])


def _callbacks_of(event_ids) -> list[dict]:
    return [{"id": str(d.pk), "source_system": d.source_system.name, "kind": d.kind, "status": d.status,
             "attempts": d.attempts, "last_status_code": d.last_status_code, "last_error": d.last_error or None,
             "created_at": _iso(d.created_at), "delivered_at": _iso(d.delivered_at)}
            for d in CallbackDelivery.objects.filter(event_id__in=list(event_ids)).select_related("source_system")
            .order_by("created_at", "id")]


def exception_trace(exception_id) -> dict:
    """The trace behind one exception: its event's whole trace when it has one, plus what concerns the
    exception alone (entries on it that name no event, e.g. a failed callback's); for an exception with
    only a journal (a manual journal that could not post) or nothing at all, the journal and the entries.
    Keys are those of `event_trace` (empty where there is no event), with `callbacks` and `exception`.
    """
    exc = ExceptionRecord.objects.select_related("owner").get(pk=exception_id)
    if exc.event_id:
        trace = _event_trace(exc.event_id)
        known = {entry["id"] for entry in trace["audit"]}
        extra = [e for e in AuditEntry.objects.filter(object_id=str(exc.pk)).order_by("id") if e.pk not in known]
        if extra:
            trace["audit"] = sorted(trace["audit"] + _audit_bodies(extra), key=lambda entry: entry["id"])
        trace["exception"] = _exception_body(exc)
        return _typed(ExceptionTraceSerializer, trace)
    journals = []
    if exc.journal_id:
        journals = list(Journal.objects.filter(pk=exc.journal_id).select_related("entity", "reverses")
                        .prefetch_related("lines__account", "attempts"))
    object_ids = {str(exc.pk)} | {str(j.pk) for j in journals}
    entries = list(AuditEntry.objects.filter(object_id__in=object_ids).order_by("id"))
    return _typed(ExceptionTraceSerializer, {
        "event": None, "receipt": None, "receipt_archive": None, "payload_sha256": None, "validation": None, "canonical_changes": [],
        "approvals": [], "journals": [_journal_body(j) for j in journals], "exceptions": [_exception_body(exc)],
        "reconciliation": {"invoices": []}, "callbacks": [], "audit": _audit_bodies(entries),
        "exception": _exception_body(exc)})


def event_trace(event_id) -> dict:
    """Everything that happened to one event, in order: receipt, validation, canonical changes, approvals,
    journals with their lines and ERP attempts, exceptions, reconciliation, callbacks and audit entries."""
    return _typed(EventTraceSerializer, _event_trace(event_id))


def _receipt_archive(receipt_id) -> dict | None:
    archive = receipt_archive(receipt_id)
    return None if archive is None else {"receipt_id": receipt_id, **archive}


def _event_trace(event_id) -> dict:
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
        "receipt_archive": _receipt_archive(event.receipt_id) if event.receipt_id and receipt is None else None,
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


# --------------------------------------------------------------------------------- traces both ways
# Journals, invoices and ERP document references lead back to the events behind them and forward to what
# followed (other journals, payments, exceptions, the reconciliation). Each step carries the audit entries
# recorded on its object (`audit` on the step), and the whole trace lists them once, in id order.
class TraceNotFound(LookupError):
    """Nothing with that identity (the API and the pages answer 404; so they do outside the user's scope)."""


def _seal_map(ids) -> dict:
    return {entry_id: (seq, chain) for entry_id, seq, chain in
            AuditSeal.objects.filter(entry_id__in=list(ids)).values_list("entry_id", "seq", "chain_hash")}


def _entries_for(object_keys: set[tuple[str, str]], event_ids: set) -> list[AuditEntry]:
    """Entries on the named objects (type, id) plus every entry of the named events, once each, by id."""
    if not object_keys and not event_ids:
        return []
    query = Q()
    by_type: dict[str, set[str]] = {}
    for object_type, object_id in object_keys:
        by_type.setdefault(object_type, set()).add(str(object_id))
    for object_type, ids in by_type.items():
        query |= Q(object_type=object_type, object_id__in=ids)
    if event_ids:
        query |= Q(event_id__in=list(event_ids))
    return list(AuditEntry.objects.filter(query).order_by("id"))


def _attach(step: dict, object_type: str, object_id, bodies_by_object: dict) -> dict:
    step["audit"] = bodies_by_object.get((object_type, str(object_id)), [])
    return step


def _group(bodies: list[dict]) -> dict:
    grouped: dict[tuple[str, str], list[dict]] = {}
    for body in bodies:
        grouped.setdefault((body["object_type"], body["object_id"]), []).append(body)
    return grouped


def _event_summary(event) -> dict:
    return {"id": str(event.pk), "source_system": event.source_system, "event_id": event.event_id,
            "type": event.type, "entity": event.entity_code, "status": event.status,
            "received_at": _iso(event.received_at), "payload_sha256": event.payload_hash,
            "receipt_sha256": event.receipt.sha256 if event.receipt else None,  # None too once archived
            "correlation_id": event.correlation_id}


def _journal_step(j, statuses: dict) -> dict:
    body = _journal_body(j)
    body.update({"entity": j.entity.code, "event_id": str(j.event_id) if j.event_id else None,
                 "source_system": j.source_system or None, "document_type": j.document_type or None,
                 "document_id": j.document_id or None, "document_version": j.document_version,
                 "description": j.description, "created_by": j.created_by or None,
                 "erp_batch": str(j.erp_batch_id) if j.erp_batch_id else None,
                 "invoice_ids": sorted({ln.invoice_id for ln in j.lines.all() if ln.invoice_id}),
                 "reconciliation": statuses[f"journal:{j.pk}"]})
    return body


def _approval_step(a) -> dict:
    return {"id": str(a.pk), "kind": a.kind, "status": a.status, "required_approvals": a.required_approvals,
            "requested_by": a.requested_by_label, "journal_id": str(a.journal_id) if a.journal_id else None,
            "event_id": str(a.event_id) if a.event_id else None,
            "decisions": [{"user": d.user.get_username(), "decision": d.decision, "comment": d.comment,
                           "at": _iso(d.at)} for d in a.decisions.all()]}


def _exception_step(x) -> dict:
    body = _exception_body(x)
    body.update({"event_id": str(x.event_id) if x.event_id else None,
                 "journal_id": str(x.journal_id) if x.journal_id else None, "entity": x.entity_code or None})
    return body


def _reconciliation(invoice, statuses: dict) -> dict:
    ledger_open = receivable_balance(entity=invoice.entity, source_system=invoice.source_system,
                                     invoice_id=invoice.invoice_id)
    return {"source_system": invoice.source_system, "invoice_id": invoice.invoice_id,
            "entity": invoice.entity.code, "open_amount": fmt(invoice.open_amount, invoice.currency),
            "ledger_open_amount": fmt(ledger_open, invoice.currency), "currency": invoice.currency,
            "ties_out": invoice.open_amount == ledger_open,
            # The last reconciliation run's verdict (billing ↔ ledger ↔ ERP), beside this live comparison.
            "status": statuses[f"invoice:{invoice.source_system}:{invoice.invoice_id}"]}


def _journals_qs():
    return (Journal.objects.select_related("entity", "reverses", "event")
            .prefetch_related("lines__account", "attempts").order_by("created_at", "id"))


def _common(*, events, journals, approvals, exceptions, invoices, extra_objects=()) -> dict:
    """Assemble the shared part of a journal/invoice/ERP-reference trace with every step's audit entries."""
    event_ids = {e.pk for e in events}
    keys = {("journal", str(j.pk)) for j in journals} | {("approval", str(a.pk)) for a in approvals} | {
        ("exception", str(x.pk)) for x in exceptions} | {("event", str(e.pk)) for e in events} | {
        ("invoice", f"{i.source_system}:{i.invoice_id}") for i in invoices} | set(extra_objects)
    keys |= {("erp_batch", str(j.erp_batch_id)) for j in journals if j.erp_batch_id}
    entries = _entries_for(keys, event_ids)
    bodies = _audit_bodies(entries)
    grouped = _group(bodies)
    changes = list(CanonicalChange.objects.filter(event_id__in=event_ids).order_by("at", "id"))
    # Reconciliation marks of every journal and invoice in the trace, read in one query.
    statuses = reconciliation_statuses([f"journal:{j.pk}" for j in journals]
                                       + [f"invoice:{i.source_system}:{i.invoice_id}" for i in invoices])
    by_event: dict = {}
    for entry, body in zip(entries, bodies):
        if entry.event_id:
            by_event.setdefault(str(entry.event_id), []).append(body)
    return {
        "events": [{**_event_summary(e),
                    "canonical_changes": [{"document": c.document_type, "id": c.document_id, "version": c.version,
                                           "outcome": c.outcome, "at": _iso(c.at)} for c in changes
                                          if c.event_id == e.pk],
                    "audit": by_event.get(str(e.pk), [])} for e in events],
        "journals": [_attach(_journal_step(j, statuses), "journal", j.pk, grouped) for j in journals],
        "approvals": [_attach(_approval_step(a), "approval", a.pk, grouped) for a in approvals],
        "exceptions": [_attach(_exception_step(x), "exception", x.pk, grouped) for x in exceptions],
        "reconciliation": {"invoices": [_reconciliation(i, statuses) for i in invoices]},
        "callbacks": _callbacks_of(event_ids) if event_ids else [],
        "audit": bodies,
        "_grouped": grouped,
    }


def _finish(trace: dict, serializer_class) -> dict:
    trace.pop("_grouped", None)
    return _typed(serializer_class, trace)


def _invoices_of(journals) -> list:
    pairs = {(j.source_system, ln.invoice_id) for j in journals for ln in j.lines.all() if ln.invoice_id}
    pairs |= {(j.source_system, j.document_id) for j in journals if j.document_type == "invoice" and j.document_id}
    if not pairs:
        return []
    query = Q()
    for source_system, invoice_id in pairs:
        query |= Q(source_system=source_system, invoice_id=invoice_id)
    return list(Invoice.objects.select_related("entity").filter(query).order_by("source_system", "invoice_id"))


def _around_journals(journals, *, user=None) -> tuple[list, list, list, list]:
    """Events, approvals and exceptions of the journals, and the invoices their lines touch."""
    journal_ids = [j.pk for j in journals]
    event_ids = {j.event_id for j in journals if j.event_id}
    events = list(Event.objects.select_related("receipt").filter(pk__in=event_ids).order_by("received_at"))
    approvals = list(Approval.objects.filter(Q(journal_id__in=journal_ids) | Q(event_id__in=event_ids))
                     .prefetch_related("decisions__user").order_by("created_at"))
    exceptions = list(ExceptionRecord.objects.filter(Q(journal_id__in=journal_ids) | Q(event_id__in=event_ids))
                      .select_related("owner").order_by("created_at"))
    return events, approvals, exceptions, _invoices_of(journals)


def _check_scope(user, entity_code: str):
    if user is not None and not roles.may_see_entity(user, entity_code):
        raise TraceNotFound("outside your entities")


def journal_trace(journal_id, *, user=None) -> dict:
    """One journal both ways: back to its event (receipt and payload hashes, canonical changes) and the
    invoices its lines touch; forward to its ERP attempts and acknowledgement, its batch, reversals, the
    other journals on the same invoices, approvals, exceptions, callbacks and the reconciliation.
    `user` (when given) must see the journal's entity, else TraceNotFound."""
    try:
        journal = _journals_qs().filter(pk=journal_id).first()
    except (ValidationError, ValueError):
        journal = None
    if journal is None:
        raise TraceNotFound(f"no journal {journal_id}")
    _check_scope(user, journal.entity.code)
    events, approvals, exceptions, invoices = _around_journals([journal])
    related = [j for j in _journals_qs().filter(
        pk__in=_related_journal_ids(journal, invoices)).exclude(pk=journal.pk)]
    trace = _common(events=events, journals=[journal], approvals=approvals, exceptions=exceptions,
                    invoices=invoices)
    trace["journal"] = trace["journals"][0]
    trace["erp_batch"] = _batch_step(journal.erp_batch, trace["_grouped"]) if journal.erp_batch_id else None
    trace["related_journals"] = [{"id": str(j.pk), "kind": j.kind, "status": j.status,
                                  "accounting_date": _iso(j.accounting_date), "erp_document_ref": j.erp_document_ref,
                                  "event_id": str(j.event_id) if j.event_id else None,
                                  "relation": ("reverses" if journal.reverses_id == j.pk else
                                               "reversed_by" if j.reverses_id == journal.pk else "same_invoice")}
                                 for j in related]
    return _finish(trace, JournalTraceSerializer)


def _related_journal_ids(journal, invoices) -> set:
    ids = set()
    if journal.reverses_id:
        ids.add(journal.reverses_id)
    ids |= set(Journal.objects.filter(reverses_id=journal.pk).values_list("pk", flat=True))
    if invoices:
        query = Q()
        for i in invoices:
            query |= Q(journal__source_system=i.source_system, invoice_id=i.invoice_id)
        ids |= set(_lines_on_invoices(journal.entity, query).values_list("journal_id", flat=True))
    return ids


def _lines_on_invoices(entity, query):
    """Lines of `entity` matching `query` (invoice ids), through the (account, invoice_id) index: naming
    the entity's accounts lets PostgreSQL probe it per account instead of reading every line."""
    accounts = list(Account.objects.filter(entity=entity).values_list("pk", flat=True))
    return JournalLine.objects.filter(query, account_id__in=accounts, journal__entity=entity)


def _batch_step(batch, grouped) -> dict:
    return _attach({"id": str(batch.pk), "status": batch.status, "accounting_date": _iso(batch.accounting_date),
                    "journal_count": batch.journal_count, "erp_document_ref": batch.erp_document_ref,
                    "posted_at": _iso(batch.posted_at)}, "erp_batch", batch.pk, grouped)


def invoice_trace(source_system: str, invoice_id: str, *, user=None) -> dict:
    """Everything that touched one canonical invoice: the events that created, amended, paid, credited,
    wrote off or refunded it (with their receipts' hashes), its versions (simple-history, with field
    diffs), the journals whose lines name it, approvals, payments and allocations, credit notes,
    write-offs, refunds, ERP attempts, exceptions, and the reconciliation (billing open vs ledger open)."""
    invoice = Invoice.objects.select_related("entity", "customer").filter(
        source_system=source_system, invoice_id=invoice_id).first()
    if invoice is None:
        raise TraceNotFound(f"no invoice {source_system}/{invoice_id}")
    _check_scope(user, invoice.entity.code)
    c = invoice.currency
    allocations = list(PaymentAllocation.objects.filter(invoice=invoice).select_related("payment")
                       .order_by("created_at", "id"))
    credit_notes = list(CreditNote.objects.filter(invoice=invoice).order_by("id"))
    write_offs = list(WriteOff.objects.filter(invoice=invoice).order_by("id"))
    refunds = list(Refund.objects.filter(invoice=invoice).order_by("id"))
    journal_ids = set(_lines_on_invoices(invoice.entity, Q(journal__source_system=source_system,
                                                           invoice_id=invoice_id)).values_list("journal_id", flat=True))
    journal_ids |= set(_journals_qs().filter(source_system=source_system, document_type="invoice",
                                             document_id=invoice_id, entity=invoice.entity)
                       .values_list("pk", flat=True))
    journals = list(_journals_qs().filter(pk__in=journal_ids))
    event_ids = set(CanonicalChange.objects.filter(
        event__source_system=source_system, document_type="invoice", document_id=invoice_id)
        .values_list("event_id", flat=True))
    event_ids |= {a.event_id for a in allocations} | {x.event_id for x in credit_notes + write_offs + refunds}
    event_ids |= {j.event_id for j in journals if j.event_id}
    # Events that failed on the invoice changed nothing on it, but they touched it: acceptance recorded the
    # documents each event touches (Event.order_keys: the invoice's document key among them, whether the
    # event changes it, waits for it or carries it). Never the exception's words, which are for people.
    event_ids |= set(ExceptionRecord.objects.filter(
        event__order_keys__contains=[document_key("invoice", source_system, invoice_id)])
        .values_list("event_id", flat=True))
    events = list(Event.objects.select_related("receipt").filter(pk__in=event_ids).order_by("received_at", "id"))
    _, approvals, exceptions, _ = _around_journals(journals)
    approvals = list({a.pk: a for a in approvals + list(
        Approval.objects.filter(event_id__in=event_ids).prefetch_related("decisions__user"))}.values())
    exceptions = list({x.pk: x for x in exceptions + list(
        ExceptionRecord.objects.filter(event_id__in=event_ids).select_related("owner"))}.values())
    approvals.sort(key=lambda a: a.created_at)
    exceptions.sort(key=lambda x: x.created_at)
    payments = {a.payment.pk: a.payment for a in allocations}
    extra = {("payment", f"{p.source_system}:{p.payment_id}") for p in payments.values()}
    extra |= {("credit_note", f"{x.source_system}:{x.credit_note_id}") for x in credit_notes}
    extra |= {("write_off", f"{x.source_system}:{x.write_off_id}") for x in write_offs}
    extra |= {("refund", f"{x.source_system}:{x.refund_id}") for x in refunds}
    trace = _common(events=events, journals=journals, approvals=approvals, exceptions=exceptions,
                    invoices=[invoice], extra_objects=extra)
    grouped = trace["_grouped"]
    trace["invoice"] = _attach(invoice_resource(invoice), "invoice", f"{source_system}:{invoice_id}", grouped)
    # Additive: what finance calls it (paid, overdue, ...), derived from the amounts (Invoice.settlement_on).
    trace["invoice"]["settlement"] = invoice.settlement
    trace["invoice"]["settlement_label"] = invoice.settlement_label
    trace["versions"] = invoice_versions(invoice)
    trace["allocations"] = [{"payment_id": a.payment.payment_id, "amount": fmt(a.amount, c),
                             "event_id": str(a.event_id), "at": _iso(a.created_at)} for a in allocations]
    trace["payments"] = [_attach({"payment_id": p.payment_id, "amount": fmt(p.amount, p.currency),
                                  "received_at": _iso(p.received_at), "method": p.method},
                                 "payment", f"{p.source_system}:{p.payment_id}", grouped) for p in payments.values()]
    trace["credit_notes"] = [_attach({"credit_note_id": x.credit_note_id, "amount": fmt(x.amount, c),
                                      "tax_amount": fmt(x.tax_amount, c), "status": x.status,
                                      "event_id": str(x.event_id)},
                                     "credit_note", f"{x.source_system}:{x.credit_note_id}", grouped)
                             for x in credit_notes]
    trace["write_offs"] = [_attach({"write_off_id": x.write_off_id, "amount": fmt(x.amount, c), "status": x.status,
                                    "event_id": str(x.event_id)},
                                   "write_off", f"{x.source_system}:{x.write_off_id}", grouped) for x in write_offs]
    trace["refunds"] = [_attach({"refund_id": x.refund_id, "amount": fmt(x.amount, c), "event_id": str(x.event_id)},
                                "refund", f"{x.source_system}:{x.refund_id}", grouped) for x in refunds]
    return _finish(trace, InvoiceTraceSerializer)


# Fields that change on every version for bookkeeping reasons, not content: left out of the diffs.
_HISTORY_SKIP = {"history_id", "history_date", "history_change_reason", "history_type", "history_user",
                 "history_user_id", "id"}


def history_diffs(obj) -> list[dict]:
    """The object's simple-history versions, newest first, each with what changed against the one before
    (`changes`: field, old, new, as text) and who/when/type; the first version lists its values as new."""
    records = list(obj.history.all().select_related("history_user").order_by("-history_date", "-history_id"))
    out = []
    for index, record in enumerate(records):
        previous = records[index + 1] if index + 1 < len(records) else None
        if previous is not None:
            delta = record.diff_against(previous)
            changes = [{"field": ch.field, "old": _text(ch.old), "new": _text(ch.new)} for ch in delta.changes
                       if ch.field not in _HISTORY_SKIP]
        else:
            changes = [{"field": f.attname, "old": None, "new": _text(getattr(record, f.attname))}
                       for f in record.instance_type._meta.concrete_fields if f.attname not in _HISTORY_SKIP]
        out.append({"history_id": record.history_id, "at": _iso(record.history_date),
                    "type": {"+": "created", "~": "changed", "-": "deleted"}.get(record.history_type,
                                                                                 record.history_type),
                    "user": record.history_user.get_username() if record.history_user_id else None,
                    "version": getattr(record, "version", None), "changes": changes})
    return out


def _text(value):
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "normalize"):  # Decimal: as stored, without float formatting
        return f"{value:f}"
    return str(value)


def invoice_versions(invoice) -> list[dict]:
    return history_diffs(invoice)


def erp_reference_trace(entity_code: str, erp_document_ref: str, *, user=None) -> dict:
    """An ERP document reference back to what produced it: the journal that carries it (single mode) or
    the ERP batch and its member journals (batch mode), their attempts that returned it, then the events,
    invoices, approvals and exceptions behind them. Scoped like the others (TraceNotFound outside).
    Both look-ups are unique-index probes (a journal outside a batch, or the batch)."""
    ref = (erp_document_ref or "").strip()
    if not ref:
        raise TraceNotFound("no ERP document reference given")
    _check_scope(user, entity_code)
    journals = list(_journals_qs().filter(entity__code=entity_code, erp_batch__isnull=True, erp_document_ref=ref))
    batch = ErpBatch.objects.filter(entity__code=entity_code, erp_document_ref=ref).first()
    if batch is not None:
        journals = list({j.pk: j for j in journals + list(_journals_qs().filter(erp_batch=batch))}.values())
    if not journals and batch is None:
        raise TraceNotFound(f"no ERP document {ref} for {entity_code}")
    journals.sort(key=lambda j: (j.created_at, str(j.pk)))
    events, approvals, exceptions, invoices = _around_journals(journals)
    trace = _common(events=events, journals=journals, approvals=approvals, exceptions=exceptions,
                    invoices=invoices)
    trace["erp_document_ref"] = ref
    trace["entity"] = entity_code
    trace["erp_batch"] = _batch_step(batch, trace["_grouped"]) if batch is not None else None
    return _finish(trace, ErpReferenceTraceSerializer)


def event_trace_for(event_id, *, user=None) -> dict:
    """`event_trace` for the web pages: scoped to the user's entities (TraceNotFound outside), plus every
    step's own audit entries on journals, approvals and exceptions, and the invoices the event touched
    (keys for the pages only, added to the typed event trace; the API's event trace has none of them)."""
    try:
        event = Event.objects.filter(pk=event_id).first()
    except (ValidationError, ValueError):
        event = None
    if event is None:
        raise TraceNotFound(f"no event {event_id}")
    _check_scope(user, event.entity_code)
    trace = event_trace(event.pk)
    grouped = _group(trace["audit"])
    for body in trace["journals"]:  # what the pages link with (the API's event trace stays as it was)
        body.update({"entity": event.entity_code, "source_system": event.source_system, "event_id": str(event.pk)})
    for step, kind in ((trace["journals"], "journal"), (trace["approvals"], "approval"),
                       (trace["exceptions"], "exception")):
        for body in step:
            body["audit"] = grouped.get((kind, body["id"]), [])
    trace["event_audit"] = grouped.get(("event", str(event.pk)), [])
    for inv in trace["reconciliation"]["invoices"]:
        inv["source_system"] = event.source_system
    return trace
