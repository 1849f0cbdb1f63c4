"""Celery tasks of the ledger: post a journal or a batch (idempotent, retried with backoff), sweeps. The
retry policy lives here, once: a permanent ERP error fails the work at once (an exception with the ERP's
message); a transient or ambiguous one is retried with capped exponential backoff and full jitter (the
ERP's Retry-After wins when it asks for longer) until TIEOUT_POSTING_MAX_RETRIES, then fails."""
import random

import structlog
from celery import shared_task
from django.conf import settings

from ledger import connectors, services

log = structlog.get_logger("tieout.posting")
TASK_OPTIONS = {"bind": True, "acks_late": True, "reject_on_worker_lost": True, "max_retries": None,
                "ignore_result": True}


def _post_with_retries(task, post, fail, *, ref: str) -> None:
    try:
        post()
    except connectors.PermanentError as exc:
        fail(exc.erp_message)
    except (connectors.TransientError, connectors.AmbiguousError) as exc:
        retries = task.request.retries
        if retries >= settings.TIEOUT_POSTING_MAX_RETRIES:
            fail(f"gave up after {retries + 1} attempts: {exc.erp_message}")
            return
        countdown = random.uniform(0, min(settings.TIEOUT_POSTING_BACKOFF_CAP, 2 ** retries))
        if exc.retry_after:
            countdown = max(countdown, min(exc.retry_after, settings.TIEOUT_POSTING_RETRY_AFTER_CAP))
        log.warning("posting.retry", ref=ref, attempt=retries + 1, countdown=round(countdown, 2), error=str(exc))
        raise task.retry(exc=exc, countdown=countdown) from None


@shared_task(name="ledger.tasks.post_journal", **TASK_OPTIONS)
def post_journal(self, journal_id: str):
    _post_with_retries(self, lambda: services.journal_post(journal_id=journal_id),
                       lambda message: services.journal_post_failed(journal_id=journal_id, message=message),
                       ref=f"journal:{journal_id}")


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
