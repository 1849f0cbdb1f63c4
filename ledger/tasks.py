"""Celery tasks of the ledger: post a journal or a batch (idempotent, retried), sweeps. The retry policy is the
services' (`ledger.services.outcomes._retry_due`): a permanent ERP error fails the work at once; a transient or
ambiguous one is recorded with the due time of its retry (capped exponential backoff, full jitter, the ERP's
Retry-After winning) in the database, until TIEOUT_POSTING_MAX_RETRIES, then fails. Here the task only waits
for that due time by a countdown: the fast path. A worker that dies holding the countdown loses nothing, the
sweeps (beat's `outbox-sweep`, `erp-batches-sweep`) send whatever is due. An external ERP in per-journal mode is
posted by drains (`post_ready_journals`, many journals in flight per process); `post_journal` posts one journal:
in-database and eager posting, and a journal taken back from a worker that died."""
import structlog
from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from ledger import connectors, services

log = structlog.get_logger("tieout.posting")
TASK_OPTIONS = {"bind": True, "acks_late": True, "reject_on_worker_lost": True, "max_retries": None,
                "ignore_result": True}


def _post_with_retries(task, post, fail, *, ref: str) -> None:
    try:
        post()
    except connectors.PermanentError as exc:
        fail(exc.erp_message)  # a no-op when the service has already failed the work in its own transaction
    except (connectors.TransientError, connectors.AmbiguousError) as exc:
        retries = task.request.retries
        if exc.scheduled:
            if exc.next_attempt_at is None:
                return  # retries spent (the service failed the work), or it settled elsewhere meanwhile
            countdown = max(0.0, (exc.next_attempt_at - timezone.now()).total_seconds())
        else:
            # Nothing was recorded: another delivery holds the lease, or the work could not be taken up yet.
            # Look again when the lease ends, a bounded number of times; the holder, or the sweep once the
            # lease has expired, owns it after that (never failed from here: no ERP said no).
            if retries >= settings.TIEOUT_POSTING_MAX_RETRIES:
                log.warning("posting.left_to_the_sweep", ref=ref, attempt=retries + 1, error=str(exc))
                return
            countdown = min(exc.retry_after or 1.0, settings.TIEOUT_POSTING_LEASE_SECONDS)
        log.warning("posting.retry", ref=ref, attempt=retries + 1, countdown=round(countdown, 2), error=str(exc))
        raise task.retry(exc=exc, countdown=countdown) from None
    except (OperationalError, InterfaceError) as exc:
        # Our own database failed (a restart, a dropped connection, a deadlock victim, the lock table full):
        # nothing was recorded, so no due time exists for the sweep to find before its stale-journal pass ten
        # minutes on. Look again soon, backing off, a bounded number of times; then the sweep owns it.
        retries = task.request.retries
        if retries >= settings.TIEOUT_POSTING_MAX_RETRIES:
            log.warning("posting.left_to_the_sweep", ref=ref, attempt=retries + 1, error=str(exc))
            return
        countdown = min(2.0 ** retries, 60.0)
        log.warning("posting.database_retry", ref=ref, attempt=retries + 1, countdown=countdown, error=str(exc))
        raise task.retry(exc=exc, countdown=countdown) from None


@shared_task(name="ledger.tasks.post_journal", **TASK_OPTIONS)
def post_journal(self, journal_id: str):
    _post_with_retries(self, lambda: services.journal_post(journal_id=journal_id),
                       lambda message: services.journal_post_failed(journal_id=journal_id, message=message),
                       ref=f"journal:{journal_id}")


@shared_task(name="ledger.tasks.post_ready_journals", ignore_result=True)
def post_ready_journals(entity_id: str, member: str | None = None):
    """A drain: the entity's due ready journals, many in flight at once (`ledger.services.drain`). Acknowledged on
    receipt: a drain that dies loses nothing its claims' leases and the doorbell's expiry do not bring back."""
    return services.posting_drain(entity_id=entity_id, member=member)


@shared_task(name="ledger.tasks.post_erp_batch", **TASK_OPTIONS)
def post_erp_batch(self, batch_id: str):
    _post_with_retries(self, lambda: services.erp_batch_post(batch_id=batch_id),
                       lambda message: services.erp_batch_failed(batch_id=batch_id, message=message),
                       ref=f"batch:{batch_id}")


@shared_task(name="ledger.tasks.sweep_outbox", ignore_result=True)
def sweep_outbox():
    return services.outbox_sweep(older_than_seconds=settings.TIEOUT_OUTBOX_SWEEP_AFTER_SECONDS)


@shared_task(name="ledger.tasks.sweep_erp_batches", ignore_result=True)
def sweep_erp_batches():
    return services.erp_batches_sweep(window_seconds=settings.TIEOUT_BATCH_WINDOW_SECONDS)
