"""Exception-queue reads: filtered lists of exceptions and approvals, and an event's latest exception."""
import django_filters

from exceptions_queue.models import Approval, ExceptionRecord


def exception_brief(exc: ExceptionRecord) -> dict:
    return {"id": str(exc.pk), "code": exc.code, "status": exc.status, "message": exc.message,
            "owner": exc.owner.get_username() if exc.owner_id else None}


def latest_exceptions(event_ids) -> dict:
    out = {}
    for exc in (ExceptionRecord.objects.filter(event_id__in=event_ids).select_related("owner")
                .order_by("event_id", "-created_at").distinct("event_id")):
        out[exc.event_id] = exception_brief(exc)
    return out


class ExceptionFilter(django_filters.FilterSet):
    status = django_filters.CharFilter()
    code = django_filters.CharFilter()
    entity = django_filters.CharFilter(field_name="entity_code")
    owner = django_filters.CharFilter(field_name="owner__username")
    process = django_filters.CharFilter()
    event = django_filters.UUIDFilter(field_name="event_id")

    class Meta:
        model = ExceptionRecord
        fields = ["status", "code", "entity", "owner", "process", "event"]


class ApprovalFilter(django_filters.FilterSet):
    status = django_filters.CharFilter()
    kind = django_filters.CharFilter()
    entity = django_filters.CharFilter(field_name="entity__code")

    class Meta:
        model = Approval
        fields = ["status", "kind", "entity"]


def exceptions():
    return ExceptionRecord.objects.select_related("owner", "event").order_by("-created_at", "id")


def approvals():
    return (Approval.objects.select_related("entity", "requested_by")
            .prefetch_related("decisions__user").order_by("-created_at", "id"))
