"""Accounting periods: open or closed per entity and month; a closed period refuses new journals."""
import datetime

from django.db import transaction
from django.utils import timezone

from audit import services as audit
from config.errors import BusinessRuleError, Codes
from ledger.models import Entity, Period


def period_is_closed(entity: Entity, day: datetime.date) -> bool:
    return Period.objects.filter(entity=entity, year=day.year, month=day.month, status=Period.Status.CLOSED).exists()


def period_require_open(entity: Entity, day: datetime.date) -> None:
    if period_is_closed(entity, day):
        raise BusinessRuleError(Codes.PERIOD_CLOSED,
                                f"period {day:%Y-%m} of {entity.code} is closed; nothing is posted into it")


@transaction.atomic
def period_set_status(*, entity: Entity, year: int, month: int, status: str, actor) -> Period:
    period, _ = Period.objects.get_or_create(entity=entity, year=year, month=month)
    period = Period.objects.select_for_update().get(pk=period.pk)
    before = period.status
    if before == status:
        return period
    period.status = status
    period.closed_at = timezone.now() if status == Period.Status.CLOSED else None
    period.closed_by = audit.actor_label(actor) if status == Period.Status.CLOSED else ""
    period.save(update_fields=["status", "closed_at", "closed_by"])
    audit.record(actor=actor, action=f"period.{'closed' if status == Period.Status.CLOSED else 'reopened'}",
                 object_type="period", object_id=f"{entity.code}:{year}-{month:02d}",
                 before={"status": before}, after={"status": status})
    return period
