"""Processing events: under the event's row lock, held behind earlier events on the same documents
(`billing_sync.ordering`), applied to canonical documents and journals (`billing_sync.documents`), or parked
in the exception queue with a stable code; waking what waited behind or for it. Safe to run twice.
"""
import contextlib
from decimal import Decimal

import structlog
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit import services as audit
from billing_sync import callbacks, dispatch, documents, ordering
from billing_sync.models import Event
from config import correlation, deferred
from config.memo import memo_scope
from config.errors import BusinessRuleError
from exceptions_queue import services as queue
from exceptions_queue.models import ExceptionRecord
from ledger import services as ledger

log = structlog.get_logger("tieout.processing")


def events_schedule(event_ids, routes=None) -> None:
    """Hand accepted events to the workers (batched off the request path; the sweep covers any loss). `routes`:
    the route keys the caller knows from the payloads (`events_routes`), so the dispatcher need not look."""
    dispatch.schedule(event_ids, routes)


def events_routes(pairs) -> dict[str, str]:
    """{event id text: route key} for the (id, payload) pairs whose payload names its customer."""
    return {str(event_id): key for event_id, payload in pairs
            if (key := dispatch.payload_route(payload)) is not None}


def events_sweep_accepted(*, older_than_seconds: int = 30) -> int:
    """Events accepted but never processed (broker outage, crash after commit): schedule them again.

    Not those held behind an event parked in the queue: that one wakes them when it is done, and until
    then looking again would find them held again.
    """
    cutoff = timezone.now() - timezone.timedelta(seconds=older_than_seconds)
    ids = ordering.accepted_not_parked_behind(received_before=cutoff, limit=5000)
    if ids:
        events_schedule(ids)
    return len(ids)


def events_sweep_parked(*, older_than_seconds: int = 30) -> int:
    """Events still parked on a document that exists: the wake-up after its provider committed (or after the
    event parked, `dependency_recheck`) was lost with a killed worker. Each goes back through processing."""
    cutoff = timezone.now() - timezone.timedelta(seconds=older_than_seconds)
    ids = ordering.parked_on_available(parked_before=cutoff, limit=5000)
    return sum(event_requeue(event_id=event_id, actor="system", reason="dependency arrived (sweep)")
               for event_id in ids)


# What an event's exception is about (the workflow's subject kind), by event type.
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


def _amount_of(event) -> Decimal | None:
    data = event.payload.get("data", {})
    value = data.get("total") or data.get("amount")
    try:
        return Decimal(value) if isinstance(value, str) else None
    except ArithmeticError:
        return None


def event_process(*, event_id, actor="system") -> str:
    """Process one accepted event under its row lock; returns its new status. Safe to call twice.

    An event held behind an earlier one on the same documents (billing_sync/ordering.py) is left
    `accepted`, untouched: the event holding it wakes it when it is done.
    """
    with transaction.atomic():
        event = Event.objects.select_for_update().filter(pk=event_id).first()
        if event is None or event.status != Event.Status.ACCEPTED:
            return event.status if event else "missing"
        return _process_locked(event, actor=actor)


def events_process(*, event_ids, actor="system", fill: bool = False) -> dict:
    """Process events in chunks of TIEOUT_PROCESS_CHUNK, one transaction each; returns their statuses.

    A chunk's accepted events are locked at once in acceptance order (`seq`: two chunks wait for each other's
    rows in the same order, so they never deadlock on them; a worker's task skips those another chunk holds),
    then each is processed as `event_process` would,
    in the order given (the order one at a time would take them): each sees what the earlier ones of the chunk
    did, and the ordering rules decide under the same locks, so held events, audit entries and wake-ups are
    those of one at a time. An event whose handler fails unexpectedly (not a business rule) rolls the chunk
    back; the chunk runs again with a savepoint per event, the failing one is rolled back to its savepoint so
    the others commit, and it is then processed again by itself, as today, and its error goes to the caller
    (the task retries it).

    With `fill` (the worker's task), a chunk that the ids leave room in also takes the oldest other ready events
    (`_fill`), so that events arriving one message each are processed in chunks whenever they queue up.
    """
    ids = list(dict.fromkeys(str(i) for i in event_ids))
    size = max(1, settings.TIEOUT_PROCESS_CHUNK)
    statuses: dict = {}
    poisoned: list = []
    for start in range(0, len(ids), size):
        chunk = ids[start:start + size]
        try:
            try:
                poisoned += _chunk_process(chunk, statuses, actor=actor, isolate=False,
                                           fill=size - len(chunk) if fill else 0)
            except _EventFailed:
                # Nothing of the chunk committed: again, each event in a savepoint of its own this time, so
                # that the one that fails is rolled back alone and the others commit (those named only).
                poisoned += _chunk_process(chunk, statuses, actor=actor, isolate=True)
        except DatabaseError:
            # The chunk's rows written behind were refused as it ended (a constraint no event's savepoint saw), or
            # its connection failed: nothing of it committed. Its events go one at a time, as before chunks, so
            # one bad row costs only its own event (an outage fails the first of them again, for the task's retry).
            log.warning("events.chunk_failed", events=len(chunk), exc_info=True)
            poisoned += chunk
    for event_id in poisoned:
        statuses[str(event_id)] = event_process(event_id=event_id, actor=actor)
    return statuses


class _EventFailed(Exception):
    """An event of a chunk processed without savepoints failed unexpectedly: the chunk is rolled back."""


def _chunk_process(ids: list[str], statuses: dict, *, actor, isolate: bool, fill: int = 0) -> list:
    """One chunk in one transaction; returns the events isolated as poisoned (rolled back, left accepted).

    Without `isolate` (first), the events run without a savepoint each (two statements per event saved): an
    unexpected failure rolls the whole chunk back (`_EventFailed`) for the caller to run it again with `isolate`,
    each event in its own savepoint. A business rule needs neither: `_process_locked` keeps its own savepoint
    around the handler.
    """
    poisoned = []
    wakes: list = []  # (seq, order keys) of its events: what queued behind them is looked up after commit
    held: list = []  # its events left held: looked at again after commit (`_held_released`)
    with transaction.atomic():
        # The chunk's journals are relayed together after it commits (an in-database ledger posts them at once),
        # before the look for what queued behind (as each journal's relay came before it one at a time). Its
        # audit entries, history rows, canonical changes and outbox rows are written behind, one statement per
        # table, before it commits (a savepoint rolled back drops its own: config/deferred.py).
        with ledger.outbox_relay_batched(), memo_scope(), deferred.write_behind():
            # A worker's task (`fill`) skips its events that another worker's chunk holds (its fill took them, or
            # a wake-up's message): that chunk processes them, and waiting for it to commit only to find them done
            # kept a second worker process idle for a chunk's length. If that chunk fails, its own events are run
            # again by its task and any others are swept up as accepted (`events_sweep_accepted`).
            locked = {str(e.pk): e for e in Event.objects.select_for_update(skip_locked=fill > 0).filter(
                pk__in=ids, status=Event.Status.ACCEPTED).order_by("seq")}
            if fill > 0:
                extra = _fill(exclude=ids, limit=fill)
                locked.update((str(e.pk), e) for e in extra)
                ids = ids + [str(e.pk) for e in extra]
            # After the fill: its partial index (event_ready_idx) matches only a plan made for its values.
            _generic_plans()
            awaiting = _Awaiting(locked.values())
            documents.customers_prefetch(locked.values())
            documents.documents_prefetch(locked.values())
            for event in (locked[i] for i in ids if i in locked):
                if not isolate:
                    try:
                        statuses[str(event.pk)] = _process_locked(event, actor=actor, wakes=wakes,
                                                                  awaiting=awaiting, held=held, savepoint=False)
                    except Exception as exc:  # a bug or an outage: the chunk again, with savepoints
                        log.warning("events.chunk_failed_unisolated", event_id=str(event.pk), exc_info=True)
                        raise _EventFailed(str(event.pk)) from exc
                    continue
                my_wakes: list = []
                try:
                    with transaction.atomic():
                        statuses[str(event.pk)] = _process_locked(event, actor=actor, wakes=my_wakes,
                                                                  awaiting=awaiting, held=held)
                except Exception:  # business rules are handled inside: this is a bug or an outage, isolated
                    log.warning("events.chunk_isolated", event_id=str(event.pk), exc_info=True)
                    poisoned.append(event.pk)
                    continue
                # Only once its savepoint is released: a rolled-back event wakes nothing.
                wakes += my_wakes
        if awaiting.provided:
            # An event parked on one of these documents by a transaction that committed while this chunk ran was
            # not in the chunk's look, and its own look after commit (`dependency_recheck`) did not see this
            # chunk's documents yet: whichever commits second finds the other, so nothing waits forever. Until
            # it is woken, the hold check keeps later events on its documents behind it (ordering._waits_for);
            # woken before the successors are scheduled, it is `accepted` when they look.
            provided = sorted(set(awaiting.provided))
            transaction.on_commit(lambda: dependents_wake(provided), robust=True)
        if wakes:
            transaction.on_commit(lambda: successors_wake_many(wakes))
        if held:
            transaction.on_commit(lambda: _held_released(held))
    return poisoned


def _fill(*, exclude: list[str], limit: int) -> list:
    """The oldest accepted events not held and not locked by another worker's chunk (SKIP LOCKED: taking them
    never waits, so it cannot deadlock with the rows the chunk already holds), locked for this chunk. Their own
    messages, when they come, find them processed and do nothing. Per-document order does not depend on which
    worker takes an event: the hold check decides it under the same locks (billing_sync/ordering.py)."""
    return list(Event.objects.select_for_update(skip_locked=True)
                .filter(status=Event.Status.ACCEPTED, held_by__isnull=True).exclude(pk__in=exclude)
                .order_by("received_at", "seq")[:limit])


def _generic_plans() -> None:
    """For this transaction, statements prepared on the connection (config/settings: from their fifth run) run
    their generic plan rather than being planned again for each event's values. The chunk's statements look up
    by key, which a generic plan (pruning partitions as it starts) does as well; but PostgreSQL's estimate
    compares plans by cost alone and kept re-planning the hold check for every event (1.2 ms of planning for
    0.06 ms of work: the events' partitions and the exceptions' join)."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")


class _Awaiting:
    """The documents a chunk's events may provide that some parked event waits for, looked up once at the
    chunk's start instead of once per event (`dependents_wake` then runs only for those), plus the dependencies
    its own events park on as it goes. A document outside what the chunk's events could provide is looked up
    as before."""

    def __init__(self, events):
        self.candidates = {k for e in events for k in ordering.provides_from_keys(e.type, e.order_keys)}
        self.awaited = queue.dependencies_awaited(self.candidates) if self.candidates else set()
        self.provided: list[str] = []

    def may_wake(self, keys) -> bool:
        return any(k in self.awaited or k not in self.candidates for k in keys)


def _held_released(ids: list) -> int:
    """After a chunk commits: schedule its events left held whose holder no longer holds them. The holder may
    have finished while the chunk ran, after the hold check read it: its wake-up then found them locked by the
    chunk, and a worker's task skips locked events (`_fill`'s SKIP LOCKED), so nothing else would take them
    until the sweep. Scheduling one still held costs only a look: processing checks the hold again."""
    ids = ordering.held_released(ids)
    if ids:
        events_schedule(ids)
    return len(ids)


def _successors_wake_after_commit(event, wakes: list | None) -> None:
    if wakes is not None:  # a chunk: one look for all its events, after it commits
        wakes.append((event.seq, event.order_keys))
        return
    seq, keys = event.seq, event.order_keys
    transaction.on_commit(lambda: successors_wake(seq=seq, keys=keys))


class _WroteBeforeRefusing(Exception):
    """A handler run without a savepoint raised a business rule after changing the database: only a savepoint
    undoes that, so the chunk runs again with one per event."""


@contextlib.contextmanager
def _handler_unit(savepoint: bool):
    """What a handler's business rule undoes. With `savepoint`, a savepoint (two statements, and a subtransaction
    for PostgreSQL to track until commit). Without (a chunk's first run), none: a handler checks its rules before
    it writes, and in a chunk its writes wait behind (config/deferred.py), so a refusal drops what it deferred and
    the after-commit callbacks it registered, as the savepoint would have; one that reached the database first
    (`_WroteBeforeRefusing`) sends the chunk round again with savepoints."""
    if savepoint:
        with transaction.atomic():
            yield
        return
    point, hooks = deferred.checkpoint(), len(connection.run_on_commit)
    try:
        yield
    except BusinessRuleError as exc:
        if connection.needs_rollback or not deferred.undo_to(point):
            raise _WroteBeforeRefusing(exc.code) from exc
        del connection.run_on_commit[hooks:]
        raise


def _process_locked(event, *, actor, wakes: list | None = None, awaiting: "_Awaiting | None" = None,
                    held: list | None = None, savepoint: bool = True) -> str:
    """`event_process`'s work on an accepted event whose row the caller locked, in the caller's transaction.

    With `wakes`, `awaiting` and `held` (a chunk), the look for the events queued behind it is left to the chunk's
    one look after commit (and, held, it is looked at again then: `_held_released`), and the events parked on
    the documents it provides are looked for only when the chunk's look found some (`_Awaiting`). Without
    `savepoint` (a chunk's first run), its handler runs without one (`_handler_unit`).
    """
    holder = ordering.held_by(event)
    if holder is not None:
        if held is not None:
            held.append(event.pk)
        if event.held_by_id != holder:  # recorded once per holder, not at every look
            event.held_by_id = holder
            event.save(update_fields=["held_by"])
            audit.record(actor=actor, action="event.held", object_type="event", object_id=event.pk,
                         event_id=event.pk, after={"behind": str(holder)})
            # An event held behind this one while it was still to run (a holder running in another
            # worker's chunk, say) may pass it now that it waits: look again at what queued behind it.
            _successors_wake_after_commit(event, wakes)
        return event.status
    # Whatever the outcome, the events queued behind this one may go next.
    _successors_wake_after_commit(event, wakes)
    with correlation.bound(event.correlation_id or None):
        event.attempts += 1
        try:
            with _handler_unit(savepoint):
                outcome = documents.apply(event, actor=actor)
        except BusinessRuleError as exc:
            event.status = Event.Status.EXCEPTION
            event.processed_at = timezone.now()
            event.save(update_fields=["status", "processed_at", "attempts"])
            queue.exception_open_for_event(
                event=event, process=PROCESS_BY_TYPE[event.type], code=exc.code, message=exc.detail,
                dependency=exc.dependency, amount=_amount_of(event), source_ref=source_ref_of(event.payload),
                actor=actor)
            audit.record(actor=actor, action="event.exception", object_type="event", object_id=event.pk,
                         event_id=event.pk, after={"status": "exception", "code": exc.code,
                                                   "message": exc.detail})
            callbacks.notify(event=event, kind=callbacks.EXCEPTION, actor=actor)
            if exc.dependency:
                if awaiting is not None:
                    awaiting.awaited.add(exc.dependency)
                # The document may have committed while we processed (its wake-up found no waiting
                # exception yet): look again once ours is committed, so nothing waits forever.
                dependency, waiting_id, source_system = exc.dependency, event.pk, event.source_system
                transaction.on_commit(lambda: dependency_recheck(event_id=waiting_id, dependency=dependency,
                                                                 source_system=source_system))
                # An event that provides it and is held may pass now (it waited behind an event that waits for
                # this one: ordering._unlocked); nothing after this one on its documents would wake it.
                transaction.on_commit(lambda: providers_wake(dependency))
            return event.status
        event.status = outcome.status
        event.processed_at = timezone.now()
        event.save(update_fields=["status", "processed_at", "attempts"])
        audit.record(actor=actor, action="event.processed", object_type="event", object_id=event.pk,
                     event_id=event.pk, before={"status": "accepted"},
                     after={"status": event.status, "journals": [str(j.pk) for j in outcome.journals],
                            "changes": outcome.changes})
        if event.attempts > 1:  # only a retried event can have an exception to close
            queue.exceptions_resolve_for_event(event=event, resolution="Processed successfully on retry.",
                                               actor=actor)
        if outcome.provides:
            # In this transaction, not after it: the events that waited for these documents are
            # `accepted` again the moment they exist, so nothing accepted after them can pass them.
            if awaiting is None:
                dependents_wake(outcome.provides)
            else:
                awaiting.provided += outcome.provides
                if awaiting.may_wake(outcome.provides):
                    dependents_wake(outcome.provides)
    return event.status


def successors_wake(*, seq: int, keys: list[str]) -> int:
    """After an event was processed, parked or resolved: schedule the events queued behind it."""
    ids = ordering.successors_of(seq=seq, keys=keys)
    if ids:
        events_schedule(ids)
    return len(ids)


def successors_wake_many(events: list[tuple[int, list[str]]]) -> int:
    """`successors_wake` for a chunk's events, in one look."""
    ids = ordering.successors_of_many(events)
    if ids:
        events_schedule(ids)
    return len(ids)


def providers_wake(dependency: str) -> int:
    """An event parked on a document: schedule the accepted events that would provide it."""
    ids = ordering.accepted_providers_of(dependency)
    if ids:
        events_schedule(ids)
    return len(ids)


def dependents_wake(keys: list[str]) -> int:
    """Documents arrived: send the events that waited for them back through processing."""
    event_ids = queue.events_waiting_for(keys)
    for event_id in event_ids:
        event_requeue(event_id=event_id, actor="system", reason="dependency arrived")
    return len(event_ids)


def dependency_recheck(*, event_id, dependency: str, source_system: str) -> bool:
    if ordering.dependency_exists(dependency, source_system):
        return event_requeue(event_id=event_id, actor="system", reason=f"{dependency} arrived")
    return False


def event_requeue(*, event_id, actor, reason: str) -> bool:
    """An event in `exception` goes back to `accepted` and is scheduled for processing again."""
    with transaction.atomic():
        event = Event.objects.select_for_update().get(pk=event_id)
        if event.status != Event.Status.EXCEPTION:
            return False
        event.status = Event.Status.ACCEPTED
        event.save(update_fields=["status"])
        audit.record(actor=actor, action="event.requeued", object_type="event", object_id=event.pk, event_id=event.pk,
                     before={"status": "exception"}, after={"status": "accepted", "reason": reason})
        transaction.on_commit(lambda: events_schedule([event.pk]))
    return True


def event_reprocess(*, event_id, actor) -> str:
    """Retry from the exception queue: reprocess now, in the caller's transaction, and report the outcome."""
    event = Event.objects.select_for_update().get(pk=event_id)
    if event.status != Event.Status.EXCEPTION:
        return event.status
    event.status = Event.Status.ACCEPTED
    event.save(update_fields=["status"])
    audit.record(actor=actor, action="event.retry", object_type="event", object_id=event.pk, event_id=event.pk,
                 before={"status": "exception"}, after={"status": "accepted"})
    return event_process(event_id=event_id, actor=actor)
