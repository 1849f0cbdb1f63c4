"""Accounting periods: open or closed per entity and month; a closed period refuses new journals. The ledger
records a close (who, when, the close checks' results at that moment, and for an override the reason and
the approver) and a reopen; deciding whether a month may close (its checks, maker-checker) is the portal's
close service, which sees every layer."""
import datetime

from django.db import transaction
from django.utils import timezone

from audit import services as audit
from config.errors import BusinessRuleError, Codes, Conflict
from config.memo import memoized
from ledger.models import Entity, Period

CLOSE_FIELDS = ["status", "closed_at", "closed_by", "close_checks", "close_reason", "close_approved_by",
                "reopened_at", "reopened_by"]


def period_is_closed(entity: Entity, day: datetime.date) -> bool:
    return Period.objects.filter(entity=entity, year=day.year, month=day.month, status=Period.Status.CLOSED).exists()


def period_require_open(entity: Entity, day: datetime.date) -> None:
    if memoized(("period_closed", entity.pk, day.year, day.month), lambda: period_is_closed(entity, day)):
        raise BusinessRuleError(Codes.PERIOD_CLOSED,
                                f"period {day:%Y-%m} of {entity.code} is closed; nothing is posted into it")


def period_locked(*, entity: Entity, year: int, month: int) -> Period:
    """The period's row (created open when the month has none), locked for the rest of the transaction."""
    period, _ = Period.objects.get_or_create(entity=entity, year=year, month=month)
    return Period.objects.select_for_update().get(pk=period.pk)


def _label(entity: Entity, year: int, month: int) -> str:
    return f"{entity.code}:{year}-{month:02d}"


@transaction.atomic
def period_set_status(*, entity: Entity, year: int, month: int, status: str, actor) -> Period:
    """Close or reopen without the close checks or an approval: the demo loader and the ledger's own tests.

    People close through the portal's close service (`portal.services.period_close`), which runs the checks
    and asks a second controller when they fail; no API, page or command reaches this directly.
    """
    period = period_locked(entity=entity, year=year, month=month)
    before = period.status
    if before == status:
        return period
    closing = status == Period.Status.CLOSED
    period.status = status
    period.closed_at = timezone.now() if closing else None
    period.closed_by = audit.actor_label(actor) if closing else ""
    if not closing:
        period.reopened_at, period.reopened_by = timezone.now(), audit.actor_label(actor)
    period.save(update_fields=["status", "closed_at", "closed_by", "reopened_at", "reopened_by"])
    audit.record(actor=actor, action=f"period.{'closed' if closing else 'reopened'}",
                 object_type="period", object_id=_label(entity, year, month),
                 before={"status": before}, after={"status": status})
    return period


@transaction.atomic
def period_close_record(*, entity: Entity, year: int, month: int, actor, checks: list[dict], closed_by: str = "",
                        reason: str = "", approved_by: str = "") -> Period:
    """Close the month, keeping the close checks' results at this moment (`checks`: [{check, ok, count, detail,
    ...}]). A close with failing checks is an override: `reason` says why, `closed_by` is the controller who
    asked and `approved_by` the second controller who approved (whose decision this call carries out).

    A period already closed is refused (`period_already_closed`, 409), so a close is recorded once.
    """
    period = period_locked(entity=entity, year=year, month=month)
    if period.status == Period.Status.CLOSED:
        raise Conflict(f"period {year}-{month:02d} of {entity.code} is already closed (by {period.closed_by})",
                       code=Codes.PERIOD_ALREADY_CLOSED)
    before = audit.model_snapshot(period, CLOSE_FIELDS)
    period.status = Period.Status.CLOSED
    period.closed_at = timezone.now()
    period.closed_by = closed_by or audit.actor_label(actor)
    period.close_checks = list(checks)
    period.close_reason = reason
    period.close_approved_by = approved_by
    period.save(update_fields=["status", "closed_at", "closed_by", "close_checks", "close_reason",
                               "close_approved_by"])
    failing = [c["check"] for c in checks if not c.get("ok")]
    audit.record(actor=actor, action="period.closed", object_type="period", object_id=_label(entity, year, month),
                 before=before,
                 after={"status": period.status, "closed_by": period.closed_by, "override": bool(failing),
                        "failing_checks": failing, "reason": reason, "approved_by": approved_by,
                        "checks": [{"check": c["check"], "ok": c.get("ok"), "count": c.get("count")}
                                   for c in checks]})
    return period


@transaction.atomic
def period_reopen_record(*, entity: Entity, year: int, month: int, actor, reason: str, requested_by: str,
                         approved_by: str) -> Period:
    """Reopen a closed month: the second controller approved (`approved_by`) what `requested_by` asked.

    The last close's record stays in the period's history and the audit log; the row says who reopened it
    and when. An open period is refused (`period_not_closed`, 409).
    """
    period = period_locked(entity=entity, year=year, month=month)
    if period.status != Period.Status.CLOSED:
        raise Conflict(f"period {year}-{month:02d} of {entity.code} is not closed", code=Codes.PERIOD_NOT_CLOSED)
    before = audit.model_snapshot(period, CLOSE_FIELDS)
    period.status = Period.Status.OPEN
    period.closed_at, period.closed_by = None, ""
    period.close_checks, period.close_reason, period.close_approved_by = [], "", ""
    period.reopened_at, period.reopened_by = timezone.now(), requested_by
    period.save(update_fields=CLOSE_FIELDS)
    audit.record(actor=actor, action="period.reopened", object_type="period", object_id=_label(entity, year, month),
                 before=before, after={"status": period.status, "reopened_by": requested_by,
                                       "approved_by": approved_by, "reason": reason})
    return period
