"""What posting leads to: a `PostOutcome`; when a failed attempt's retry is due (the retry policy, once: capped
exponential backoff with full jitter, the ERP's Retry-After winning when it asks for longer, until
TIEOUT_POSTING_MAX_RETRIES); and a journal that failed for good (its attempt closed, its outbox row settled,
`ledger.hooks.journal_failed` announced).
"""
import datetime
import random
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from audit import services as audit
from ledger import hooks
from ledger.models import Journal, Outbox, PostingAttempt


@dataclass
class PostOutcome:
    journal_id: object
    status: str
    erp_document_ref: str | None = None


def _retry_due(failures: int, exc) -> datetime.datetime | None:
    """When the next attempt is due after `failures` transient or ambiguous failures in a row (counting the one
    that just happened), or None once the retry budget is spent. Kept in the database by the caller: the
    posting task's countdown is only the fast path, the sweeps send whatever is due."""
    if failures > settings.TIEOUT_POSTING_MAX_RETRIES:
        return None
    delay = random.uniform(0, min(settings.TIEOUT_POSTING_BACKOFF_CAP, 2 ** (failures - 1)))
    if exc.retry_after:
        delay = max(delay, min(exc.retry_after, settings.TIEOUT_POSTING_RETRY_AFTER_CAP))
    return timezone.now() + datetime.timedelta(seconds=delay)


def _release_for_retry(item, exc, *, permanent: bool) -> None:
    """Put a journal or an ERP batch whose attempt failed back to `ready`, with the failure counted and the next
    attempt's due time kept on the row (none after a permanent failure or once the budget is spent); saved."""
    if not permanent:
        item.posting_retries += 1
    item.status = "ready"
    item.posting_claimed_until = None
    item.next_attempt_at = None if permanent else _retry_due(item.posting_retries, exc)
    item.last_error = exc.erp_message[:4000]
    item.save(update_fields=["status", "posting_claimed_until", "posting_retries", "next_attempt_at", "last_error"])


def _scheduled(exc, next_attempt_at) -> None:
    """Tell the posting task what the service recorded for this failure: the due time of the next attempt,
    or None when nothing more is due (the work failed, or settled elsewhere in the meantime)."""
    exc.scheduled = True
    exc.next_attempt_at = next_attempt_at


def _fail(journal: Journal, code: str, message: str, *, actor) -> None:
    journal.attempts.filter(outcome=PostingAttempt.Outcome.IN_PROGRESS).update(
        outcome=PostingAttempt.Outcome.ABANDONED, finished_at=timezone.now(),
        message="the worker stopped before the ERP answered")
    before = journal.status
    journal.status = Journal.Status.FAILED
    journal.posting_claimed_until = None
    journal.next_attempt_at = None
    journal.last_error = message
    journal.save(update_fields=["status", "posting_claimed_until", "next_attempt_at", "last_error"])
    Outbox.objects.filter(journal=journal, dispatched_at__isnull=True).update(dispatched_at=timezone.now())
    PostingAttempt.objects.create(journal=journal, finished_at=timezone.now(), connector=journal.entity.erp_connector,
                                  outcome=PostingAttempt.Outcome.PERMANENT, message=message)
    audit.record(actor=actor, action="journal.failed", object_type="journal", object_id=journal.pk,
                 event_id=journal.event_id, before={"status": before}, after={"status": "failed", "error": message})
    hooks.journal_failed.send(journal=journal, code=code, message=message, actor=actor)
