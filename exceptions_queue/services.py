"""Exception and approval write paths: open, assign, retry, replay, comment, escalate, resolve (one by one
or in bulk); request, approve, reject.

Exceptions record failures a person can fix, with a stable code, linked to their event or journal.
Approvals implement maker-checker: the requester never decides, no one decides twice, and the number of
distinct approvers comes from the entity's policy. What approving, retrying or replaying does to the
subject is the subject's owner's business: the handlers it registered in `exceptions_queue.workflow`.
Every change is audited in its own transaction.
"""
import uuid
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from audit import services as audit
from config import roles
from config.errors import ApiError, BusinessRuleError, Codes, Conflict, NotFound, PermissionRefused, TieoutError
from exceptions_queue import workflow
from exceptions_queue.models import Approval, ApprovalDecision, ApprovalPolicy, ExceptionComment, ExceptionRecord
from ledger import services as ledger
from ledger.models import Journal

def _snapshot(exc: ExceptionRecord) -> dict:
    return {"code": exc.code, "status": exc.status, "message": exc.message,
            "owner": exc.owner.get_username() if exc.owner_id else None, "retry_count": exc.retry_count}


# --------------------------------------------------------------------------------------------- exceptions
def exception_open_for_event(*, event, process: str, code: str, message: str, dependency: str | None,
                             amount: Decimal | None, source_ref: str, actor) -> ExceptionRecord:
    """Open (or update) the event's one unresolved exception. Caller holds the event's lock.

    The caller, who knows the event, says what it is about: its kind (`process`), the amount at stake
    and the source document's id (`source_ref`, for search).
    """
    workflow.exception_handlers(process)  # an exception nobody could retry is refused before it exists
    exc = ExceptionRecord.objects.select_for_update().filter(event=event).exclude(
        status=ExceptionRecord.Status.RESOLVED).first()
    if exc is None:
        exc = ExceptionRecord.objects.create(
            code=code, message=message, process=process, entity_code=event.entity_code, event=event,
            dependency_key=dependency, amount=amount, source_ref=source_ref[:200])
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
    """A journal could not post: one unresolved exception per event (or per journal without an event).

    The event's owner hears of it through `workflow.event_exceptions_changed` (its status follows).
    """
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
        workflow.event_exceptions_changed.send(event_id=journal.event_id, actor=actor)
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
    workflow.exception_resolved.send(exception=exc, actor=actor)


def exceptions_resolve_for_event(*, event, resolution: str, actor) -> int:
    open_ = list(ExceptionRecord.objects.select_for_update().filter(event=event).exclude(
        status=ExceptionRecord.Status.RESOLVED))
    for exc in open_:
        _resolve(exc, resolution=resolution, actor=actor)
    return len(open_)


def exceptions_resolve_for_journal(*, journal, resolution: str, actor) -> int:
    """A journal posted: close the posting exception that waited for it (when no other journal still fails)."""
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
        if not roles.has_role(actor, *roles.WORKERS):
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
    if not roles.has_role(owner, *roles.WORKERS):
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
        workflow.event_exceptions_changed.send(event_id=exc.event_id, actor=actor)
    return exc


@transaction.atomic
def exception_retry(*, exception_id, actor) -> ExceptionRecord:
    """Repeat the step that failed, after a fix: the kind's `retry` handler (reprocess the event, re-send
    the failed journals, deliver the callbacks again)."""
    exc = _locked_exception(exception_id, actor)
    if exc.status == ExceptionRecord.Status.RESOLVED:
        raise Conflict("the exception is resolved", code=Codes.INVALID_STATE)
    before = _snapshot(exc)
    exc.retry_count += 1
    exc.updated_at = timezone.now()
    exc.save(update_fields=["retry_count", "updated_at"])
    audit.record(actor=actor, action="exception.retry", object_type="exception", object_id=exc.pk,
                 event_id=exc.event_id, before=before, after=_snapshot(exc))
    workflow.exception_handlers(exc.process).retry(exception=exc, actor=actor)
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
    """Why the exception's subject may not be replayed from the start, or None when it may."""
    if exc.status == ExceptionRecord.Status.RESOLVED:
        return "the exception is resolved"
    if not exc.event_id:
        return "the exception has no event to replay"
    handlers = workflow.exception_handlers(exc.process)
    refusal = handlers.replay_refusal(exception=exc) if handlers.replay_refusal else None
    if refusal is None and handlers.replay is None:
        return f"{exc.process} exceptions are not replayed; use retry"
    return refusal


@transaction.atomic
def exception_replay(*, exception_id, actor) -> ExceptionRecord:
    """Replay after a fix: start the subject over from what the source sent (the kind's `replay` handler).

    Retry repeats the step that failed (a posting, a callback, or processing); replay always starts over
    and is for business-rule failures whose cause was fixed elsewhere (an account mapping added, a
    period reopened). It is refused where starting over could book twice, and when the kind's
    `replay_check` finds the stored input no longer what the source sent.
    """
    exc = _locked_exception(exception_id, actor)
    refusal = replay_refusal(exc)
    if refusal:
        raise Conflict(refusal, code=Codes.INVALID_STATE)
    handlers = workflow.exception_handlers(exc.process)
    detail = handlers.replay_check(exception=exc) if handlers.replay_check else {}
    before = _snapshot(exc)
    exc.retry_count += 1
    exc.updated_at = timezone.now()
    exc.save(update_fields=["retry_count", "updated_at"])
    audit.record(actor=actor, action="exception.replayed", object_type="exception", object_id=exc.pk,
                 event_id=exc.event_id, before=before, after={**_snapshot(exc), **detail})
    handlers.replay(exception=exc, actor=actor)
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
    """0 when no approval is needed, else the number of distinct approvers (API.md's defaults).

    The policy holds one threshold per kind (`<kind>_threshold`); a kind without handlers or without a
    threshold is a wiring error and fails loudly.
    """
    workflow.approval_handlers(kind)
    policy = ApprovalPolicy.objects.filter(entity=entity).first() or ApprovalPolicy(entity=entity)
    threshold = getattr(policy, f"{kind}_threshold", None)
    if threshold is None:
        raise workflow.UnknownKind(f"the approval policy has no threshold for kind {kind!r}")
    if amount < threshold:
        return 0
    return 2 if amount >= policy.two_approver_threshold else 1


def approval_request(*, entity, event, journal, kind, document_id, amount, currency, requested_by, required,
                     actor, reason: str) -> Approval:
    """Open a pending approval for `journal`, with the requester's reason (the approver reads why)."""
    workflow.approval_handlers(kind)  # a kind nobody could approve is refused before it waits for anyone
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
    if not roles.has_role(user, *roles.DECIDERS):
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
    """One approver's yes; with the last one required, the kind's `approve` handler books the subject."""
    approval = _decide(approval_id, user=user, decision=ApprovalDecision.Decision.APPROVE, comment=comment)
    approvals = approval.decisions.filter(decision=ApprovalDecision.Decision.APPROVE).count()
    if approvals >= approval.required_approvals:
        _close(approval, Approval.Status.APPROVED, user)
        try:
            workflow.approval_handlers(approval.kind).approve(approval=approval, actor=user)
        except BusinessRuleError as exc:
            # The world moved on since the request (a payment arrived, the period closed): refuse, change nothing.
            raise Conflict(exc.detail, code=exc.code) from None
    return approval


@transaction.atomic
def approval_reject(*, approval_id, user, comment: str = "") -> Approval:
    """One no closes the request; the kind's `reject` handler refuses the subject for good."""
    approval = _decide(approval_id, user=user, decision=ApprovalDecision.Decision.REJECT, comment=comment)
    _close(approval, Approval.Status.REJECTED, user)
    workflow.approval_handlers(approval.kind).reject(approval=approval, actor=user)
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


# --------------------------------------------------------------------------------------------- manual journals
@transaction.atomic
def manual_journal_create(*, entity, accounting_date, lines, description: str, user, reason: str | None = None,
                          request_key: str | None = None) -> Journal:
    """A journal a person writes by hand, under the entity's approval policy.

    The ledger checks it (`manual_journal_check`: balanced, open period, active accounts, each problem
    with its field named) and books it; with the policy's `manual_journal_threshold` (default 0: every
    one) reached, it waits for approval by someone other than `user`, with `reason` (default: the
    description) for the approver. The same `request_key` from the same person returns the journal it
    first created, without a second approval request.
    """
    draft = ledger.manual_journal_check(entity=entity, accounting_date=accounting_date, lines=lines,
                                        description=description, user=user)
    required = approvals_required(entity=entity, kind=Approval.Kind.MANUAL_JOURNAL, amount=draft.total)
    journal, created = ledger.manual_journal_book(draft=draft, user=user, needs_approval=bool(required),
                                                  request_key=request_key)
    if created and required:
        approval_request(entity=entity, event=None, journal=journal, kind=Approval.Kind.MANUAL_JOURNAL,
                         document_id=journal.document_id, amount=draft.total, currency=entity.currency,
                         requested_by=user, required=required, actor=user,
                         reason=reason if reason is not None else draft.description)
    return journal
