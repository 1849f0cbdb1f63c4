"""Manual credit memos and write-offs raised by a person, sent through the same pipeline as a source's events:
we build the canonical event (`credit_note.issued` / `write_off.requested`, under the invoice's
`source_system`) and hand its bytes to `services.receive_event`, so it gets the same receipt, rules, journal,
approval and trace, with the person as `sent_by` (hence `requested_by`, under segregation of duties). Checks
possible up front (amount format, cap, voided invoice, missing reason) are refused here with the pipeline's
stable codes, shown in the form; the handler rechecks under the invoice's row lock and, if things moved, the
event goes to the exception queue."""
import uuid
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import F, Sum
from django.utils import timezone

from billing_sync import documents, services
from billing_sync.models import ApprovalStatus, CreditNote, Event, Invoice, WriteOff
from config import correlation, roles
from config.errors import ApiError, BusinessRuleError, Codes, Conflict, NotFound, PermissionRefused
from exceptions_queue.models import Approval, ExceptionRecord
from ledger.models import Journal
from config.money import ZERO, fmt, parse_money_input

RAISERS = (roles.FINANCE_OPS, roles.CONTROLLER, roles.ADMIN)
USER_AGENT = "Tieout-Portal/1.0 (manual adjustment)"
MAX_REASON = 500  # the canonical documents keep this much


@dataclass
class ManualAdjustment:
    """What became of a manual adjustment: its event, document id, and the approval or exception it led to."""

    event: Event
    kind: str  # credit_note | write_off
    document_id: str
    status: str  # the event's status after processing
    approval: object = None  # exceptions_queue.models.Approval
    journal: object = None  # ledger.models.Journal
    exception: object = None  # exceptions_queue.models.ExceptionRecord


# Request keys become event ids under this namespace, per user: the same key from two people is two requests.
_KEY_NAMESPACE = uuid.UUID("0b6f1f6e-59c1-4d55-8b2a-8f5f2a6a7c10")


def request_identity(user, kind: str, request_key: str | None) -> uuid.UUID:
    """The identity of one manual request: from the caller's key (a form's hidden token, an API
    Idempotency-Key) when there is one, so a double submit or a retried call is the same request."""
    if not request_key:
        return uuid.uuid4()
    return uuid.uuid5(_KEY_NAMESPACE, f"{user.pk}:{kind}:{request_key}")


def _refuse_unless_allowed(user, invoice: Invoice) -> None:
    if not roles.has_role(user, *RAISERS):
        raise PermissionRefused("only finance operations, controllers and admins raise manual adjustments")
    if not roles.may_see_entity(user, invoice.entity.code):
        raise NotFound(f"no invoice {invoice.source_system}/{invoice.invoice_id}")


def _field_error(field: str, message: str, *, code: str = Codes.INVALID_EVENT, status: int = 422) -> ApiError:
    return ApiError(message, code=code, status=status, errors=[{"field": field, "message": message}],
                    title="The adjustment was refused")


def _amount(value, currency: str, field: str, *, required: bool = True) -> Decimal:
    """A money string (or Decimal) in the invoice's currency, with the API's rules: no floats, no exponents."""
    try:
        amount = parse_money_input(value, currency)
    except ValueError as exc:
        raise _field_error(field, f"Money {exc}.") from None
    if amount is None:
        if required:
            raise _field_error(field, "This field is required.")
        return ZERO
    if amount < ZERO or (required and amount == ZERO):
        raise _field_error(field, "Must be greater than 0.")
    return amount


def _reason(reason) -> str:
    reason = (reason or "").strip() if isinstance(reason, str) else ""
    if not reason:
        raise _field_error("reason", "A reason is required: the approver reads it.")
    if len(reason) > MAX_REASON:
        raise _field_error("reason", f"Must be at most {MAX_REASON} characters.")
    return reason


def invoice_tax_jurisdictions(invoice: Invoice) -> list[str]:
    """The tax jurisdictions the invoice charged, in first-seen order (where a tax credit can go back to)."""
    seen: list[str] = []
    for taxes in invoice.lines.order_by("id").values_list("taxes", flat=True):
        for tax in taxes or []:
            if tax.get("jurisdiction") and tax["jurisdiction"] not in seen:
                seen.append(tax["jurisdiction"])
    return seen


def _taxes(invoice: Invoice, *, tax_amount, tax_jurisdiction, taxes) -> list[dict]:
    currency = invoice.currency
    if taxes:
        out = []
        for index, tax in enumerate(taxes):
            jurisdiction = (tax.get("jurisdiction") or "").strip() if isinstance(tax, dict) else ""
            if not jurisdiction:
                raise _field_error(f"taxes[{index}].jurisdiction", "This field is required.")
            out.append({"jurisdiction": jurisdiction,
                        "amount": _amount(tax.get("amount"), currency, f"taxes[{index}].amount")})
        return out
    amount = _amount(tax_amount, currency, "tax_amount", required=False)
    if amount == ZERO:
        return []
    jurisdiction = (tax_jurisdiction or "").strip()
    if not jurisdiction:
        charged = invoice_tax_jurisdictions(invoice)
        if len(charged) != 1:
            raise _field_error("tax_jurisdiction", "Name the tax jurisdiction the credit goes back to."
                               if charged else "The invoice charged no tax; a tax credit needs a jurisdiction.")
        jurisdiction = charged[0]
    return [{"jurisdiction": jurisdiction, "amount": amount}]


def _precheck(check, invoice: Invoice, amount: Decimal, field: str) -> None:
    """The handler's own cap check (pending requests included), answered as a form error with its code."""
    try:
        check(invoice, amount, include_pending=True)
    except BusinessRuleError as exc:
        raise ApiError(exc.detail, code=exc.code, status=422, errors=[{"field": field, "message": exc.detail}],
                       title="The adjustment was refused") from None


def _event_id(identity: uuid.UUID) -> str:
    return f"tieout-manual-{identity}"


def _payload(invoice: Invoice, type_: str, data: dict, identity: uuid.UUID) -> dict:
    return {"schema_version": "1", "source_system": invoice.source_system,
            "event_id": _event_id(identity), "type": type_,
            "occurred_at": timezone.now().isoformat().replace("+00:00", "Z"), "entity": invoice.entity.code,
            "correlation_id": correlation.get_or_new(), "data": data}


def _result(event: Event, *, kind: str) -> ManualAdjustment:
    """What became of a manual event. Processing is idempotent under the event's row lock: if a worker
    (or eager Celery) got there first, this only reads the status it left."""
    status = services.event_process(event_id=event.pk, actor="system")
    event.refresh_from_db()
    data = event.payload["data"]
    return ManualAdjustment(
        event=event, kind=kind, document_id=data.get("credit_note_id") or data.get("write_off_id"), status=status,
        approval=Approval.objects.filter(event=event).first(),
        journal=Journal.objects.filter(event=event).order_by("created_at").first(),
        exception=ExceptionRecord.objects.filter(event=event).exclude(
            status=ExceptionRecord.Status.RESOLVED).first())


def _already_sent(invoice: Invoice, identity: uuid.UUID, *, kind: str, amount: str) -> ManualAdjustment | None:
    """A repeated request (same key, same person): the first one's outcome, nothing sent again. The same
    key for a different invoice or amount is a mistake worth refusing, not a repeat."""
    event = Event.objects.filter(source_system=invoice.source_system, event_id=_event_id(identity)).first()
    if event is None:
        return None
    data = event.payload.get("data") or {}
    if data.get("invoice_id") != invoice.invoice_id or data.get("amount") != amount:
        raise Conflict("this request (form or Idempotency-Key) was already used for a different adjustment; "
                       "start a new one to raise another", code=Codes.IDEMPOTENCY_CONFLICT)
    return _result(event, kind=kind)


def _send(payload: dict, *, user, remote_addr, kind: str) -> ManualAdjustment:
    """Receive the event as the events API would, then process it now so the person sees the outcome."""
    body = services.canonical_bytes(payload)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "X-Correlation-ID": payload["correlation_id"], "Content-Length": str(len(body))}
    answer = services.event_receive(body=body, user=user, headers=headers, remote_addr=remote_addr)
    if answer.status == 409:
        # The same request, submitted twice at once, lost the race to its twin: answer with the twin's outcome.
        event = Event.objects.filter(source_system=payload["source_system"], event_id=payload["event_id"],
                                     sent_by=user).first()
        if event is not None:
            return _result(event, kind=kind)
    if answer.status != 202:  # the payload is ours and its id is new: only a schema slip could get here
        raise ApiError(answer.body.get("detail", "the adjustment was refused"),
                       code=answer.body.get("code", Codes.INVALID_EVENT), status=answer.status,
                       errors=answer.body.get("errors"))
    return _result(Event.objects.get(pk=answer.body["id"]), kind=kind)


def manual_credit_memo_raise(*, invoice: Invoice, amount, reason, user, tax_amount=None, tax_jurisdiction=None,
                             taxes=None, remote_addr=None, request_key: str | None = None) -> ManualAdjustment:
    """Credit part of `invoice` on `user`'s request (`credit_note.issued`, id MAN-CN-...).

    `amount` is the net credit; tax goes back either as `taxes=[{"jurisdiction", "amount"}]` or as one
    `tax_amount` (to `tax_jurisdiction`, or to the invoice's only jurisdiction when it charged one).
    With a `request_key`, asking again with the same key returns the first request's outcome.
    """
    _refuse_unless_allowed(user, invoice)
    currency = invoice.currency
    net = _amount(amount, currency, "amount")
    tax_lines = _taxes(invoice, tax_amount=tax_amount, tax_jurisdiction=tax_jurisdiction, taxes=taxes)
    reason = _reason(reason)
    identity = request_identity(user, "credit_note", request_key)
    repeated = _already_sent(invoice, identity, kind="credit_note", amount=fmt(net, currency)) if request_key else None
    if repeated is not None:
        return repeated
    gross = net + sum((t["amount"] for t in tax_lines), ZERO)
    _precheck(documents._check_credit, invoice, gross, "amount")
    document_id = f"MAN-CN-{identity.hex[:12].upper()}"
    payload = _payload(invoice, "credit_note.issued", {
        "credit_note_id": document_id, "invoice_id": invoice.invoice_id, "currency": currency,
        "amount": fmt(net, currency),
        "taxes": [{"jurisdiction": t["jurisdiction"], "amount": fmt(t["amount"], currency)} for t in tax_lines],
        "reason": reason}, identity)
    return _send(payload, user=user, remote_addr=remote_addr, kind="credit_note")


def manual_write_off_raise(*, invoice: Invoice, amount, reason, user, remote_addr=None,
                           request_key: str | None = None) -> ManualAdjustment:
    """Write off part of `invoice`'s open amount on `user`'s request (`write_off.requested`, id MAN-WO-...).

    With a `request_key`, asking again with the same key returns the first request's outcome.
    """
    _refuse_unless_allowed(user, invoice)
    currency = invoice.currency
    value = _amount(amount, currency, "amount")
    reason = _reason(reason)
    identity = request_identity(user, "write_off", request_key)
    repeated = _already_sent(invoice, identity, kind="write_off", amount=fmt(value, currency)) if request_key else None
    if repeated is not None:
        return repeated
    _precheck(documents._check_write_off, invoice, value, "amount")
    document_id = f"MAN-WO-{identity.hex[:12].upper()}"
    payload = _payload(invoice, "write_off.requested", {
        "write_off_id": document_id, "invoice_id": invoice.invoice_id, "currency": currency,
        "amount": fmt(value, currency), "reason": reason}, identity)
    return _send(payload, user=user, remote_addr=remote_addr, kind="write_off")


def creditable_room(invoice: Invoice) -> Decimal:
    """What a credit note may still take (total minus credits booked and pending), never below 0."""
    if invoice.status == Invoice.Status.VOIDED:
        return ZERO
    pending = CreditNote.objects.filter(invoice=invoice, status=ApprovalStatus.PENDING_APPROVAL).aggregate(
        s=Sum(F("amount") + F("tax_amount")))["s"] or ZERO
    return max(invoice.total - invoice.credited_total - pending, ZERO)


def write_off_room(invoice: Invoice) -> Decimal:
    """What a write-off may still take (the open amount minus write-offs pending), never below 0."""
    if invoice.status == Invoice.Status.VOIDED:
        return ZERO
    pending = WriteOff.objects.filter(invoice=invoice, status=ApprovalStatus.PENDING_APPROVAL).aggregate(
        s=Sum("amount"))["s"] or ZERO
    return max(invoice.open_amount - pending, ZERO)
