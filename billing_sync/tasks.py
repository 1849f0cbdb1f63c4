"""Celery tasks of billing sync: process accepted events, and sweep for any that were never scheduled or stay
parked on a document that exists; deliver status callbacks to source systems (queue `callbacks`) and sweep for
those that are due; execute reconciliation runs (queue `reconciliation`), and the beat's fan-outs that start one
per entity (incremental every few minutes, full nightly)."""
from celery import shared_task
from django.conf import settings

from billing_sync import callbacks, services


@shared_task(name="billing_sync.tasks.process_events", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=(Exception,), retry_backoff=2, retry_backoff_max=120, retry_jitter=True, max_retries=10,
             ignore_result=True)
def process_events(event_ids: list[str]):
    services.events_process(event_ids=event_ids, fill=settings.TIEOUT_PROCESS_FILL)


@shared_task(name="billing_sync.tasks.sweep_accepted_events", ignore_result=True)
def sweep_accepted_events():
    return services.events_sweep_accepted(older_than_seconds=settings.TIEOUT_OUTBOX_SWEEP_AFTER_SECONDS)


# Less often than the accepted events: it reads every open exception waiting for a document (tens of thousands
# at a bad month end) for a wake-up lost with a killed worker, which only delays the event (the hold check keeps
# the order meanwhile: billing_sync/ordering.py).
@shared_task(name="billing_sync.tasks.sweep_parked_events", ignore_result=True)
def sweep_parked_events():
    return services.events_sweep_parked(older_than_seconds=settings.TIEOUT_OUTBOX_SWEEP_AFTER_SECONDS)


# Retries live in the database (next_attempt_at, picked up by the sweep), not in Celery countdowns: an hour of
# backoff must not sit in Redis past its visibility timeout, and a lost message only delays a delivery.
@shared_task(name="billing_sync.tasks.deliver_callback", acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def deliver_callback(delivery_id: str, attempt: int | None = None):
    callbacks.deliver(delivery_id, attempt=attempt)


@shared_task(name="billing_sync.tasks.sweep_callbacks", ignore_result=True)
def sweep_callbacks():
    return callbacks.sweep_callbacks()


# Reconciliation (queue `reconciliation`). A run is started (recorded `running`, one per entity) before it is
# queued; executing it twice is harmless (a finished run, or one another worker holds, is left alone).
@shared_task(name="billing_sync.tasks.reconcile", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def reconcile(run_id: int):
    services.reconciliation_run_execute(run_id=run_id)


@shared_task(name="billing_sync.tasks.reconcile_incremental_all", ignore_result=True)
def reconcile_incremental_all():
    return services.reconciliation_run_schedule(full=False)


@shared_task(name="billing_sync.tasks.reconcile_full_all", ignore_result=True)
def reconcile_full_all():
    return services.reconciliation_run_schedule(full=True)
