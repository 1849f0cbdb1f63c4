"""Celery tasks of the ledger: post one journal (idempotent, retried with backoff), sweep the outbox."""
import random

import structlog
from celery import shared_task
from django.conf import settings

from ledger import connectors, services

log = structlog.get_logger("tieout.posting")


@shared_task(bind=True, name="ledger.tasks.post_journal", acks_late=True, reject_on_worker_lost=True,
             max_retries=None, ignore_result=True)
def post_journal(self, journal_id: str):
    try:
        services.journal_post(journal_id=journal_id)
    except connectors.PermanentError as exc:
        services.journal_post_failed(journal_id=journal_id, message=exc.erp_message)
    except (connectors.TransientError, connectors.AmbiguousError) as exc:
        retries = self.request.retries
        if retries >= settings.TIEOUT_POSTING_MAX_RETRIES:
            services.journal_post_failed(journal_id=journal_id, message=f"gave up after {retries + 1} attempts: "
                                                                          f"{exc.erp_message}")
            return
        # Exponential backoff with full jitter, capped; the ERP's Retry-After wins when it asks for longer.
        countdown = random.uniform(0, min(settings.TIEOUT_POSTING_BACKOFF_CAP, 2 ** retries))
        if exc.retry_after:
            countdown = max(countdown, min(exc.retry_after, settings.TIEOUT_POSTING_RETRY_AFTER_CAP))
        log.warning("posting.retry", journal=journal_id, attempt=retries + 1, countdown=round(countdown, 2),
                    error=str(exc))
        raise self.retry(exc=exc, countdown=countdown) from None


@shared_task(name="ledger.tasks.sweep_outbox", ignore_result=True)
def sweep_outbox():
    return services.sweep_outbox(older_than_seconds=settings.TIEOUT_OUTBOX_SWEEP_AFTER_SECONDS)


@shared_task(bind=True, name="ledger.tasks.post_erp_batch", acks_late=True, reject_on_worker_lost=True,
             max_retries=None, ignore_result=True)
def post_erp_batch(self, batch_id: str):
    try:
        services.erp_batch_post(batch_id=batch_id)
    except connectors.PermanentError as exc:
        services.erp_batch_failed(batch_id=batch_id, message=exc.erp_message)
    except (connectors.TransientError, connectors.AmbiguousError) as exc:
        retries = self.request.retries
        if retries >= settings.TIEOUT_POSTING_MAX_RETRIES:
            services.erp_batch_failed(batch_id=batch_id, message=f"gave up after {retries + 1} attempts: "
                                                                  f"{exc.erp_message}")
            return
        countdown = random.uniform(0, min(settings.TIEOUT_POSTING_BACKOFF_CAP, 2 ** retries))
        if exc.retry_after:
            countdown = max(countdown, min(exc.retry_after, settings.TIEOUT_POSTING_RETRY_AFTER_CAP))
        raise self.retry(exc=exc, countdown=countdown) from None


@shared_task(name="ledger.tasks.sweep_erp_batches", ignore_result=True)
def sweep_erp_batches():
    return services.sweep_erp_batches(window_seconds=settings.TIEOUT_BATCH_WINDOW_SECONDS)
