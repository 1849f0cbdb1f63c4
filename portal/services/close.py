"""The period close that checks before it locks. A controller closes a month when its close checks
(`portal.selectors.close`) all pass; with failing checks, closing needs a reason and a second controller's
approval (an approval of kind `period_close` about the subject `period:<entity>:<YYYY-MM>`), and reopening
always does (`period_reopen`); the requester never decides (segregation of duties, as for every approval).
Approving carries the request out (`period_close_approved`, `period_reopen_approved`, registered as the kinds'
handlers by `portal.handlers`), rejecting changes nothing. The ledger records the close with the checks'
results at that moment (`ledger.services.period_close_record`); every step is audited in its transaction, and
refusals carry stable codes (`close_checks_failing`, `period_already_closed`, `period_not_closed`,
`approval_pending`)."""
from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction
from django.db.models import Max

from audit import services as audit
from audit.models import AuditCheck, PartitionArchive
from config import roles
from config.errors import ApiError, Codes, Conflict, NotFound, PermissionRefused
from exceptions_queue import services as queue
from exceptions_queue.models import Approval
from ledger import services as ledger
from ledger.models import Entity, Journal, Period
from portal.selectors import close as close_selectors

log = logging.getLogger(__name__)
MAX_REASON = 2000


@dataclass
class CloseOutcome:
    """What a close request did: `closed` (the period is closed) or `approval_requested` (it waits for a
    second controller); `checks` are the checks it was decided on."""

    status: str
    period: Period | None = None
    approval: Approval | None = None
    checks: list[dict] = field(default_factory=list)


def _is_user(actor) -> bool:
    return getattr(actor, "is_authenticated", False) and getattr(actor, "pk", None) is not None


def _require_controller(actor, entity: Entity) -> None:
    """People must be controllers (or admins) of the entity; system actors (the CLI) are trusted callers."""
    if not _is_user(actor):
        return
    if not roles.has_role(actor, *roles.DECIDERS):
        raise PermissionRefused("only controllers and admins close and reopen periods")
    if not roles.may_see_entity(actor, entity.code):
        raise NotFound(f"no entity {entity.code}")


def _reason(reason) -> str:
    text = str(reason or "").strip()
    if len(text) > MAX_REASON:
        raise ApiError(f"the reason may be at most {MAX_REASON} characters", code=Codes.INVALID_REQUEST, status=422,
                       errors=[{"field": "reason", "message": f"At most {MAX_REASON} characters."}])
    return text


def _request(*, entity: Entity, year: int, month: int, kind: str, user, reason: str) -> Approval:
    """A journal-less approval about the period, needing one other controller."""
    return queue.approval_request(
        entity=entity, event=None, journal=None, kind=kind, document_id=f"{entity.code} {year}-{month:02d}",
        amount=Decimal("0"), currency=entity.currency, requested_by=user, required=1, actor=user, reason=reason,
        subject=close_selectors.subject_of(entity.code, year, month))


def _pending(entity: Entity, year: int, month: int, kind: str) -> Approval | None:
    return Approval.objects.filter(status=Approval.Status.PENDING, kind=kind,
                                   subject=close_selectors.subject_of(entity.code, year, month)).first()


def audit_verify_for_close(*, entity: Entity, year: int, month: int) -> AuditCheck | None:
    """Verify the audit chain now when the last verification predates the month's last posting (or never
    ran): the incremental check from the last good one, as the scheduled task runs it, with its alarm when it
    fails. Nothing when the last verification is recent enough. Commits on its own, so that a refused close
    keeps the verification and its alarm."""
    first, last = close_selectors.month_bounds(year, month)
    posted = Journal.objects.filter(entity=entity, status=Journal.Status.POSTED, accounting_date__gte=first,
                                    accounting_date__lte=last).aggregate(at=Max("posted_at"))["at"]
    latest = AuditCheck.objects.order_by("-at", "-id").first()
    if latest is not None and latest.ok and (posted is None or latest.at >= posted):
        return None
    if latest is not None and not latest.ok:
        return None  # a failed verification stands until the chain is repaired; the alarm is open
    check = audit.chain_check()
    queue.exception_open_for_audit_check(check=check, actor="system")
    return check


def period_close(*, entity: Entity, year: int, month: int, actor, reason: str = "") -> CloseOutcome:
    """Close the month if every check passes; else, with a `reason`, ask a second controller to approve
    closing anyway (202-style outcome `approval_requested`); without one, refuse (`close_checks_failing`, 422,
    listing the failing checks).

    Refused too: a closed period (`period_already_closed`, 409) and a close request already waiting
    (`approval_pending`, 409: decide it first). An out-of-date audit verification is redone first
    (`audit_verify_for_close`, its own transaction); the decision itself is one transaction under the
    period's row lock.
    """
    _require_controller(actor, entity)
    reason = _reason(reason)
    audit_verify_for_close(entity=entity, year=year, month=month)
    return _period_close(entity=entity, year=year, month=month, actor=actor, reason=reason)


@transaction.atomic
def _period_close(*, entity: Entity, year: int, month: int, actor, reason: str) -> CloseOutcome:
    period = ledger.period_locked(entity=entity, year=year, month=month)
    if period.status == Period.Status.CLOSED:
        raise Conflict(f"period {year}-{month:02d} of {entity.code} is already closed (by {period.closed_by})",
                       code=Codes.PERIOD_ALREADY_CLOSED)
    waiting = _pending(entity, year, month, Approval.Kind.PERIOD_CLOSE)
    if waiting is not None:
        raise Conflict(f"a request to close {year}-{month:02d} by {waiting.requested_by_label} waits for a second "
                       "controller: approve or reject it first", code=Codes.APPROVAL_PENDING)
    result = close_selectors.checks(entity, year, month)
    if close_selectors.all_ok(result):
        closed = ledger.period_close_record(entity=entity, year=year, month=month, actor=actor,
                                            checks=close_selectors.stored(result), reason=reason)
        return CloseOutcome("closed", period=closed, checks=result)
    failing = [c for c in result if not c["ok"]]
    if not reason:
        raise ApiError(f"{len(failing)} close check{'s' if len(failing) != 1 else ''} fail: give a reason to ask "
                       "a second controller to approve closing anyway", code=Codes.CLOSE_CHECKS_FAILING, status=422,
                       errors=[{"field": c["check"], "message": c["detail"]} for c in failing])
    if not _is_user(actor):
        raise PermissionRefused("closing with failing checks is asked for by a person (a controller), not a script")
    approval = _request(entity=entity, year=year, month=month, kind=Approval.Kind.PERIOD_CLOSE, user=actor,
                        reason=reason)
    audit.record(actor=actor, action="period.close_requested", object_type="period",
                 object_id=f"{entity.code}:{year}-{month:02d}",
                 after={"approval": approval.pk, "reason": reason, "failing_checks": [c["check"] for c in failing],
                        "checks": close_selectors.stored(result)})
    return CloseOutcome("approval_requested", period=period, approval=approval, checks=result)


@transaction.atomic
def period_reopen_request(*, entity: Entity, year: int, month: int, user, reason: str) -> Approval:
    """Ask a second controller to reopen a closed month (always: a closed month's figures were reported).

    A reason is required (`invalid_request`, 422); an open period is refused (`period_not_closed`, 409), and
    so is a second request while one waits (`approval_pending`, 409), and a month retention archived
    (`retention_archived`, 409): its events and receipts left the database, so it cannot be open again.
    """
    _require_controller(user, entity)
    if not _is_user(user):
        raise PermissionRefused("reopening is asked for by a person (a controller)")
    reason = _reason(reason)
    if not reason:
        raise ApiError("say why the period must be reopened", code=Codes.INVALID_REQUEST, status=422,
                       errors=[{"field": "reason", "message": "This field is required."}])
    period = ledger.period_locked(entity=entity, year=year, month=month)
    if period.status != Period.Status.CLOSED:
        raise Conflict(f"period {year}-{month:02d} of {entity.code} is not closed", code=Codes.PERIOD_NOT_CLOSED)
    if PartitionArchive.objects.filter(month=datetime.date(year, month, 1)).exists():
        raise Conflict(f"{year}-{month:02d} was archived by retention: it cannot be reopened",
                       code=Codes.RETENTION_ARCHIVED)
    approval = _request(entity=entity, year=year, month=month, kind=Approval.Kind.PERIOD_REOPEN, user=user,
                        reason=reason)
    audit.record(actor=user, action="period.reopen_requested", object_type="period",
                 object_id=f"{entity.code}:{year}-{month:02d}", after={"approval": approval.pk, "reason": reason})
    return approval


def _period_of(approval: Approval) -> tuple[Entity, int, int]:
    _, code, label = approval.subject.split(":")
    year, month = close_selectors.parse_month(label)
    if code != approval.entity.code:
        raise ValueError(f"approval {approval.pk} names {code} but belongs to {approval.entity.code}")
    return approval.entity, year, month


def period_close_approved(*, approval: Approval, actor) -> Period:
    """The `period_close` approval's handler: close the month as approved, recording the checks as they are
    now (at approval), the requester's reason, the requester as closer and `actor` as the approver. Runs in the
    approval's transaction; a period closed meanwhile refuses the approval (`period_already_closed`)."""
    entity, year, month = _period_of(approval)
    result = close_selectors.checks(entity, year, month)
    return ledger.period_close_record(entity=entity, year=year, month=month, actor=actor,
                                      checks=close_selectors.stored(result), closed_by=approval.requested_by_label,
                                      reason=approval.reason, approved_by=audit.actor_label(actor))


def period_reopen_approved(*, approval: Approval, actor) -> Period:
    """The `period_reopen` approval's handler: reopen the month as approved (in the approval's transaction)."""
    entity, year, month = _period_of(approval)
    return ledger.period_reopen_record(entity=entity, year=year, month=month, actor=actor, reason=approval.reason,
                                       requested_by=approval.requested_by_label, approved_by=audit.actor_label(actor))
