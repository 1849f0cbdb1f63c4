"""Exception and approval write paths: open, assign, retry, replay, comment, escalate, resolve (one by one
or in bulk); request, approve, reject.

Exceptions record failures a person can fix, with a stable code, linked to their event or journal.
Approvals implement maker-checker: the requester never decides, no one decides twice, and the number of
distinct approvers comes from the entity's policy. Every change is audited in its own transaction.
"""
import hashlib
import uuid
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from audit import services as audit
from billing_sync import callbacks
from config import roles
from config.errors import ApiError, BusinessRuleError, Codes, Conflict, NotFound, PermissionRefused, TieoutError
from exceptions_queue.models import Approval, ApprovalDecision, ApprovalPolicy, ExceptionComment, ExceptionRecord

PROCESS_BY_TYPE = {
    "customer.upserted": ExceptionRecord.Process.CUSTOMER,
    "invoice.issued": ExceptionRecord.Process.INVOICE,
    "invoice.amended": ExceptionRecord.Process.INVOICE,
    "invoice.voided": ExceptionRecord.Process.INVOICE,
    "payment.received": ExceptionRecord.Process.PAYMENT,
    "payment.applied": ExceptionRecord.Process.PAYMENT,
    "payment.refunded": ExceptionRecord.Process.PAYMENT,
    "credit_note.issued": ExceptionRecord.Process.CREDIT,
    "write_off.requested": ExceptionRecord.Process.WRITE_OFF,
}


def _amount_of(event) -> Decimal | None:
    data = event.payload.get("data", {})
    value = data.get("total") or data.get("amount")
    try:
        return Decimal(value) if isinstance(value, str) else None
    except ArithmeticError:
        return None


# The payload field naming the document an event is about, most specific first (a credit note names its
# invoice too; a payment names its customer).
SOURCE_REF_FIELDS = ("credit_note_id", "write_off_id", "refund_id", "payment_id", "invoice_id", "customer_id")


def source_ref_of(payload: dict) -> str:
    data = (payload or {}).get("data") or {}
    for name in SOURCE_REF_FIELDS:
        value = data.get(name)
        if isinstance(value, str) and value:
            return value[:200]
    return ""


def _snapshot(exc: ExceptionRecord) -> dict:
    return {"code": exc.code, "status": exc.status, "message": exc.message,
            "owner": exc.owner.get_username() if exc.owner_id else None, "retry_count": exc.retry_count}


# --------------------------------------------------------------------------------------------- exceptions
def exception_open_for_event(*, event, code: str, message: str, dependency: str | None, actor) -> ExceptionRecord:
    """Open (or update) the event's one unresolved exception. Caller holds the event's lock."""
    exc = ExceptionRecord.objects.select_for_update().filter(event=event).exclude(
        status=ExceptionRecord.Status.RESOLVED).first()
    if exc is None:
        exc = ExceptionRecord.objects.create(
            code=code, message=message, process=PROCESS_BY_TYPE.get(event.type, ExceptionRecord.Process.INVOICE),
            entity_code=event.entity_code, event=event, dependency_key=dependency, amount=_amount_of(event),
            source_ref=source_ref_of(event.payload))
        audit.record(actor=actor, action="exception.opened", object_type="exception", object_id=exc.pk,
                     event_id=event.pk, after=_snapshot(exc))
        return exc
    before = _snapshot(exc)
    exc.code, exc.message, exc.dependency_key, exc.updated_at = code, message, dependency, timezone.now()
    exc.save(update_fields=["code", "message", "dependency_key", "updated_at"])
    audit.record(actor=actor, action="exception.updated", object_type="exception", object_id=exc.pk,
                 event_id=event.pk, before=before, after=_snapshot(exc))
    return exc


def exception_open_for_journal(*, journal, code: str, message: str, actor) -> ExceptionRecord:
    """A journal could not post: one unresolved exception per event (or per journal without an event)."""
    scope = {"event_id": journal.event_id} if journal.event_id else {"journal": journal, "event__isnull": True}
    exc = ExceptionRecord.objects.select_for_update().filter(**scope).exclude(
        status=ExceptionRecord.Status.RESOLVED).first()
    if exc is None:
        exc = ExceptionRecord.objects.create(
            code=code, message=message, process=ExceptionRecord.Process.POSTING, entity_code=journal.entity.code,
            event_id=journal.event_id, journal=journal, source_ref=journal.document_id,
            amount=journal.lines.aggregate(total=Sum("debit"))["total"])  # what did not post
        audit.record(actor=actor, action="exception.opened", object_type="exception", object_id=exc.pk,
                     event_id=journal.event_id, after=_snapshot(exc))
    else:
        before = _snapshot(exc)
        exc.code, exc.message, exc.journal, exc.updated_at = code, message, journal, timezone.now()
        exc.process = ExceptionRecord.Process.POSTING
        exc.save(update_fields=["code", "message", "journal", "process", "updated_at"])
        audit.record(actor=actor, action="exception.updated", object_type="exception", object_id=exc.pk,
                     event_id=journal.event_id, before=before, after=_snapshot(exc))
    if journal.event_id:
        from billing_sync.services import event_refresh_status

        event_refresh_status(event_id=journal.event_id, actor=actor)
    return exc


def exception_open_for_callback(*, source_system: str, message: str, existing_id, event_id, actor) -> ExceptionRecord:
    """Status callbacks to a source system gave up: open its callback_failed exception, or update the open one.

    Not linked to the event (the event's one open exception is about the books); `event_id` only puts
    the audit entry in the event's trace. The caller (billing_sync.callbacks) finds the open one.
    """
    exc = ExceptionRecord.objects.select_for_update().filter(pk=existing_id).exclude(
        status=ExceptionRecord.Status.RESOLVED).first() if existing_id else None
    if exc is None:
        exc = ExceptionRecord.objects.create(code=Codes.CALLBACK_FAILED, message=message,
                                             process=ExceptionRecord.Process.CALLBACK)
        audit.record(actor=actor, action="exception.opened", object_type="exception", object_id=exc.pk,
                     event_id=event_id, after={**_snapshot(exc), "source_system": source_system})
        return exc
    before = _snapshot(exc)
    exc.message, exc.updated_at = message, timezone.now()
    exc.save(update_fields=["message", "updated_at"])
    audit.record(actor=actor, action="exception.updated", object_type="exception", object_id=exc.pk,
                 event_id=event_id, before=before, after={**_snapshot(exc), "source_system": source_system})
    return exc


def _resolve(exc: ExceptionRecord, *, resolution: str, actor) -> None:
    before = _snapshot(exc)
    exc.status = ExceptionRecord.Status.RESOLVED
    exc.resolution = resolution
    exc.resolved_at = exc.updated_at = timezone.now()
    exc.resolved_by = audit.actor_label(actor)
    exc.save(update_fields=["status", "resolution", "resolved_at", "updated_at", "resolved_by"])
    audit.record(actor=actor, action="exception.resolved", object_type="exception", object_id=exc.pk,
                 event_id=exc.event_id, before=before, after={**_snapshot(exc), "resolution": resolution})
    callbacks.notify(event=exc.event, kind=callbacks.RESOLVED, actor=actor)  # no-op without an event


def exceptions_resolve_for_event(*, event, resolution: str, actor) -> int:
    open_ = list(ExceptionRecord.objects.select_for_update().filter(event=event).exclude(
        status=ExceptionRecord.Status.RESOLVED))
    for exc in open_:
        _resolve(exc, resolution=resolution, actor=actor)
    return len(open_)


def exceptions_resolve_for_journal(*, journal, resolution: str, actor) -> int:
    """A journal posted: close the posting exception that waited for it (when no other journal still fails)."""
    from ledger.models import Journal

    qs = ExceptionRecord.objects.select_for_update().filter(journal=journal, code__in=[
        Codes.POSTING_FAILED, Codes.PERIOD_CLOSED]).exclude(status=ExceptionRecord.Status.RESOLVED)
    count = 0
    for exc in qs:
        if exc.event_id and Journal.objects.filter(event_id=exc.event_id, status=Journal.Status.FAILED).exists():
            continue
        _resolve(exc, resolution=resolution, actor=actor)
        count += 1
    return count


def events_waiting_for(keys: list[str]) -> list:
    """Events parked until one of these documents arrives, in acceptance order (they keep their places)."""
    return list(ExceptionRecord.objects.filter(dependency_key__in=keys, event__isnull=False).exclude(
        status=ExceptionRecord.Status.RESOLVED).order_by("event__seq").values_list("event_id", flat=True))


WORK_ROLES = (roles.FINANCE_OPS, roles.CONTROLLER, roles.ADMIN)


def _is_person(actor) -> bool:
    return getattr(actor, "is_authenticated", False) is True


def may_see_exception(user, exc: ExceptionRecord) -> bool:
    """Entity scope: an exception without an entity (a failed callback) is everyone's to see."""
    return not exc.entity_code or roles.may_see_entity(user, exc.entity_code)


def _locked_exception(exception_id, actor=None) -> ExceptionRecord:
    """The exception, locked, for an action by `actor`.

    People act only on exceptions of entities they were granted (anything else is 404, as if it did not
    exist) and only with a role that works the queue. System actors (strings: tasks, callbacks) are not
    scoped. The views check the same first; this is the check that cannot be bypassed.
    """
    exc = ExceptionRecord.objects.select_for_update().filter(pk=exception_id).first()
    if exc is None:
        raise NotFound(f"no exception {exception_id}")
    if _is_person(actor):
        if not may_see_exception(actor, exc):
            raise NotFound(f"no exception {exception_id}")
        if not roles.has_role(actor, *WORK_ROLES):
            raise PermissionRefused("your role may not work the exception queue")
    return exc


def _required_text(value, field: str, what: str) -> str:
    value = (value or "").strip()
    if not value:
        raise ApiError(f"{what} is required", code=Codes.INVALID_REQUEST, status=422,
                       errors=[{"field": field, "message": "This field is required."}])
    return value


@transaction.atomic
def exception_assign(*, exception_id, owner, actor) -> ExceptionRecord:
    exc = _locked_exception(exception_id, actor)
    if exc.status == ExceptionRecord.Status.RESOLVED:
        raise Conflict("the exception is resolved", code=Codes.INVALID_STATE)
    if not roles.has_role(owner, roles.FINANCE_OPS, roles.CONTROLLER, roles.ADMIN):
        raise ApiError(f"{owner.get_username()} cannot own exceptions", code=Codes.INVALID_REQUEST, status=422)
    if not may_see_exception(owner, exc):
        raise ApiError(f"{owner.get_username()} has no access to entity {exc.entity_code}",
                       code=Codes.INVALID_REQUEST, status=422,
                       errors=[{"field": "owner", "message": "This user may not see the exception's entity."}])
    before = _snapshot(exc)
    exc.owner = owner
    exc.status = ExceptionRecord.Status.ASSIGNED
    exc.updated_at = timezone.now()
    exc.save(update_fields=["owner", "status", "updated_at"])
    audit.record(actor=actor, action="exception.assigned", object_type="exception", object_id=exc.pk,
                 event_id=exc.event_id, before=before, after=_snapshot(exc))
    return exc


@transaction.atomic
def exception_resolve(*, exception_id, resolution: str, actor) -> ExceptionRecord:
    resolution = _required_text(resolution, "resolution", "a resolution (the reason)")
    exc = _locked_exception(exception_id, actor)
    if exc.status == ExceptionRecord.Status.RESOLVED:
        raise Conflict("the exception is already resolved", code=Codes.INVALID_STATE)
    _resolve(exc, resolution=resolution, actor=actor)
    if exc.event_id:
        from billing_sync.services import event_refresh_status

        event_refresh_status(event_id=exc.event_id, actor=actor)
    return exc


@transaction.atomic
def exception_retry(*, exception_id, actor) -> ExceptionRecord:
    """Reprocess the event (business rules) or re-send the failed journals (posting), after a fix."""
    from billing_sync import services as billing
    from ledger import services as ledger
    from ledger.models import Journal

    exc = _locked_exception(exception_id, actor)
    if exc.status == ExceptionRecord.Status.RESOLVED:
        raise Conflict("the exception is resolved", code=Codes.INVALID_STATE)
    before = _snapshot(exc)
    exc.retry_count += 1
    exc.updated_at = timezone.now()
    exc.save(update_fields=["retry_count", "updated_at"])
    audit.record(actor=actor, action="exception.retry", object_type="exception", object_id=exc.pk,
                 event_id=exc.event_id, before=before, after=_snapshot(exc))
    if exc.process == ExceptionRecord.Process.POSTING:
        failed = Journal.objects.filter(status=Journal.Status.FAILED)
        failed = failed.filter(event_id=exc.event_id) if exc.event_id else failed.filter(pk=exc.journal_id)
        for journal_id in failed.values_list("pk", flat=True):
            ledger.journal_retry(journal_id=journal_id, actor=actor)
    elif exc.process == ExceptionRecord.Process.CALLBACK:
        callbacks.callbacks_retry(exception_id=exc.pk, actor=actor)
    elif exc.event_id:
        billing.event_reprocess(event_id=exc.event_id, actor=actor)
    exc.refresh_from_db()
    return exc


@transaction.atomic
def exception_comment(*, exception_id, body: str, actor) -> ExceptionComment:
    """A note in the exception's thread (resolved ones too: people explain after the fact)."""
    body = _required_text(body, "body", "a comment")
    if not _is_person(actor):
        raise PermissionRefused("comments are written by people")
    exc = _locked_exception(exception_id, actor)
    comment = ExceptionComment.objects.create(exception=exc, author=actor, body=body)
    audit.record(actor=actor, action="exception.commented", object_type="exception", object_id=exc.pk,
                 event_id=exc.event_id, after={"comment": comment.pk, "body": body})
    return comment


@transaction.atomic
def exception_escalate(*, exception_id, reason: str, actor) -> ExceptionRecord:
    """Raise the exception a level (a controller's attention); the owner keeps working it.

    The reason also goes into the thread, so whoever picks it up reads why without opening the audit log.
    """
    reason = _required_text(reason, "reason", "a reason for the escalation")
    exc = _locked_exception(exception_id, actor)
    if exc.status == ExceptionRecord.Status.RESOLVED:
        raise Conflict("the exception is resolved", code=Codes.INVALID_STATE)
    before = {**_snapshot(exc), "escalation_level": exc.escalation_level}
    exc.escalation_level += 1
    exc.escalated_at = exc.updated_at = timezone.now()
    exc.escalated_by = audit.actor_label(actor)
    exc.save(update_fields=["escalation_level", "escalated_at", "escalated_by", "updated_at"])
    if _is_person(actor):
        ExceptionComment.objects.create(exception=exc, author=actor,
                                        body=f"Escalated to level {exc.escalation_level}: {reason}")
    audit.record(actor=actor, action="exception.escalated", object_type="exception", object_id=exc.pk,
                 event_id=exc.event_id, before=before,
                 after={**_snapshot(exc), "escalation_level": exc.escalation_level, "reason": reason})
    return exc


def replay_refusal(exc: ExceptionRecord) -> str | None:
    """Why the exception's event may not be replayed from the start, or None when it may."""
    from ledger.models import Journal

    if exc.status == ExceptionRecord.Status.RESOLVED:
        return "the exception is resolved"
    if not exc.event_id:
        return "the exception has no event to replay"
    if exc.process in (ExceptionRecord.Process.POSTING, ExceptionRecord.Process.CALLBACK) or (
            Journal.objects.filter(event_id=exc.event_id).exists()):
        # Processing succeeded and booked journals: starting over would book them twice.
        return "the event was already processed into journals; use retry to send them again"
    return None


@transaction.atomic
def exception_replay(*, exception_id, actor) -> ExceptionRecord:
    """Replay after a fix: process the event again from the start, from the payload stored at receipt.

    Retry repeats the step that failed (a posting, a callback, or processing); replay always starts over
    and is for business-rule failures whose cause was fixed elsewhere (an account mapping added, a
    period reopened). It is refused where starting over could book twice, and when the stored payload
    no longer hashes to the SHA-256 recorded at receipt (what we replay is what the source sent).
    """
    from billing_sync import services as billing
    from billing_sync.models import Event

    exc = _locked_exception(exception_id, actor)
    refusal = replay_refusal(exc)
    if refusal:
        raise Conflict(refusal, code=Codes.INVALID_STATE)
    event = Event.objects.select_for_update().get(pk=exc.event_id)
    if event.status != Event.Status.EXCEPTION:
        raise Conflict(f"the event is {event.status}, not waiting in the queue", code=Codes.INVALID_STATE)
    digest = hashlib.sha256(billing.canonical_bytes(event.payload)).hexdigest()
    if digest != event.payload_hash:
        raise Conflict("the stored payload no longer matches the SHA-256 recorded at receipt; not replayed",
                       code=Codes.INVALID_STATE)
    before = _snapshot(exc)
    exc.retry_count += 1
    exc.updated_at = timezone.now()
    exc.save(update_fields=["retry_count", "updated_at"])
    audit.record(actor=actor, action="exception.replayed", object_type="exception", object_id=exc.pk,
                 event_id=exc.event_id, before=before, after={**_snapshot(exc), "payload_sha256": digest})
    billing.event_reprocess(event_id=event.pk, actor=actor)
    exc.refresh_from_db()
    return exc


def _bulk(exception_ids, action) -> list[dict]:
    """Run `action(id)` per exception, each in its own transaction: one failure never blocks the others."""
    outcomes, seen = [], set()
    for raw in list(exception_ids)[:BULK_MAX]:
        try:
            exception_id = uuid.UUID(str(raw))
        except ValueError:
            outcomes.append({"id": str(raw), "ok": False, "code": Codes.INVALID_REQUEST, "detail": "not an id"})
            continue
        if exception_id in seen:
            continue
        seen.add(exception_id)
        try:
            exc = action(exception_id)
        except TieoutError as error:
            outcomes.append({"id": str(exception_id), "ok": False, "code": error.code, "detail": error.detail})
        else:
            # Read again once the item's transaction committed: a retried posting may have resolved it since.
            status = ExceptionRecord.objects.filter(pk=exc.pk).values_list("status", flat=True).first()
            outcomes.append({"id": str(exception_id), "ok": True, "status": status or exc.status})
    return outcomes


BULK_MAX = 200


def exceptions_assign_bulk(*, exception_ids, owner, actor) -> list[dict]:
    """Assign many exceptions to `owner`: per-id outcomes `{id, ok, status | code, detail}`."""
    return _bulk(exception_ids, lambda pk: exception_assign(exception_id=pk, owner=owner, actor=actor))


def exceptions_retry_bulk(*, exception_ids, actor) -> list[dict]:
    """Retry many exceptions: per-id outcomes `{id, ok, status | code, detail}`."""
    return _bulk(exception_ids, lambda pk: exception_retry(exception_id=pk, actor=actor))


# --------------------------------------------------------------------------------------------- approvals
POLICY_FIELDS = ["credit_note_threshold", "write_off_threshold", "manual_journal_threshold", "two_approver_threshold"]


def approval_policy_ensure(*, entity, actor) -> ApprovalPolicy:
    policy, created = ApprovalPolicy.objects.get_or_create(entity=entity)
    if created:
        audit.record(actor=actor, action="approval_policy.created", object_type="approval_policy",
                     object_id=entity.code, after=audit.model_snapshot(policy, POLICY_FIELDS))
    return policy


@transaction.atomic
def approval_policy_update(*, entity, values: dict, actor) -> ApprovalPolicy:
    """Change an entity's approval thresholds (versioned by simple-history, audited here)."""
    unknown = set(values) - set(POLICY_FIELDS)
    if unknown:
        raise ApiError(f"unknown policy fields: {', '.join(sorted(unknown))}", code=Codes.INVALID_REQUEST, status=422)
    policy, created = ApprovalPolicy.objects.select_for_update().get_or_create(entity=entity)
    before = None if created else audit.model_snapshot(policy, POLICY_FIELDS)
    for name, value in values.items():
        setattr(policy, name, value)
    policy.save()
    audit.record(actor=actor, action="approval_policy.created" if created else "approval_policy.changed",
                 object_type="approval_policy", object_id=entity.code, before=before,
                 after=audit.model_snapshot(policy, POLICY_FIELDS))
    return policy


def approvals_required(*, entity, kind: str, amount: Decimal) -> int:
    """0 when no approval is needed, else the number of distinct approvers (API.md's defaults)."""
    policy = ApprovalPolicy.objects.filter(entity=entity).first() or ApprovalPolicy(entity=entity)
    threshold = {"credit_note": policy.credit_note_threshold, "write_off": policy.write_off_threshold,
                 "manual_journal": policy.manual_journal_threshold}[kind]
    if amount < threshold:
        return 0
    return 2 if amount >= policy.two_approver_threshold else 1


def approval_request(*, entity, event, journal, kind, document_id, amount, currency, requested_by, required,
                     actor, reason: str | None = None) -> Approval:
    """Open a pending approval for `journal`. The requester's reason, when not given, is the event's own
    (credit notes and write-offs carry one), so the approver always reads why it was asked for."""
    if reason is None:
        reason = ((event.payload or {}).get("data") or {}).get("reason") or "" if event is not None else ""
    approval = Approval.objects.create(
        entity=entity, event=event, journal=journal, kind=kind, document_id=document_id, amount=amount,
        currency=currency, requested_by=requested_by,
        requested_by_label=requested_by.get_username() if requested_by else audit.actor_label(actor),
        required_approvals=required, reason=str(reason)[:2000])
    audit.record(actor=actor, action="approval.requested", object_type="approval", object_id=approval.pk,
                 event_id=event.pk if event else None,
                 after={"kind": kind, "amount": amount, "currency": currency, "required": required,
                        "requested_by": approval.requested_by_label, "journal": journal.pk,
                        "reason": approval.reason})
    return approval


def _decide(approval_id, *, user, decision: str, comment: str) -> Approval:
    if not roles.has_role(user, roles.CONTROLLER, roles.ADMIN):
        raise PermissionRefused("only controllers and admins decide approvals")
    approval = (Approval.objects.select_for_update(of=("self", "journal")).select_related("journal", "entity")
                .filter(pk=approval_id).first())
    if approval is None or not roles.may_see_entity(user, approval.entity.code):
        raise NotFound(f"no approval {approval_id}")  # outside the user's entities it does not exist for them
    if approval.status != Approval.Status.PENDING:
        raise Conflict(f"the approval is already {approval.status}", code=Codes.ALREADY_DECIDED)
    if approval.requested_by_id == user.pk:
        raise PermissionRefused("you raised this request; someone else must decide it",
                                code=Codes.SEGREGATION_OF_DUTIES)
    if approval.decisions.filter(user=user).exists():
        raise PermissionRefused("you have already decided this request", code=Codes.SEGREGATION_OF_DUTIES)
    try:
        with transaction.atomic():
            ApprovalDecision.objects.create(approval=approval, user=user, decision=decision, comment=comment or "")
    except IntegrityError:  # a concurrent second click by the same user
        raise PermissionRefused("you have already decided this request", code=Codes.SEGREGATION_OF_DUTIES) from None
    audit.record(actor=user, action=f"approval.{decision}", object_type="approval", object_id=approval.pk,
                 event_id=approval.event_id, after={"decision": decision, "comment": comment or ""})
    return approval


def _close(approval: Approval, status: str, actor) -> None:
    approval.status = status
    approval.decided_at = timezone.now()
    approval.save(update_fields=["status", "decided_at"])
    audit.record(actor=actor, action=f"approval.{status}", object_type="approval", object_id=approval.pk,
                 event_id=approval.event_id, before={"status": "pending"}, after={"status": status})


@transaction.atomic
def approval_approve(*, approval_id, user, comment: str = "") -> Approval:
    from billing_sync import documents
    from ledger import services as ledger

    approval = _decide(approval_id, user=user, decision=ApprovalDecision.Decision.APPROVE, comment=comment)
    approvals = approval.decisions.filter(decision=ApprovalDecision.Decision.APPROVE).count()
    if approvals >= approval.required_approvals:
        _close(approval, Approval.Status.APPROVED, user)
        try:
            if approval.kind == Approval.Kind.MANUAL_JOURNAL:
                ledger.journal_release(journal_id=approval.journal_id, actor=user)
            else:
                documents.document_approved(kind=approval.kind, journal=approval.journal, actor=user)
        except BusinessRuleError as exc:
            # The world moved on since the request (a payment arrived, the period closed): refuse, change nothing.
            raise Conflict(exc.detail, code=exc.code) from None
    return approval


@transaction.atomic
def approval_reject(*, approval_id, user, comment: str = "") -> Approval:
    from billing_sync import documents
    from ledger import services as ledger

    approval = _decide(approval_id, user=user, decision=ApprovalDecision.Decision.REJECT, comment=comment)
    _close(approval, Approval.Status.REJECTED, user)
    if approval.kind == Approval.Kind.MANUAL_JOURNAL:
        ledger.journal_reject(journal_id=approval.journal_id, actor=user)
    else:
        documents.document_rejected(kind=approval.kind, journal=approval.journal, actor=user)
    return approval


def user_by_username(username: str):
    return get_user_model().objects.filter(username=username).first()


@transaction.atomic
def exception_open_system(*, code: str, message: str, actor) -> ExceptionRecord:
    """An alarm about Tieout itself (no event, no journal), e.g. audit_chain_broken: one open at a time.

    Raised again while one with the same code is unresolved, it leaves that one (and its owner) alone.
    """
    exc = ExceptionRecord.objects.select_for_update().filter(
        code=code, event__isnull=True, journal__isnull=True).exclude(status=ExceptionRecord.Status.RESOLVED).first()
    if exc is not None:
        return exc
    exc = ExceptionRecord.objects.create(code=code, message=message, process=ExceptionRecord.Process.SYSTEM)
    audit.record(actor=actor, action="exception.opened", object_type="exception", object_id=exc.pk,
                 after=_snapshot(exc))
    return exc
