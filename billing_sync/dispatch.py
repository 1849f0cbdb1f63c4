"""Hand accepted events to the workers in batches, off the request's critical path. The durable record of work
is the committed `accepted` event row; ids are buffered in memory and a daemon thread publishes them to Celery
in chunks every few milliseconds (a list append instead of a ~1.5 ms broker round trip). Ids lost with the
process or a down broker are re-scheduled by the beat sweep (`events_sweep_accepted`); processing is
idempotent. In Celery eager mode (tests) ids are published at once in the caller's thread, and follow-up
wake-ups queue behind the current event, so chains of held events run as a loop in scheduling order.
Outside eager mode each message holds one lane's events and goes to that lane's queue (`config.lanes`): the
lane of the event's customer (named in the event, or found through its invoice or payment), else of the
first document it changes. A customer the event names (most do) is known to the request that received it, which
passes the route along (`payload_route`); the rest are read for the whole flush in one query. A flush's messages
go to Redis together, in one pipeline (kombu's publish batch), not a broker round trip each."""
import atexit
import collections
import os
import threading
import time
import zlib

import structlog
from django.conf import settings
from django.db import DatabaseError, connection

from billing_sync import ordering, tasks
from config import lanes

log = structlog.get_logger("tieout.dispatch")

CHUNK = settings.TIEOUT_PROCESS_CHUNK  # ids per message: one message is one processing chunk
FLUSH_INTERVAL = 0.01  # seconds
IDLE_SECONDS = 1.0


# The route key of each event: its customer, named in the payload or through the invoice or payment it
# is about (the canonical document, when it exists already), else the first document the event changes.
_ROUTES = f"""
SELECT e.id::text, e.source_system,
       COALESCE(e.payload->'data'->>'customer_id', ic.customer_id, pc.customer_id),
       (SELECT min(substr(k, {len(ordering.WRITE) + 1})) FROM unnest(e.order_keys) k WHERE k LIKE '{ordering.WRITE}%%')
FROM billing_sync_event e
LEFT JOIN billing_sync_invoice i
       ON i.source_system = e.source_system AND i.invoice_id = e.payload->'data'->>'invoice_id'
LEFT JOIN billing_sync_customer ic ON ic.id = i.customer_id
LEFT JOIN billing_sync_payment p
       ON p.source_system = e.source_system AND p.payment_id = e.payload->'data'->>'payment_id'
LEFT JOIN billing_sync_customer pc ON pc.id = p.customer_id
WHERE e.id = ANY(%s::uuid[])
"""


def route_key(*, source_system: str, customer_id: str | None, first_write: str | None, event_id: str) -> str:
    if customer_id:
        return ordering.document_key("customer", source_system, customer_id)
    return first_write or f"event:{event_id}"


def payload_route(payload: dict) -> str | None:
    """The route key of an event that names its customer, from its payload as `_ROUTES` would find it (the
    payload's customer comes first there); None when the query must look (no customer named)."""
    data = payload.get("data")
    customer_id = data.get("customer_id") if isinstance(data, dict) else None
    if isinstance(customer_id, str) and customer_id:
        return ordering.document_key("customer", payload["source_system"], customer_id)
    return None


def lanes_of(event_ids: list[str], routes: dict[str, str] | None = None) -> dict[str, int]:
    """Each event's lane: from its known route key (`routes`), else looked up; an event the query cannot read
    (gone, or the database unreachable) gets the lane of its id: any lane is correct, order being kept under
    the row lock."""
    count = lanes.count()
    routes = routes or {}
    found: dict[str, int] = {i: lanes.lane_of(routes[i], count) for i in event_ids if i in routes}
    unknown = [i for i in event_ids if i not in found]
    if not unknown:
        return found
    try:
        if not connection.in_atomic_block:  # the dispatcher thread's connection outlives requests: renew it
            connection.close_if_unusable_or_obsolete()
        with connection.cursor() as cursor:
            cursor.execute(_ROUTES, [unknown])
            for event_id, source_system, customer_id, first_write in cursor.fetchall():
                key = route_key(source_system=source_system, customer_id=customer_id, first_write=first_write,
                                event_id=event_id)
                found[event_id] = lanes.lane_of(key, count)
    except DatabaseError as exc:
        log.warning("events.route_failed", count=len(unknown), error=str(exc))
    return {i: found[i] if i in found else zlib.crc32(i.encode()) % count for i in event_ids}


def _messages(event_ids: list[str], routes: dict[str, str] | None = None) -> list[tuple[str | None, list[str]]]:
    """(queue, ids) per message: in eager mode the ids in order (no queue: they run here, now); otherwise
    grouped by lane, in order within a lane."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return [(None, event_ids[start:start + CHUNK]) for start in range(0, len(event_ids), CHUNK)]
    by_lane: dict[int, list[str]] = {}
    for event_id, lane in lanes_of(event_ids, routes).items():
        by_lane.setdefault(lane, []).append(event_id)
    return [(lanes.queue_name(lane), ids[start:start + CHUNK])
            for lane, ids in by_lane.items() for start in range(0, len(ids), CHUNK)]


def publish(event_ids: list[str], routes: dict[str, str] | None = None) -> None:
    messages = _messages([str(i) for i in event_ids], routes)
    if not settings.CELERY_TASK_ALWAYS_EAGER and len(messages) > 1:
        # One Redis round trip and one client for the flush's messages (a transport without batches, such as
        # RabbitMQ's, publishes each at once). A batch is sent without Celery's publish retries: if it fails,
        # the messages go again one at a time below, with them. One sent twice is harmless: its task finds
        # its events processed.
        try:
            with tasks.process_events.app.producer_or_acquire() as producer, producer.batch():
                for queue, ids in messages:
                    tasks.process_events.apply_async(args=[ids], queue=queue, producer=producer)
            return
        except Exception as exc:
            log.warning("events.schedule_batch_failed", messages=len(messages), error=str(exc))
    for queue, ids in messages:  # one at a time: eager mode (they run here, now), one message, or a failed batch
        try:
            tasks.process_events.apply_async(args=[ids], **({"queue": queue} if queue else {}))
        except Exception as exc:  # broker down: the sweep re-schedules accepted events
            log.warning("events.schedule_failed", count=len(ids), error=str(exc))
            return


class _Dispatcher:
    def __init__(self):
        self.lock = threading.Lock()
        # Held while a flush publishes: the exit's flush waits for the background thread's publish in flight
        # (which took the ids out of the buffer) instead of finding the buffer empty and letting the process
        # end under it, losing those ids to the sweep (seen on a gunicorn worker recycled mid-burst).
        self.publishing = threading.Lock()
        self.wake = threading.Event()
        self.buffer: list[str] = []
        self.routes: dict[str, str] = {}
        self.pid = None

    def add(self, event_ids, routes=None) -> None:
        with self.lock:
            self.buffer.extend(str(i) for i in event_ids)
            if routes:
                self.routes.update(routes)
            if self.pid != os.getpid():  # first use in this (possibly forked) process
                self.pid = os.getpid()
                threading.Thread(target=self.run, name="tieout-dispatch", daemon=True).start()
        self.wake.set()

    def flush(self) -> None:
        with self.publishing:
            with self.lock:
                ids, self.buffer = self.buffer, []
                routes, self.routes = self.routes, {}
            if ids:
                publish(ids, routes)

    def run(self) -> None:
        while True:
            if not self.wake.wait(IDLE_SECONDS):
                connection.close()  # quiet: no database session held per process for the lane query
                self.wake.wait()
            # Let a burst gather into fewer, larger messages: a sleep, not a wait on `wake`, which the next
            # request sets again at once (the flush then took one or two events each: a publish per event).
            time.sleep(FLUSH_INTERVAL)
            self.wake.clear()  # before the flush takes the buffer: what comes after wakes the next round
            self.flush()


_dispatcher = _Dispatcher()
# A process that exits in order (gunicorn recycling a worker, a deploy) publishes what it holds; only a
# crash leaves ids to the sweep.
atexit.register(_dispatcher.flush)


_inline = threading.local()


def _publish_inline(event_ids: list[str], routes: dict[str, str] | None = None) -> None:
    queue = getattr(_inline, "queue", None)
    if queue is not None:  # already publishing in this thread: run these after the current ones
        queue.extend(event_ids)
        return
    _inline.queue = collections.deque(event_ids)
    try:
        while _inline.queue:
            chunk = [_inline.queue.popleft() for _ in range(min(CHUNK, len(_inline.queue)))]
            publish(chunk, routes)
    finally:
        _inline.queue = None


def schedule(event_ids, routes: dict[str, str] | None = None) -> None:
    """Hand these accepted events to the workers; `routes` (event id text -> route key, `payload_route`) spares
    the look-up of the events whose customer the caller already knows."""
    if settings.CELERY_TASK_ALWAYS_EAGER or getattr(settings, "TIEOUT_DISPATCH_INLINE", False):
        _publish_inline([str(i) for i in event_ids], routes)
    else:
        _dispatcher.add(event_ids, routes)
