"""Exception and approval write paths: open, assign, retry, resolve; request, approve, reject.

Exceptions record failures a person can fix, with a stable code, linked to their event or journal.
Approvals implement maker-checker: the requester never decides, no one decides twice, and the number of
distinct approvers comes from the entity's policy. Every change is audited in its own transaction.
"""
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit import services as audit
from billing_sync import callbacks
from config import roles
from config.errors import ApiError, BusinessRuleError, Codes, Conflict, NotFound, PermissionRefused
from exceptions_queue.models import Approval, ApprovalDecision, ApprovalPolicy, ExceptionRecord

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
            entity_code=event.entity_code, event=event, dependency_key=dependency, amount=_amount_of(event))
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
            event_id=journal.event_id, journal=journal)
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
    return list(ExceptionRecord.objects.filter(dependency_key__in=keys, event__isnull=False).exclude(
        status=ExceptionRecord.Status.RESOLVED).values_list("event_id", flat=True))


def _locked_exception(exception_id) -> ExceptionRecord:
    exc = ExceptionRecord.objects.select_for_update().filter(pk=exception_id).first()
    if exc is None:
        raise NotFound(f"no exception {exception_id}")
    return exc


@transaction.atomic
def exception_assign(*, exception_id, owner, actor) -> ExceptionRecord:
    exc = _locked_exception(exception_id)
    if exc.status == ExceptionRecord.Status.RESOLVED:
        raise Conflict("the exception is resolved", code=Codes.INVALID_STATE)
    if not roles.has_role(owner, roles.FINANCE_OPS, roles.CONTROLLER, roles.ADMIN):
        raise ApiError(f"{owner.get_username()} cannot own exceptions", code=Codes.INVALID_REQUEST, status=422)
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
    resolution = (resolution or "").strip()
    if not resolution:
        raise ApiError("a resolution (the reason) is required", code=Codes.INVALID_REQUEST, status=422,
                       errors=[{"field": "resolution", "message": "This field is required."}])
    exc = _locked_exception(exception_id)
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

    exc = _locked_exception(exception_id)
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
    exc = ExceptionRecord.objects.create(code=code, message=message, process="system")
    audit.record(actor=actor, action="exception.opened", object_type="exception", object_id=exc.pk,
                 after=_snapshot(exc))
    return exc
