"""Hand accepted events to the workers in batches, off the request's critical path. The durable record of work
is the committed `accepted` event row; ids are buffered in memory and a daemon thread publishes them to Celery
in chunks every few milliseconds (a list append instead of a ~1.5 ms broker round trip). Ids lost with the
process or a down broker are re-scheduled by the beat sweep (`events_sweep_accepted`); processing is
idempotent. In Celery eager mode (tests) ids are published at once in the caller's thread, and follow-up
wake-ups queue behind the current event, so chains of held events run as a loop in scheduling order."""
import atexit
import collections
import os
import threading

import structlog
from django.conf import settings

from billing_sync import tasks

log = structlog.get_logger("tieout.dispatch")

CHUNK = settings.TIEOUT_PROCESS_CHUNK  # ids per message: one message is one processing chunk
FLUSH_INTERVAL = 0.01  # seconds


def publish(event_ids: list[str]) -> None:
    for start in range(0, len(event_ids), CHUNK):
        ids = event_ids[start:start + CHUNK]
        try:
            tasks.process_events.apply_async(args=[ids])
        except Exception as exc:  # broker down: the sweep re-schedules accepted events
            log.warning("events.schedule_failed", count=len(ids), error=str(exc))
            return


class _Dispatcher:
    def __init__(self):
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.buffer: list[str] = []
        self.pid = None

    def add(self, event_ids) -> None:
        with self.lock:
            self.buffer.extend(str(i) for i in event_ids)
            if self.pid != os.getpid():  # first use in this (possibly forked) process
                self.pid = os.getpid()
                threading.Thread(target=self.run, name="tieout-dispatch", daemon=True).start()
        self.wake.set()

    def flush(self) -> None:
        with self.lock:
            ids, self.buffer = self.buffer, []
        if ids:
            publish(ids)

    def run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            self.wake.wait(FLUSH_INTERVAL)  # let a burst gather into fewer, larger messages
            self.flush()


_dispatcher = _Dispatcher()
# A process that exits in order (gunicorn recycling a worker, a deploy) publishes what it holds; only a
# crash leaves ids to the sweep.
atexit.register(_dispatcher.flush)


_inline = threading.local()


def _publish_inline(event_ids: list[str]) -> None:
    queue = getattr(_inline, "queue", None)
    if queue is not None:  # already publishing in this thread: run these after the current ones
        queue.extend(event_ids)
        return
    _inline.queue = collections.deque(event_ids)
    try:
        while _inline.queue:
            chunk = [_inline.queue.popleft() for _ in range(min(CHUNK, len(_inline.queue)))]
            publish(chunk)
    finally:
        _inline.queue = None


def schedule(event_ids) -> None:
    if settings.CELERY_TASK_ALWAYS_EAGER or getattr(settings, "TIEOUT_DISPATCH_INLINE", False):
        _publish_inline([str(i) for i in event_ids])
    else:
        _dispatcher.add(event_ids)
