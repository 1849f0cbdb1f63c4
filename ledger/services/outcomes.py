"""What posting leads to: a `PostOutcome`, and a journal that failed for good (its attempt closed, its outbox
row settled, `ledger.hooks.journal_failed` announced).
"""
from dataclasses import dataclass

from django.utils import timezone

from audit import services as audit
from ledger import hooks
from ledger.models import Journal, Outbox, PostingAttempt


@dataclass
class PostOutcome:
    journal_id: object
    status: str
    erp_document_ref: str | None = None


def _fail(journal: Journal, code: str, message: str, *, actor) -> None:
    journal.attempts.filter(outcome=PostingAttempt.Outcome.IN_PROGRESS).update(
        outcome=PostingAttempt.Outcome.ABANDONED, finished_at=timezone.now(),
        message="the worker stopped before the ERP answered")
    before = journal.status
    journal.status = Journal.Status.FAILED
    journal.posting_claimed_until = None
    journal.last_error = message
    journal.save(update_fields=["status", "posting_claimed_until", "last_error"])
    Outbox.objects.filter(journal=journal, dispatched_at__isnull=True).update(dispatched_at=timezone.now())
    PostingAttempt.objects.create(journal=journal, finished_at=timezone.now(), connector=journal.entity.erp_connector,
                                  outcome=PostingAttempt.Outcome.PERMANENT, message=message)
    audit.record(actor=actor, action="journal.failed", object_type="journal", object_id=journal.pk,
                 event_id=journal.event_id, before={"status": before}, after={"status": "failed", "error": message})
    hooks.journal_failed.send(journal=journal, code=code, message=message, actor=actor)
