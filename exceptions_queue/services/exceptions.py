"""Exceptions: failures a person can fix, with a stable code, linked to their event or journal; open (one
unresolved per event), assign, comment, escalate, retry, replay and resolve, one by one or in bulk. What a
retry or a replay does is the subject kind's handler (`exceptions_queue.workflow`).
"""
import uuid
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from audit import services as audit
from config import roles
from config.errors import ApiError, Codes, Conflict, NotFound, PermissionRefused, TieoutError
from exceptions_queue import workflow
from exceptions_queue.models import ExceptionComment, ExceptionRecord
from ledger.models import Journal


def _snapshot(exc: ExceptionRecord) -> dict:
    return {"code": exc.code, "status": exc.status, "message": exc.message,
            "owner": exc.owner.get_username() if exc.owner_id else None, "retry_count": exc.retry_count}


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


def dependencies_awaited(keys) -> set[str]:
    """Which of these documents (dependency keys) some event's open exception waits for."""
    return set(ExceptionRecord.objects.filter(dependency_key__in=list(keys), event__isnull=False).exclude(
        status=ExceptionRecord.Status.RESOLVED).values_list("dependency_key", flat=True).distinct())


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


def exception_replay_refusal(exc: ExceptionRecord) -> str | None:
    """Why the exception's subject may not be replayed from the start, or None when it may."""
    if exc.status == ExceptionRecord.Status.RESOLVED:
        return "the exception is resolved"
    if not exc.event_id:
        return "the exception has no event to replay"
    handlers = workflow.exception_handlers(exc.process)
    refusal = handlers.exception_replay_refusal(exception=exc) if handlers.exception_replay_refusal else None
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
    refusal = exception_replay_refusal(exc)
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


def exception_open_for_audit_check(*, check, actor) -> ExceptionRecord | None:
    """Open `audit_chain_broken` for a failed audit check (an `AuditCheck` row); nothing for a good one.

    One alarm open at a time (`exception_open_system`). The check's row is committed before the alarm
    opens; should the worker die in between, the late ack redelivers the task and the re-run (incremental
    from the last good check, or full) finds the same break.
    """
    if check.ok:
        return None
    return exception_open_system(code=Codes.AUDIT_CHAIN_BROKEN, message=f"Audit chain broken: {check.problem}",
                                 actor=actor)


# --------------------------------------------------------------------------------------------- reconciliation
# A reconciliation break (billing_sync's reconciliation) opens one exception of process `reconciliation`, its
# code the break's code. The queue knows nothing of breaks: the caller passes plain values and keeps the link
# (the break's `exception`). Not linked to an event or a journal: a journal may have several breaks at once,
# and its posting exception stays its own.
@transaction.atomic
def exception_open_for_reconciliation(*, entity_code: str, code: str, message: str, amount: Decimal | None,
                                      source_ref: str, actor) -> ExceptionRecord:
    """Open the exception of one reconciliation break (unassigned, aged against the code's SLA like any other)."""
    workflow.exception_handlers(ExceptionRecord.Process.RECONCILIATION)  # refused before it exists if unwired
    exc = ExceptionRecord.objects.create(code=code, message=message, process=ExceptionRecord.Process.RECONCILIATION,
                                         entity_code=entity_code, amount=amount, source_ref=source_ref[:200])
    audit.record(actor=actor, action="exception.opened", object_type="exception", object_id=exc.pk,
                 after={**_snapshot(exc), "process": exc.process, "source_ref": exc.source_ref})
    return exc


@transaction.atomic
def exception_update_for_reconciliation(*, exception_id, message: str, amount: Decimal | None,
                                        actor) -> ExceptionRecord | None:
    """A later run found the break again with other figures: the open exception says so (None when resolved)."""
    exc = ExceptionRecord.objects.select_for_update().filter(pk=exception_id).exclude(
        status=ExceptionRecord.Status.RESOLVED).first()
    if exc is None or (exc.message == message and exc.amount == amount):
        return exc
    before = _snapshot(exc)
    exc.message, exc.amount, exc.updated_at = message, amount, timezone.now()
    exc.save(update_fields=["message", "amount", "updated_at"])
    audit.record(actor=actor, action="exception.updated", object_type="exception", object_id=exc.pk,
                 before=before, after=_snapshot(exc))
    return exc


@transaction.atomic
def exception_resolve_for_reconciliation(*, exception_id, resolution: str, actor) -> bool:
    """Resolve a break's exception (a run found the object matched, or a controller accepted the difference);
    False when it was resolved already (e.g. by a person in the queue)."""
    exc = ExceptionRecord.objects.select_for_update().filter(pk=exception_id).exclude(
        status=ExceptionRecord.Status.RESOLVED).first()
    if exc is None:
        return False
    _resolve(exc, resolution=resolution, actor=actor)
    return True
