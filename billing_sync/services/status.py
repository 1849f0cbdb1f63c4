"""An event's status as a summary of its journals and its open exception (API.md's meanings), re-derived when
either changes, with the status callback and the wake-up of the events held behind it.
"""
from django.db import transaction

from audit import services as audit
from billing_sync import callbacks
from billing_sync.models import Event
from config import correlation
from billing_sync.services.processing import successors_wake
from exceptions_queue.models import ExceptionRecord
from ledger.models import Journal


def _derived_status(current: str, journal_statuses: list[str], has_open_exception: bool) -> str:
    """An event's status from its journals and whether an exception is open (API.md's meanings)."""
    live = [s for s in journal_statuses if s != Journal.Status.REJECTED]
    if has_open_exception:
        return Event.Status.EXCEPTION
    if current == Event.Status.EXCEPTION and not journal_statuses:
        return Event.Status.IGNORED  # resolved by a person without processing: nothing was booked
    if journal_statuses and not live:
        return Event.Status.REJECTED
    if Journal.Status.PENDING_APPROVAL in live:
        return Event.Status.PENDING_APPROVAL
    if live and all(s == Journal.Status.POSTED for s in live):
        return Event.Status.POSTED
    return Event.Status.PROCESSED


def event_refresh_status(*, event_id, actor="system") -> str:
    """Derive an event's status from its journals and open exception after a journal changed."""
    return events_refresh_status(event_ids=[event_id], actor=actor).get(event_id, "missing")


def events_refresh_status(*, event_ids, actor="system") -> dict:
    """The same for many events at once (a batch document acknowledged): a few queries, not a few per event."""
    events = list(Event.objects.select_for_update().filter(pk__in=event_ids).order_by("pk"))
    ids = [e.pk for e in events if e.status not in (Event.Status.ACCEPTED, Event.Status.IGNORED)]
    journal_statuses: dict = {}
    for event_id, status in Journal.objects.filter(event_id__in=ids).values_list("event_id", "status"):
        journal_statuses.setdefault(event_id, []).append(status)
    open_exceptions = set(ExceptionRecord.objects.filter(event_id__in=ids).exclude(
        status=ExceptionRecord.Status.RESOLVED).values_list("event_id", flat=True))
    result, changed = {}, []
    for event in events:
        if event.pk not in ids:
            result[event.pk] = event.status
            continue
        new = _derived_status(event.status, journal_statuses.get(event.pk, []), event.pk in open_exceptions)
        result[event.pk] = new
        if new != event.status:
            changed.append((event, event.status, new))
    for new in {n for _, _, n in changed}:
        Event.objects.filter(pk__in=[e.pk for e, _, n in changed if n == new]).update(status=new)
    for event, before, _ in changed:
        if before == Event.Status.EXCEPTION:  # resolved or re-derived: it no longer holds its documents
            seq, keys = event.seq, event.order_keys
            transaction.on_commit(lambda seq=seq, keys=keys: successors_wake(seq=seq, keys=keys))
    if changed:
        # Under the correlation id at work (a request's, a journal's being posted) or, where none is bound (many
        # journals posted at once after a chunk commits), each event's own, as posting it alone would have.
        bound = correlation.get()
        audit.record_many([{"actor": actor, "action": "event.status_changed", "object_type": "event",
                            "object_id": event.pk, "event_id": event.pk, "before": {"status": before},
                            "after": {"status": new}, "correlation_id": bound or event.correlation_id or None}
                           for event, before, new in changed])
    for event, _, new in changed:
        event.status = new
        callbacks.notify(event=event, kind=callbacks.KIND_FOR_STATUS.get(new), actor=actor)  # posted, exception
    return result
