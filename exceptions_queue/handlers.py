"""What the queue itself handles, registered at start-up (`ExceptionsQueueConfig.ready`): posting exceptions
(a journal the ERP refused) are retried by sending the failed journals again; manual-journal approvals release
or refuse the journal; Tieout's own `system` alarms (e.g. audit_chain_broken) have nothing to repeat, so a
retry only records that someone looked. From the ledger's hooks, a journal that failed opens its posting
exception and one that posted resolves it."""
from exceptions_queue import services, workflow
from exceptions_queue.models import Approval, ExceptionRecord
from ledger import hooks as ledger_hooks
from ledger import services as ledger
from ledger.models import Journal

POSTED = "Posted to the ERP."


def posting_retry(*, exception, actor) -> None:
    """Send the failed journals of the exception's event (or its one journal) to the ERP again."""
    failed = Journal.objects.filter(status=Journal.Status.FAILED)
    failed = failed.filter(event_id=exception.event_id) if exception.event_id else failed.filter(
        pk=exception.journal_id)
    for journal_id in failed.values_list("pk", flat=True):
        ledger.journal_retry(journal_id=journal_id, actor=actor)


def posting_replay_refusal(*, exception) -> str:
    # Processing succeeded and booked journals: starting over would book them twice.
    return "the event was already processed into journals; use retry to send them again"


def system_retry(*, exception, actor) -> None:
    """An alarm about Tieout itself has no step to repeat: the retry (audited by the caller) is the record."""


def manual_journal_approve(*, approval, actor) -> None:
    ledger.journal_release(journal_id=approval.journal_id, actor=actor)


def manual_journal_reject(*, approval, actor) -> None:
    ledger.journal_reject(journal_id=approval.journal_id, actor=actor)


def on_journals_posted(*, journals, actor) -> None:
    """Resolve the posting exceptions that waited for these journals."""
    if len(journals) == 1:
        services.exceptions_resolve_for_journal(journal=journals[0], resolution=POSTED, actor=actor)
        return
    waiting = ExceptionRecord.objects.filter(journal_id__in=[j.pk for j in journals]).exclude(
        status=ExceptionRecord.Status.RESOLVED).values("journal_id")
    for journal in Journal.objects.filter(pk__in=waiting):
        services.exceptions_resolve_for_journal(journal=journal, resolution=POSTED, actor=actor)


def on_journal_failed(*, journal, code: str, message: str, actor) -> None:
    services.exception_open_for_journal(journal=journal, code=code, message=message, actor=actor)


def register() -> None:
    workflow.exception_kind_register(ExceptionRecord.Process.POSTING, retry=posting_retry,
                                     exception_replay_refusal=posting_replay_refusal)
    workflow.exception_kind_register(ExceptionRecord.Process.SYSTEM, retry=system_retry)
    workflow.approval_kind_register(Approval.Kind.MANUAL_JOURNAL, approve=manual_journal_approve,
                                    reject=manual_journal_reject)
    ledger_hooks.journals_posted.connect(on_journals_posted)
    ledger_hooks.journal_failed.connect(on_journal_failed)
