"""Exception-queue reads: filtered, entity-scoped, keyset-paginated lists of exceptions; one exception;
approvals; an event's latest exception; the status and process choices pages compare against.
"""
import base64
import datetime
import uuid
from dataclasses import dataclass

import django_filters
from django.db import connection
from django.db.models import Q

from config import roles
from exceptions_queue import sla
from exceptions_queue.models import Approval, ExceptionComment, ExceptionRecord


def exception_brief(exc: ExceptionRecord) -> dict:
    return {"id": str(exc.pk), "code": exc.code, "status": exc.status, "message": exc.message,
            "owner": exc.owner.get_username() if exc.owner_id else None}


def latest_exceptions(event_ids) -> dict:
    out = {}
    for exc in (ExceptionRecord.objects.filter(event_id__in=event_ids).select_related("owner")
                .order_by("event_id", "-created_at").distinct("event_id")):
        out[exc.event_id] = exception_brief(exc)
    return out


# The choices, for pages and views that compare or list them (they never import the models).
ExceptionStatus = ExceptionRecord.Status
ExceptionProcess = ExceptionRecord.Process
ApprovalStatus = Approval.Status

UNRESOLVED = (ExceptionRecord.Status.OPEN, ExceptionRecord.Status.ASSIGNED)


def _uuid_or_none(value: str):
    try:
        return uuid.UUID(value.strip())
    except (ValueError, AttributeError):
        return None


# The events table's unique index leads with source_system, so a look-up by event_id alone would scan it.
# There are few source systems: walk them with a recursive "loose index scan" (one index probe per system)
# and probe (source_system, event_id) in each.
_EVENTS_BY_EXTERNAL_ID = """
WITH RECURSIVE systems(name) AS (
    SELECT MIN(source_system) FROM billing_sync_event
    UNION ALL
    SELECT (SELECT MIN(source_system) FROM billing_sync_event WHERE source_system > systems.name)
      FROM systems WHERE systems.name IS NOT NULL
)
SELECT e.id FROM systems JOIN billing_sync_event e ON e.source_system = systems.name AND e.event_id = %s
"""


def events_with_external_id(event_id: str) -> list:
    with connection.cursor() as cursor:
        cursor.execute(_EVENTS_BY_EXTERNAL_ID, [event_id])
        return [row[0] for row in cursor.fetchall()]


def search_q(value: str) -> Q:
    """Source-id search: the exception's source document id, its event's external id (or the event's or
    the exception's own uuid). Each alternative is an index probe; together a bitmap OR."""
    value = value.strip()[:200]
    if not value:
        return Q()
    q = Q(source_ref=value)
    event_ids = events_with_external_id(value)
    if event_ids:
        q |= Q(event_id__in=event_ids)
    as_uuid = _uuid_or_none(value)
    if as_uuid is not None:
        q |= Q(pk=as_uuid) | Q(event_id=as_uuid)
    return q


class ExceptionFilter(django_filters.FilterSet):
    """Filters of the queue (API and web page). Each maps to an index that ends in created_at."""

    status = django_filters.CharFilter(method="filter_status", help_text="open, assigned, resolved or unresolved")
    code = django_filters.CharFilter()
    entity = django_filters.CharFilter(field_name="entity_code")
    owner = django_filters.CharFilter(method="filter_owner", help_text="a username, `me` or `unassigned`")
    process = django_filters.CharFilter()
    event = django_filters.UUIDFilter(field_name="event_id")
    age = django_filters.CharFilter(method="filter_age", help_text="<1h, 1-24h, 1-7d or >7d (also lt1h, gt7d)")
    q = django_filters.CharFilter(method="filter_q", help_text="a source id: document id, event id, or uuid")
    escalated = django_filters.BooleanFilter(method="filter_escalated", help_text="true: escalated at least once")

    class Meta:
        model = ExceptionRecord
        fields = ["status", "code", "entity", "owner", "process", "event", "age", "q", "escalated"]

    def filter_escalated(self, queryset, name, value):
        return queryset.filter(escalation_level__gt=0) if value else queryset.filter(escalation_level=0)

    def filter_status(self, queryset, name, value):
        if value == "unresolved":
            return queryset.exclude(status=ExceptionRecord.Status.RESOLVED)
        return queryset.filter(status=value)

    def filter_owner(self, queryset, name, value):
        if value == "unassigned":
            return queryset.filter(owner__isnull=True)
        if value == "me":
            user = getattr(self.request, "user", None)
            return queryset.filter(owner_id=user.pk) if user and user.is_authenticated else queryset.none()
        return queryset.filter(owner__username=value)

    def filter_age(self, queryset, name, value):
        bucket = sla.normalise_bucket(value)
        if bucket is None:
            return queryset.none()
        return queryset.filter(**sla.created_range(bucket))

    def filter_q(self, queryset, name, value):
        return queryset.filter(search_q(value))


class ApprovalFilter(django_filters.FilterSet):
    status = django_filters.CharFilter()
    kind = django_filters.CharFilter()
    entity = django_filters.CharFilter(field_name="entity__code")

    class Meta:
        model = Approval
        fields = ["status", "kind", "entity"]


def exceptions():
    # The event's payload and stored answer are the big columns: a list never needs them.
    return (ExceptionRecord.objects.select_related("owner", "event")
            .defer("event__payload", "event__response_body").order_by("-created_at", "id"))


def visible_exceptions(user):
    """The exceptions `user` may see: those of granted entities, and those without an entity."""
    queryset = exceptions()
    codes = roles.entity_codes(user)
    if codes is None:
        return queryset
    return queryset.filter(Q(entity_code__in=codes) | Q(entity_code=""))


def visible_exception(user, pk) -> ExceptionRecord | None:
    return visible_exceptions(user).filter(pk=pk).first()


def exception_get(pk) -> ExceptionRecord:
    """One exception as it is stored now (say, after an action committed); `ExceptionRecord.DoesNotExist`
    when there is none."""
    return ExceptionRecord.objects.get(pk=pk)


PAGE_SIZE = 50


@dataclass
class QueuePage:
    rows: list
    next_cursor: str | None
    prev_cursor: str | None


def _cursor(exc: ExceptionRecord) -> str:
    raw = f"{exc.created_at.isoformat()}|{exc.pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(value: str):
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        at, pk = raw.split("|")
        return datetime.datetime.fromisoformat(at), uuid.UUID(pk)
    except (ValueError, UnicodeDecodeError):
        return None


def queue_page(queryset, *, after: str = "", before: str = "", size: int = PAGE_SIZE) -> QueuePage:
    """One page of `queryset` (ordered newest first, then id), by keyset: no OFFSET and no COUNT(*).

    `after` continues past a row; `before` goes back. The redundant `created_at <=` / `>=` bound lets the
    index range start at the cursor instead of filtering from the top.
    """
    key = _parse_cursor(after) if after else None
    back = _parse_cursor(before) if before and not key else None
    if key:
        at, pk = key
        queryset = queryset.filter(created_at__lte=at).filter(Q(created_at__lt=at) | Q(created_at=at, pk__gt=pk))
    elif back:
        at, pk = back
        queryset = (queryset.filter(created_at__gte=at).filter(Q(created_at__gt=at) | Q(created_at=at, pk__lt=pk))
                    .order_by("created_at", "-id"))
    rows = list(queryset[:size + 1])
    more = len(rows) > size
    rows = rows[:size]
    if back:
        rows.reverse()
        has_next, has_prev = True, more
    else:
        has_next, has_prev = more, bool(key)
    return QueuePage(rows=rows, next_cursor=_cursor(rows[-1]) if rows and has_next else None,
                     prev_cursor=_cursor(rows[0]) if rows and has_prev else None)


def exception_comments(exc: ExceptionRecord) -> list:
    return list(ExceptionComment.objects.filter(exception=exc).select_related("author").order_by("created_at", "id"))


def approvals():
    return (Approval.objects.select_related("entity", "requested_by")
            .prefetch_related("decisions__user").order_by("-created_at", "id"))


def approval_for_journal(journal_id):
    """The approval a journal waits for (or waited for), None when it needed none."""
    return approvals().filter(journal_id=journal_id).first()
