"""Canonical documents from events: one handler per event type, run inside `event_process`'s transaction. A
handler upserts the document under its row lock (stale versions recorded and ignored), checks the business
rules, best before it writes (`BusinessRuleError` with a stable code undoes the handler's work and opens an
exception), asks the ledger for the journal of POSTING_RULES.md, and returns what it did and which dependency
keys it satisfied, so waiting events can be woken after commit."""
import datetime
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Sum

from audit import services as audit
from billing_sync import ordering
from billing_sync.models import (
    ApprovalStatus, CanonicalChange, CreditNote, Customer, Event, Invoice, InvoiceLine, Payment, PaymentAllocation,
    Refund, WriteOff,
)
from config import deferred
from config.errors import BusinessRuleError, Codes
from config.history import bulk_create_with_history, create_with_history, save_with_history
from config.memo import memoized, recalled, remember
from exceptions_queue import services as queue
from ledger import rules
from ledger import selectors as ledger_selectors
from ledger import services as ledger
from config.money import ZERO, parse_money

C = CanonicalChange.Outcome


@dataclass
class Outcome:
    status: str
    journals: list = field(default_factory=list)
    changes: list = field(default_factory=list)
    provides: list = field(default_factory=list)


key = ordering.document_key  # dependency keys and order keys name documents alike


def _money(value, currency) -> Decimal:
    return parse_money(value, currency)


def _date(value: str) -> datetime.date:
    return datetime.date.fromisoformat(value)


def _timestamp(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value)


def _event_date(event: Event) -> datetime.date:
    """The date of `occurred_at` as the source wrote it (in its own offset), as POSTING_RULES.md says."""
    return _timestamp(event.payload["occurred_at"]).date()


def _change(event, out: Outcome, document_type, document_id, outcome, version=None):
    # Written behind in a chunk (one statement for all its changes): nothing reads it back before commit.
    deferred.insert(CanonicalChange(event=event, document_type=document_type, document_id=document_id,
                                    version=version, outcome=outcome))
    out.changes.append({"document": document_type, "id": document_id, "version": version, "outcome": outcome})


def _entity(event: Event):
    entity = memoized(("entity", event.entity_code), lambda: ledger_selectors.entity_for_code(event.entity_code))
    if entity is None:
        raise BusinessRuleError(Codes.UNKNOWN_ENTITY, f"entity {event.entity_code} is not set up",
                                dependency=f"entity:{event.entity_code}")
    return entity


def _same_currency(entity, currency: str, what: str):
    if currency != entity.currency:
        raise BusinessRuleError(Codes.CURRENCY_MISMATCH,
                                f"{what} is in {currency} but entity {entity.code} books in {entity.currency}")


def customers_prefetch(events) -> None:
    """Inside a memo scope (a chunk): the customers its events name, read in one statement and remembered for
    `_customer`, rather than one statement per event. A customer not found is read again when asked for (it may
    be created meanwhile, by the chunk or by another worker); one upserted by the chunk is remembered anew."""
    wanted = {(e.source_system, ((e.payload or {}).get("data") or {}).get("customer_id")) for e in events}
    wanted = {(ss, cid) for ss, cid in wanted if isinstance(cid, str) and cid}
    if not wanted:
        return
    for customer in Customer.objects.filter(source_system__in={ss for ss, _ in wanted},
                                            customer_id__in={cid for _, cid in wanted}):
        if (customer.source_system, customer.customer_id) in wanted:
            remember(("customer", customer.source_system, customer.customer_id), customer)


def documents_prefetch(events) -> None:
    """Inside a memo scope (a chunk): which invoices and payments its events would create that do not exist yet,
    one statement each, so that creating each does not look for it first (nor make the chunk write what waits
    behind to look). One the chunk creates is looked for again by later events (or taken from memory while its
    row waits to be written); one created meanwhile by another worker (only its own events create it, and
    per-document order keeps those out of two chunks at once) would be refused by the unique constraint as the
    chunk writes it, and the chunk would go one event at a time."""
    for model, name, types in ((Invoice, "invoice_id", ("invoice.issued", "invoice.amended")),
                               (Payment, "payment_id", ("payment.received",))):
        wanted = {(e.source_system, ((e.payload or {}).get("data") or {}).get(name))
                  for e in events if e.type in types}
        wanted = {(ss, value) for ss, value in wanted if isinstance(value, str) and value}
        if not wanted:
            continue
        found = set(model.objects.filter(source_system__in={ss for ss, _ in wanted},
                                         **{f"{name}__in": {value for _, value in wanted}})
                    .values_list("source_system", name))
        for ss, value in wanted - found:
            remember((model.__name__, "absent", ss, value), True)


def _created(document) -> None:
    """In a chunk: `document` (an invoice or payment) exists from now on; while its row waits to be written,
    later events of the chunk take it from memory (`_waiting`)."""
    name, value = type(document).__name__, (document.invoice_id if isinstance(document, Invoice)
                                            else document.payment_id)
    remember((name, "absent", document.source_system, value), False)
    remember((name, "new", document.source_system, value), document)


def _waiting(model, source_system: str, value: str):
    """The document this chunk created, if its row still waits to be written behind (it is this transaction's
    alone: no other sees it, so it needs no lock); None otherwise (look it up)."""
    document = recalled((model.__name__, "new", source_system, value))
    return document if document is not None and deferred.waiting(document) else None


def _invoice_for_update(source_system: str, invoice_id: str) -> Invoice | None:
    """The invoice under its row lock, or None; in a chunk, None at once for one its prefetch found missing."""
    if recalled(("Invoice", "absent", source_system, invoice_id)):
        return None
    waiting = _waiting(Invoice, source_system, invoice_id)
    if waiting is not None:
        return waiting
    return Invoice.objects.select_for_update().filter(source_system=source_system, invoice_id=invoice_id).first()


def _customer(source_system: str, customer_id: str) -> Customer:
    customer = recalled(("customer", source_system, customer_id))
    if customer is None:
        customer = Customer.objects.filter(source_system=source_system, customer_id=customer_id).first()
    if customer is None:
        raise BusinessRuleError(Codes.UNKNOWN_CUSTOMER, f"customer {customer_id} has not arrived yet",
                                dependency=key("customer", source_system, customer_id))
    return customer


def _invoice_locked(source_system: str, invoice_id: str, entity=None) -> Invoice:
    # `of=("self",)`: the invoice's row only, not its customer's and entity's (joined for reading), which every
    # other worker of the entity would otherwise queue behind until this chunk commits (tests/test_row_locks.py).
    invoice = _waiting(Invoice, source_system, invoice_id) or (
        Invoice.objects.select_for_update(of=("self",)).select_related("customer", "entity")
        .filter(source_system=source_system, invoice_id=invoice_id).first())
    if invoice is None:
        raise BusinessRuleError(Codes.AWAITING_DEPENDENCY, f"invoice {invoice_id} has not arrived yet",
                                dependency=key("invoice", source_system, invoice_id))
    if entity is not None and invoice.entity_id != entity.pk:
        raise BusinessRuleError(Codes.DOCUMENT_CONFLICT,
                                f"invoice {invoice_id} belongs to entity {invoice.entity.code}, not {entity.code}")
    return invoice


def _payment_locked(source_system: str, payment_id: str, entity) -> Payment:
    payment = _waiting(Payment, source_system, payment_id) or (
        Payment.objects.select_for_update(of=("self",)).select_related("customer", "entity")
        .filter(source_system=source_system, payment_id=payment_id).first())
    if payment is None:
        raise BusinessRuleError(Codes.AWAITING_DEPENDENCY, f"payment {payment_id} has not arrived yet",
                                dependency=key("payment", source_system, payment_id))
    if payment.entity_id != entity.pk:
        raise BusinessRuleError(Codes.DOCUMENT_CONFLICT,
                                f"payment {payment_id} belongs to entity {payment.entity.code}, not {entity.code}")
    return payment


def _snapshot_invoice(invoice: Invoice) -> dict:
    return audit.model_snapshot(invoice, ["invoice_id", "number", "version", "status", "total", "applied_total",
                                          "credited_total", "written_off_total", "refunded_total"])


# ------------------------------------------------------------------------------------------- customers
def customer_upserted(event: Event, data: dict, actor) -> Outcome:
    out = Outcome(Event.Status.PROCESSED)
    ss = event.source_system
    customer = Customer.objects.select_for_update().filter(source_system=ss, customer_id=data["customer_id"]).first()
    if customer is not None and data["version"] <= customer.version:
        _change(event, out, "customer", data["customer_id"], C.STALE, data["version"])
        out.status = Event.Status.IGNORED
        return out
    fields = {"name": data["name"], "email": data.get("email") or "", "country": (data.get("country") or "").upper(),
              "version": data["version"], "entity_code": event.entity_code}
    before = audit.model_snapshot(customer, list(fields)) if customer else None
    if customer is None:
        customer = Customer.objects.create(source_system=ss, customer_id=data["customer_id"], **fields)
        outcome = C.CREATED
    else:
        for name, value in fields.items():
            setattr(customer, name, value)
        customer.save(update_fields=list(fields))
        outcome = C.UPDATED
    remember(("customer", ss, customer.customer_id), customer)  # what this chunk's later events see
    _change(event, out, "customer", customer.customer_id, outcome, data["version"])
    audit.record(actor=actor, action=f"customer.{outcome}", object_type="customer",
                 object_id=f"{ss}:{customer.customer_id}", event_id=event.pk, before=before,
                 after=audit.model_snapshot(customer, list(fields)))
    out.provides.append(key("customer", ss, customer.customer_id))
    return out


# ------------------------------------------------------------------------------------------- invoices
def _lines(data: dict, currency: str) -> list[dict]:
    return [{"line_id": line["line_id"], "description": line.get("description") or "",
             "amount": _money(line["amount"], currency), "revenue_account": line.get("revenue_account") or "",
             "taxes": [{"jurisdiction": t["jurisdiction"], "rate": t["rate"], "amount": _money(t["amount"], currency)}
                       for t in line.get("taxes") or []]}
            for line in data["lines"]]


def _write_lines(invoice: Invoice, lines: list[dict], *, replace: bool) -> None:
    """The invoice's lines, with their history rows: two statements, or one in a chunk (its history rows are written
    behind with the chunk's others)."""
    if replace:
        invoice.lines.all().delete()
    bulk_create_with_history([
        InvoiceLine(invoice=invoice, line_id=line["line_id"], description=line["description"][:500],
                    amount=line["amount"], revenue_account=line["revenue_account"],
                    taxes=[{"jurisdiction": t["jurisdiction"], "rate": str(t["rate"]), "amount": str(t["amount"])}
                           for t in line["taxes"]])
        for line in lines], InvoiceLine)


def _invoice_journal(event, entity, invoice: Invoice, lines, actor):
    if invoice.total == ZERO:
        return None  # nothing to book for a zero invoice
    spec = rules.invoice_issued(entity=entity, source_system=invoice.source_system, invoice_id=invoice.invoice_id,
                                customer_id=invoice.customer.customer_id, version=invoice.version,
                                issue_date=invoice.issue_date, total=invoice.total, lines=lines,
                                event_id=event.pk, number=invoice.number)
    return ledger.journal_create(spec, actor=actor)


def invoice_issued(event: Event, data: dict, actor) -> Outcome:
    entity = _entity(event)
    ss = event.source_system
    existing = _invoice_for_update(ss, data["invoice_id"])
    if existing is not None:
        return invoice_amended(event, data, actor)
    out = Outcome(Event.Status.PROCESSED)
    currency = data["currency"]
    _same_currency(entity, currency, f"invoice {data['invoice_id']}")
    customer = _customer(ss, data["customer_id"])
    lines = _lines(data, currency)
    invoice = Invoice(
        source_system=ss, invoice_id=data["invoice_id"], entity=entity, customer=customer, number=data["number"],
        currency=currency, issue_date=_date(data["issue_date"]), due_date=_date(data["due_date"]),
        subtotal=_money(data["subtotal"], currency), tax_total=_money(data["tax_total"], currency),
        total=_money(data["total"], currency), version=data["version"])
    # The journal first, so the invoice is written once (one row and one history version, not two).
    journal = _invoice_journal(event, entity, invoice, lines, actor)
    invoice.current_journal = journal
    create_with_history(invoice)
    _created(invoice)
    _write_lines(invoice, lines, replace=False)
    if journal:
        out.journals.append(journal)
    _change(event, out, "invoice", invoice.invoice_id, C.CREATED, invoice.version)
    audit.record(actor=actor, action="invoice.created", object_type="invoice", object_id=f"{ss}:{invoice.invoice_id}",
                 event_id=event.pk, after=_snapshot_invoice(invoice))
    out.provides.append(key("invoice", ss, invoice.invoice_id))
    return out


def invoice_amended(event: Event, data: dict, actor) -> Outcome:
    ss = event.source_system
    invoice = _invoice_for_update(ss, data["invoice_id"])
    if invoice is None:
        # An amendment carries the whole invoice: if the original never came, book this version as issued.
        return invoice_issued(event, data, actor)
    entity = _entity(event)
    out = Outcome(Event.Status.PROCESSED)
    if data["version"] <= invoice.version:
        _change(event, out, "invoice", invoice.invoice_id, C.STALE, data["version"])
        out.status = Event.Status.IGNORED
        return out
    if invoice.status == Invoice.Status.VOIDED:
        raise BusinessRuleError(Codes.DOCUMENT_CONFLICT, f"invoice {invoice.invoice_id} is voided; it cannot be amended")
    currency = data["currency"]
    if currency != invoice.currency:
        raise BusinessRuleError(Codes.CURRENCY_MISMATCH, f"invoice {invoice.invoice_id} cannot change currency")
    new_total = _money(data["total"], currency)
    used = invoice.applied_total + invoice.credited_total + invoice.written_off_total - invoice.refunded_total
    if used > new_total:
        raise BusinessRuleError(Codes.AMENDMENT_BELOW_APPLIED,
                                f"invoice {invoice.invoice_id}: payments, credits and write-offs of {used} exceed the "
                                f"amended total {new_total}")
    customer = _customer(ss, data["customer_id"])
    before = _snapshot_invoice(invoice)
    if invoice.current_journal_id:
        reversal = ledger.journal_reversal(original=invoice.current_journal, accounting_date=_event_date(event),
                                           kind="invoice_reversal", event_id=event.pk, actor=actor,
                                           description=f"Reversal of invoice {invoice.number} v{invoice.version}")
        out.journals.append(reversal)
    lines = _lines(data, currency)
    invoice.customer = customer
    invoice.number = data["number"]
    invoice.issue_date = _date(data["issue_date"])
    invoice.due_date = _date(data["due_date"])
    invoice.subtotal = _money(data["subtotal"], currency)
    invoice.tax_total = _money(data["tax_total"], currency)
    invoice.total = new_total
    invoice.version = data["version"]
    invoice.current_journal = None
    invoice.save()
    _write_lines(invoice, lines, replace=True)
    journal = _invoice_journal(event, entity, invoice, lines, actor)
    if journal:
        invoice.current_journal = journal
        invoice.save(update_fields=["current_journal"])
        out.journals.append(journal)
    _change(event, out, "invoice", invoice.invoice_id, C.UPDATED, invoice.version)
    audit.record(actor=actor, action="invoice.amended", object_type="invoice", object_id=f"{ss}:{invoice.invoice_id}",
                 event_id=event.pk, before=before, after=_snapshot_invoice(invoice))
    out.provides.append(key("invoice", ss, invoice.invoice_id))
    return out


def invoice_voided(event: Event, data: dict, actor) -> Outcome:
    out = Outcome(Event.Status.PROCESSED)
    ss = event.source_system
    entity = _entity(event)
    invoice = _invoice_locked(ss, data["invoice_id"], entity)
    if invoice.status == Invoice.Status.VOIDED:
        _change(event, out, "invoice", invoice.invoice_id, C.STALE, invoice.version)
        out.status = Event.Status.IGNORED
        return out
    pending = (CreditNote.objects.filter(invoice=invoice, status=ApprovalStatus.PENDING_APPROVAL).exists()
               or WriteOff.objects.filter(invoice=invoice, status=ApprovalStatus.PENDING_APPROVAL).exists())
    if (invoice.applied_total or invoice.credited_total or invoice.written_off_total or invoice.refunded_total
            or pending):
        raise BusinessRuleError(Codes.VOID_WITH_APPLICATIONS,
                                f"invoice {invoice.invoice_id} has payments, credits or write-offs; it cannot be voided")
    before = _snapshot_invoice(invoice)
    if invoice.current_journal_id:
        out.journals.append(ledger.journal_reversal(
            original=invoice.current_journal, accounting_date=_event_date(event), kind="invoice_reversal",
            event_id=event.pk, actor=actor, description=f"Void of invoice {invoice.number}: {data['reason']}"))
    invoice.status = Invoice.Status.VOIDED
    invoice.current_journal = None
    invoice.save(update_fields=["status", "current_journal"])
    _change(event, out, "invoice", invoice.invoice_id, C.UPDATED, invoice.version)
    audit.record(actor=actor, action="invoice.voided", object_type="invoice", object_id=f"{ss}:{invoice.invoice_id}",
                 event_id=event.pk, before=before, after=_snapshot_invoice(invoice))
    return out


# ------------------------------------------------------------------------------------------- payments
def _allocations_checked(ss: str, entity, currency: str, allocations: list[dict]) -> list[tuple[Invoice, Decimal]]:
    """The allocations' invoices under their row locks (in a fixed order, so no deadlock) and amounts, once every
    rule holds for each in turn (an invoice named twice is checked against what the first one leaves open): a
    handler checks before it writes (processing._handler_unit)."""
    wanted = [(a["invoice_id"], _money(a["amount"], currency)) for a in allocations]
    invoices = {}
    for invoice_id, _ in sorted(wanted):
        invoices[invoice_id] = _invoice_locked(ss, invoice_id, entity)
    taken: dict[str, Decimal] = {}
    for invoice_id, amount in wanted:
        invoice = invoices[invoice_id]
        if invoice.status == Invoice.Status.VOIDED:
            raise BusinessRuleError(Codes.OVER_APPLICATION, f"invoice {invoice_id} is voided; nothing can be applied")
        if invoice.currency != currency:
            raise BusinessRuleError(Codes.CURRENCY_MISMATCH, f"invoice {invoice_id} is in {invoice.currency}")
        still_open = invoice.open_amount - taken.get(invoice_id, ZERO)
        if amount > still_open:
            raise BusinessRuleError(Codes.OVER_APPLICATION,
                                    f"allocation of {amount} to invoice {invoice_id} exceeds its open amount "
                                    f"{still_open}")
        taken[invoice_id] = taken.get(invoice_id, ZERO) + amount
    return [(invoices[invoice_id], amount) for invoice_id, amount in wanted]


def _allocate(event, payment: Payment, checked: list[tuple[Invoice, Decimal]], out: Outcome,
              actor) -> list[tuple[str, Decimal]]:
    """Apply allocations `_allocations_checked` passed to their invoices."""
    ss = event.source_system
    result = []
    for invoice, amount in checked:
        invoice_id = invoice.invoice_id
        before = _snapshot_invoice(invoice)
        invoice.applied_total += amount
        save_with_history(invoice, ["applied_total"])
        deferred.insert(PaymentAllocation(payment=payment, invoice=invoice, amount=amount, event=event), readable=True)
        _change(event, out, "invoice", invoice_id, C.APPLIED, invoice.version)
        audit.record(actor=actor, action="invoice.payment_applied", object_type="invoice",
                     object_id=f"{ss}:{invoice_id}", event_id=event.pk, before=before,
                     after=_snapshot_invoice(invoice))
        result.append((invoice_id, amount))
    return result


def payment_received(event: Event, data: dict, actor) -> Outcome:
    out = Outcome(Event.Status.PROCESSED)
    entity = _entity(event)
    ss = event.source_system
    if (not recalled(("Payment", "absent", ss, data["payment_id"]))
            and Payment.objects.filter(source_system=ss, payment_id=data["payment_id"]).exists()):
        _change(event, out, "payment", data["payment_id"], C.STALE)
        out.status = Event.Status.IGNORED
        return out
    currency = data["currency"]
    _same_currency(entity, currency, f"payment {data['payment_id']}")
    customer = _customer(ss, data["customer_id"])
    amount = _money(data["amount"], currency)
    fee = _money(data["fee"], currency) if data.get("fee") else ZERO
    received_at = _timestamp(data["received_at"])
    checked = _allocations_checked(ss, entity, currency, data.get("allocations") or [])
    spec = rules.payment_received(
        entity=entity, source_system=ss, payment_id=data["payment_id"], customer_id=customer.customer_id,
        amount=amount, fee=fee, received_on=received_at.date(),
        allocations=[(invoice.invoice_id, a) for invoice, a in checked], event_id=event.pk)
    ledger.journal_check(spec)  # every rule before the first write
    payment = Payment(source_system=ss, payment_id=data["payment_id"], entity=entity, customer=customer,
                      currency=currency, amount=amount, fee=fee, received_at=received_at, method=data["method"])
    create_with_history(payment)
    _created(payment)
    applied = _allocate(event, payment, checked, out, actor)
    payment.allocated_total = sum((a for _, a in applied), ZERO)
    save_with_history(payment, ["allocated_total"])
    out.journals.append(ledger.journal_create(spec, actor=actor))
    _change(event, out, "payment", payment.payment_id, C.CREATED)
    audit.record(actor=actor, action="payment.created", object_type="payment", object_id=f"{ss}:{payment.payment_id}",
                 event_id=event.pk, after=audit.model_snapshot(payment, ["payment_id", "amount", "fee", "currency",
                                                                          "allocated_total"]))
    out.provides.append(key("payment", ss, payment.payment_id))
    return out


def payment_applied(event: Event, data: dict, actor) -> Outcome:
    out = Outcome(Event.Status.PROCESSED)
    ss = event.source_system
    entity = _entity(event)
    payment = _payment_locked(ss, data["payment_id"], entity)
    total = sum((_money(a["amount"], payment.currency) for a in data["allocations"]), ZERO)
    if total > payment.unapplied_amount:
        raise BusinessRuleError(Codes.OVER_APPLICATION,
                                f"applying {total} exceeds payment {payment.payment_id}'s unapplied balance "
                                f"{payment.unapplied_amount}")
    checked = _allocations_checked(ss, payment.entity, payment.currency, data["allocations"])
    spec = rules.payment_applied(
        entity=payment.entity, source_system=ss, payment_id=payment.payment_id,
        customer_id=payment.customer.customer_id, on=_event_date(event),
        allocations=[(invoice.invoice_id, a) for invoice, a in checked], event_id=event.pk)
    ledger.journal_check(spec)  # every rule before the first write
    _allocate(event, payment, checked, out, actor)
    payment.allocated_total += total
    payment.save(update_fields=["allocated_total"])
    out.journals.append(ledger.journal_create(spec, actor=actor))
    _change(event, out, "payment", payment.payment_id, C.APPLIED)
    return out


def payment_refunded(event: Event, data: dict, actor) -> Outcome:
    out = Outcome(Event.Status.PROCESSED)
    ss = event.source_system
    if Refund.objects.filter(source_system=ss, refund_id=data["refund_id"]).exists():
        _change(event, out, "refund", data["refund_id"], C.STALE)
        out.status = Event.Status.IGNORED
        return out
    entity = _entity(event)
    payment = _payment_locked(ss, data["payment_id"], entity)
    currency = data["currency"]
    if currency != payment.currency:
        raise BusinessRuleError(Codes.CURRENCY_MISMATCH, f"payment {payment.payment_id} is in {payment.currency}")
    amount = _money(data["amount"], currency)
    if amount > payment.amount - payment.refunded_total:
        raise BusinessRuleError(Codes.OVER_REFUND, f"refund of {amount} exceeds what remains of payment "
                                                   f"{payment.payment_id} ({payment.amount - payment.refunded_total})")
    invoice = None
    if data.get("invoice_id"):
        invoice = _invoice_locked(ss, data["invoice_id"], payment.entity)
        if invoice.status == Invoice.Status.VOIDED:
            # A voided invoice has nothing open and nothing paid on it: naming it would put the refund on a
            # receivable that billing shows as 0 (a reconciliation break the property test found).
            raise BusinessRuleError(Codes.OVER_REFUND, f"refund of {amount} names invoice {invoice.invoice_id}, "
                                                       f"which is voided: nothing was paid on it to refund")
        before = _snapshot_invoice(invoice)
        invoice.refunded_total += amount
        invoice.save(update_fields=["refunded_total"])
        audit.record(actor=actor, action="invoice.refunded", object_type="invoice",
                     object_id=f"{ss}:{invoice.invoice_id}", event_id=event.pk, before=before,
                     after=_snapshot_invoice(invoice))
        _change(event, out, "invoice", invoice.invoice_id, C.APPLIED, invoice.version)
    else:
        if amount > payment.unapplied_amount:
            raise BusinessRuleError(Codes.OVER_REFUND, f"refund of {amount} exceeds payment {payment.payment_id}'s "
                                                       f"unapplied balance {payment.unapplied_amount}")
        payment.refunded_unapplied_total += amount
    payment.refunded_total += amount
    payment.save(update_fields=["refunded_total", "refunded_unapplied_total"])
    refund = Refund.objects.create(source_system=ss, refund_id=data["refund_id"], payment=payment, invoice=invoice,
                                   currency=currency, amount=amount, event=event)
    out.journals.append(ledger.journal_create(rules.payment_refunded(
        entity=payment.entity, source_system=ss, refund_id=refund.refund_id, payment_id=payment.payment_id,
        customer_id=payment.customer.customer_id, amount=amount, invoice_id=invoice.invoice_id if invoice else None,
        on=_event_date(event), event_id=event.pk), actor=actor))
    _change(event, out, "refund", refund.refund_id, C.CREATED)
    audit.record(actor=actor, action="refund.created", object_type="refund", object_id=f"{ss}:{refund.refund_id}",
                 event_id=event.pk, after={"payment": payment.payment_id, "amount": amount,
                                           "invoice": invoice.invoice_id if invoice else None})
    return out


# ------------------------------------------------------------------------------------------- credits, write-offs
def _check_credit(invoice: Invoice, gross: Decimal, *, include_pending: bool, exclude_pk=None) -> None:
    pending = ZERO
    if include_pending:
        qs = CreditNote.objects.filter(invoice=invoice, status=ApprovalStatus.PENDING_APPROVAL).exclude(pk=exclude_pk)
        pending = sum((c.gross for c in qs), ZERO)
    room = invoice.total - invoice.credited_total - pending
    if invoice.status == Invoice.Status.VOIDED or gross > room:
        raise BusinessRuleError(Codes.OVER_CREDIT, f"credit of {gross} exceeds what remains creditable on invoice "
                                                   f"{invoice.invoice_id} ({max(room, ZERO)})")


def _check_write_off(invoice: Invoice, amount: Decimal, *, include_pending: bool, exclude_pk=None) -> None:
    pending = ZERO
    if include_pending:
        pending = WriteOff.objects.filter(invoice=invoice, status=ApprovalStatus.PENDING_APPROVAL).exclude(
            pk=exclude_pk).aggregate(s=Sum("amount"))["s"] or ZERO
    room = invoice.open_amount - pending
    if invoice.status == Invoice.Status.VOIDED or amount > room:
        raise BusinessRuleError(Codes.OVER_WRITE_OFF, f"write-off of {amount} exceeds the open amount of invoice "
                                                      f"{invoice.invoice_id} ({max(room, ZERO)})")


def _approvable_target(event: Event, data: dict, out: Outcome, *, model, id_field: str, kind: str):
    """The shared start of a credit note or write-off: a repeated id is ignored; else the locked invoice."""
    ss = event.source_system
    if model.objects.filter(source_system=ss, **{id_field: data[id_field]}).exists():
        _change(event, out, kind, data[id_field], C.STALE)
        out.status = Event.Status.IGNORED
        return None, None
    entity = _entity(event)
    invoice = _invoice_locked(ss, data["invoice_id"], entity)
    if data["currency"] != invoice.currency:
        raise BusinessRuleError(Codes.CURRENCY_MISMATCH, f"invoice {invoice.invoice_id} is in {invoice.currency}")
    return entity, invoice


def _request_approval_or_book(event: Event, out: Outcome, *, entity, journal, kind: str, document_id: str,
                              amount: Decimal, currency: str, required: int, book, actor) -> None:
    """Maker-checker: with approvals required the journal waits for them; otherwise it is booked now.

    The approver reads the reason the source system gave (credit notes and write-offs carry one).
    """
    out.journals.append(journal)
    if required:
        reason = ((event.payload or {}).get("data") or {}).get("reason") or ""
        queue.approval_request(entity=entity, event=event, journal=journal, kind=kind, document_id=document_id,
                               amount=amount, currency=currency, requested_by=event.sent_by, required=required,
                               actor=actor, reason=reason)
        out.status = Event.Status.PENDING_APPROVAL
    else:
        book()
    _change(event, out, kind, document_id, C.CREATED)


def credit_note_issued(event: Event, data: dict, actor) -> Outcome:
    out = Outcome(Event.Status.PROCESSED)
    entity, invoice = _approvable_target(event, data, out, model=CreditNote, id_field="credit_note_id",
                                         kind="credit_note")
    if invoice is None:
        return out
    currency = data["currency"]
    amount = _money(data["amount"], currency)
    taxes = [{"jurisdiction": t["jurisdiction"], "amount": _money(t["amount"], currency)} for t in data["taxes"]]
    tax_amount = sum((t["amount"] for t in taxes), ZERO)
    gross = amount + tax_amount
    _check_credit(invoice, gross, include_pending=True)
    required = queue.approvals_required(entity=entity, kind="credit_note", amount=gross)
    note = CreditNote.objects.create(
        source_system=event.source_system, credit_note_id=data["credit_note_id"], invoice=invoice, currency=currency,
        amount=amount, tax_amount=tax_amount,
        taxes=[{"jurisdiction": t["jurisdiction"], "amount": str(t["amount"])} for t in taxes],
        reason=data["reason"][:500], status=ApprovalStatus.PENDING_APPROVAL if required else ApprovalStatus.APPROVED,
        event=event)
    journal = ledger.journal_create(rules.credit_note(
        entity=entity, source_system=event.source_system, credit_note_id=note.credit_note_id,
        invoice_id=invoice.invoice_id, customer_id=invoice.customer.customer_id, amount=amount, taxes=taxes,
        on=_event_date(event), event_id=event.pk, needs_approval=bool(required)), actor=actor)
    _request_approval_or_book(event, out, entity=entity, journal=journal, kind="credit_note",
                              document_id=note.credit_note_id, amount=gross, currency=currency, required=required,
                              book=lambda: _book_credit(invoice, note, actor=actor, event_id=event.pk), actor=actor)
    audit.record(actor=actor, action="credit_note.created", object_type="credit_note",
                 object_id=f"{event.source_system}:{note.credit_note_id}", event_id=event.pk,
                 after={"invoice": invoice.invoice_id, "amount": amount, "tax": tax_amount, "status": note.status})
    return out


def _book_on_invoice(invoice: Invoice, *, total_field: str, amount: Decimal, action: str, actor, event_id) -> None:
    """Add an approved credit or write-off to the invoice's running total (the caller holds its lock)."""
    before = _snapshot_invoice(invoice)
    setattr(invoice, total_field, getattr(invoice, total_field) + amount)
    invoice.save(update_fields=[total_field])
    audit.record(actor=actor, action=action, object_type="invoice",
                 object_id=f"{invoice.source_system}:{invoice.invoice_id}", event_id=event_id, before=before,
                 after=_snapshot_invoice(invoice))


def _book_credit(invoice: Invoice, note: CreditNote, *, actor, event_id) -> None:
    _book_on_invoice(invoice, total_field="credited_total", amount=note.gross, action="invoice.credited",
                     actor=actor, event_id=event_id)


def write_off_requested(event: Event, data: dict, actor) -> Outcome:
    out = Outcome(Event.Status.PROCESSED)
    entity, invoice = _approvable_target(event, data, out, model=WriteOff, id_field="write_off_id", kind="write_off")
    if invoice is None:
        return out
    currency = data["currency"]
    amount = _money(data["amount"], currency)
    _check_write_off(invoice, amount, include_pending=True)
    required = queue.approvals_required(entity=entity, kind="write_off", amount=amount)
    write_off = WriteOff.objects.create(
        source_system=event.source_system, write_off_id=data["write_off_id"], invoice=invoice, currency=currency,
        amount=amount, reason=data["reason"][:500],
        status=ApprovalStatus.PENDING_APPROVAL if required else ApprovalStatus.APPROVED, event=event)
    journal = ledger.journal_create(rules.write_off(
        entity=entity, source_system=event.source_system, write_off_id=write_off.write_off_id,
        invoice_id=invoice.invoice_id, customer_id=invoice.customer.customer_id, amount=amount,
        on=_event_date(event), event_id=event.pk, needs_approval=bool(required)), actor=actor)
    _request_approval_or_book(event, out, entity=entity, journal=journal, kind="write_off",
                              document_id=write_off.write_off_id, amount=amount, currency=currency,
                              required=required, actor=actor,
                              book=lambda: _book_write_off(invoice, write_off, actor=actor, event_id=event.pk))
    audit.record(actor=actor, action="write_off.created", object_type="write_off",
                 object_id=f"{event.source_system}:{write_off.write_off_id}", event_id=event.pk,
                 after={"invoice": invoice.invoice_id, "amount": amount, "status": write_off.status})
    return out


def _book_write_off(invoice: Invoice, write_off: WriteOff, *, actor, event_id) -> None:
    _book_on_invoice(invoice, total_field="written_off_total", amount=write_off.amount,
                     action="invoice.written_off", actor=actor, event_id=event_id)


HANDLERS = {
    "customer.upserted": customer_upserted,
    "invoice.issued": invoice_issued,
    "invoice.amended": invoice_amended,
    "invoice.voided": invoice_voided,
    "payment.received": payment_received,
    "payment.applied": payment_applied,
    "payment.refunded": payment_refunded,
    "credit_note.issued": credit_note_issued,
    "write_off.requested": write_off_requested,
}


def apply(event: Event, *, actor) -> Outcome:
    return HANDLERS[event.type](event, event.payload["data"], actor)


# ------------------------------------------------------------------------------------------- approvals
def document_approved(*, kind: str, journal, actor) -> None:
    """Every required approval is in: book the credit or write-off (re-checking its cap) and release it."""
    ss, document_id = journal.source_system, journal.document_id
    if kind == "credit_note":
        note = CreditNote.objects.select_for_update().get(source_system=ss, credit_note_id=document_id)
        invoice = Invoice.objects.select_for_update().get(pk=note.invoice_id)
        _check_credit(invoice, note.gross, include_pending=False)
        note.status = ApprovalStatus.APPROVED
        note.save(update_fields=["status"])
        _book_credit(invoice, note, actor=actor, event_id=journal.event_id)
    elif kind == "write_off":
        write_off = WriteOff.objects.select_for_update().get(source_system=ss, write_off_id=document_id)
        invoice = Invoice.objects.select_for_update().get(pk=write_off.invoice_id)
        _check_write_off(invoice, write_off.amount, include_pending=False)
        write_off.status = ApprovalStatus.APPROVED
        write_off.save(update_fields=["status"])
        _book_write_off(invoice, write_off, actor=actor, event_id=journal.event_id)
    ledger.journal_release(journal_id=journal.pk, actor=actor)


def document_rejected(*, kind: str, journal, actor) -> None:
    ss, document_id = journal.source_system, journal.document_id
    model, field_name = {"credit_note": (CreditNote, "credit_note_id"), "write_off": (WriteOff, "write_off_id")}.get(
        kind, (None, None))
    if model is not None:
        doc = model.objects.select_for_update().get(source_system=ss, **{field_name: document_id})
        doc.status = ApprovalStatus.REJECTED
        doc.save(update_fields=["status"])
    ledger.journal_reject(journal_id=journal.pk, actor=actor)
