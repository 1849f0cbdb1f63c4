"""A posting retry that is due does not live only in a worker's memory (issue #13, item 2), on real infrastructure.

A real Celery worker (prefork, two processes, its own process group) on a private Redis and the pytest-django
test database, the ERPNext connector against the stand-in (the harness in conftest.py). The ERP answers the
first create with 429 and `Retry-After: 20`: the worker records the failure and the retry's due time on the
journal and holds the retry's countdown (an ETA message it has taken from Redis and not acknowledged). It is
SIGKILLed while it waits, and a new worker is started. Redis would hand the message back only after the
visibility timeout (an hour, as in production), the stale-message sweep waits ten minutes: only the due
time kept in the database, read by the outbox sweep at beat's cadence, brings the journal back in time.
The test loop runs that sweep itself, every `outbox-sweep` interval of CELERY_BEAT_SCHEDULE, and nothing else.
"""
import time

import pytest
from django.conf import settings

from ledger import services as ledger
from ledger.models import Journal, Outbox, PostingAttempt
from tests import factories as f
from tests.faults.test_posting_faults import all_in, assert_books, describe, setup_customers
from tests.helpers import send_accepted

pytestmark = [pytest.mark.worker, pytest.mark.slow]

RETRY_AFTER = 20  # seconds the ERP asks for: long enough to kill the worker while it waits
DUE_LATENCY_GOAL = 60  # the goal: posted within a minute of the due time
PRODUCTION_VISIBILITY = "3600"  # as config/settings/base.py: Redis does not hand the held message back in time


def test_a_worker_killed_while_it_holds_a_retry_countdown_loses_nothing(harness, workers, erp, source):
    beat_every = settings.CELERY_BEAT_SCHEDULE["outbox-sweep"]["schedule"]
    workers.start(CELERY_VISIBILITY_TIMEOUT=PRODUCTION_VISIBILITY, TIEOUT_POSTING_RETRY_AFTER_CAP=RETRY_AFTER)
    [customer] = setup_customers(source, harness, 1)

    erp.retry_after = str(RETRY_AFTER)
    erp.faults.add("rate_limit")  # the first create is refused with 429, Retry-After: 20
    event_id = send_accepted(source, f.invoice(customer_id=customer))["id"]

    def failure_recorded() -> bool:
        return Journal.objects.filter(event_id=event_id, status=Journal.Status.READY,
                                      next_attempt_at__isnull=False).exists()

    harness.wait_until(failure_recorded, timeout=30, what="the 429 recorded with its due time", sweep=False,
                       restart=False, diagnose=describe([event_id]))
    journal = Journal.objects.get(event_id=event_id)
    due = journal.next_attempt_at
    assert journal.posting_retries == 1 and "429" in journal.last_error
    assert [a.outcome for a in journal.attempts.all()] == [PostingAttempt.Outcome.TRANSIENT]
    assert erp.creates[str(journal.pk)] == 0, "the 429 came before the ERP read the entry"

    # The retry's countdown is in the worker's memory: an ETA task it holds, nothing waiting in Redis's queue (the
    # drain's timer for the journal's entity: ledger.services.drain, `set_timer`).
    victim = workers.current

    def countdown_held() -> bool:
        scheduled = harness.app.control.inspect(destination=[victim.nodename], timeout=1).scheduled() or {}
        return any(str(journal.entity_id) in str(task["request"]["args"])
                   for task in scheduled.get(victim.nodename, []))

    harness.wait_until(countdown_held, timeout=15, what="the retry's countdown held by the worker", sweep=False,
                       restart=False)
    victim.kill()
    victim.reap()
    killed_at = time.monotonic()
    with harness.app.connection_for_write() as conn:
        assert conn.default_channel._size("posting") == 0, "the retry message went down with the worker"
    journal.refresh_from_db()
    assert journal.status == Journal.Status.READY and journal.next_attempt_at == due

    workers.start()  # the same settings: the held message stays unacknowledged for the visibility timeout
    sweeps = []
    last_sweep = [0.0]

    def posted() -> bool:
        # Beat's `outbox-sweep`, at beat's interval: the only way back for this journal.
        if time.monotonic() - last_sweep[0] >= beat_every:
            sweeps.append(ledger.outbox_sweep(older_than_seconds=settings.TIEOUT_OUTBOX_SWEEP_AFTER_SECONDS))
            last_sweep[0] = time.monotonic()
        return Journal.objects.filter(pk=journal.pk, status=Journal.Status.POSTED).exists()

    # Generous for a loaded machine; what is asserted is the latency after the due time, below.
    harness.wait_until(posted, timeout=RETRY_AFTER + 4 * DUE_LATENCY_GOAL, what="posted after the crash",
                       sweep=False, restart=False, diagnose=describe([event_id]))
    journal.refresh_from_db()
    latency = (journal.posted_at - due).total_seconds()
    print(f"\n[retry due] worker killed {RETRY_AFTER}s before the retry was due; posted {latency:.1f}s after its due "
          f"time by the sweep ({len(sweeps)} sweeps every {beat_every:.0f}s, grace "
          f"{settings.TIEOUT_POSTING_DUE_GRACE_SECONDS:.0f}s; new worker started in {workers.start_seconds[-1]:.1f}s, "
          f"{time.monotonic() - killed_at:.1f}s from the kill to posted)")
    assert 0 <= latency <= DUE_LATENCY_GOAL, f"posted {latency:.1f}s after its due time"
    assert journal.posted_at >= due, "not sent before it was due"
    # The sweep sent it (a fresh outbox row after the due time, or the entity's doorbell rung for its due
    # journals), and the ERP got exactly one entry.
    assert Outbox.objects.filter(journal=journal, created_at__gte=due).exists() or sum(sweeps) >= 1
    assert erp.creates[str(journal.pk)] == 1
    assert len(erp.by_cheque(str(journal.pk))) == 1
    assert [a.outcome for a in journal.attempts.order_by("started_at")] == [
        PostingAttempt.Outcome.TRANSIENT, PostingAttempt.Outcome.POSTED]
    assert journal.next_attempt_at is None
    assert all_in([event_id], {"posted"})()
    assert_books(erp)
