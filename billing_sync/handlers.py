"""billing_sync's part in the layers below, registered at start-up (`BillingSyncConfig.ready`): event
exceptions (customer, invoice, payment, credit, write-off) are retried by processing the event again and
replayed from the payload stored at receipt; callback exceptions by delivering the failed callbacks again;
reconciliation exceptions by re-running the reconciliation for their break's object (and resolving one in the
queue resolves its break);
credit note and write-off approvals book or refuse the document. From the ledger and the queue: a posted
journal, or an exception opened or resolved outside the event's own processing, re-derives the event's status;
a resolved exception tells the source system."""
import hashlib

from billing_sync import callbacks, documents, selectors, services
from billing_sync.models import Event
from config.errors import Codes, Conflict
from exceptions_queue import workflow
from exceptions_queue.models import Approval, ExceptionRecord
from ledger import hooks as ledger_hooks
from ledger import selectors as ledger_selectors
from ledger.models import Journal

EVENT_PROCESSES = (ExceptionRecord.Process.CUSTOMER, ExceptionRecord.Process.INVOICE,
                   ExceptionRecord.Process.PAYMENT, ExceptionRecord.Process.CREDIT,
                   ExceptionRecord.Process.WRITE_OFF)


def event_retry(*, exception, actor) -> None:
    if exception.event_id:
        services.event_reprocess(event_id=exception.event_id, actor=actor)


def event_replay_refusal(*, exception) -> str | None:
    if Journal.objects.filter(event_id=exception.event_id).exists():
        # Processing succeeded and booked journals: starting over would book them twice.
        return "the event was already processed into journals; use retry to send them again"
    return None


def event_replay_check(*, exception) -> dict:
    """The event still waits in the queue and its stored payload is what the source sent (its SHA-256)."""
    event = Event.objects.select_for_update().get(pk=exception.event_id)
    if event.status != Event.Status.EXCEPTION:
        raise Conflict(f"the event is {event.status}, not waiting in the queue", code=Codes.INVALID_STATE)
    digest = hashlib.sha256(services.canonical_bytes(event.payload)).hexdigest()
    if digest != event.payload_hash:
        raise Conflict("the stored payload no longer matches the SHA-256 recorded at receipt; not replayed",
                       code=Codes.INVALID_STATE)
    return {"payload_sha256": digest}


def event_replay(*, exception, actor) -> None:
    services.event_reprocess(event_id=exception.event_id, actor=actor)


def callback_retry(*, exception, actor) -> None:
    callbacks.callbacks_retry(exception_id=exception.pk, actor=actor)


def callback_replay_refusal(*, exception) -> str:
    return "the event was already processed into journals; use retry to send them again"


def document_approve(*, approval, actor) -> None:
    documents.document_approved(kind=approval.kind, journal=approval.journal, actor=actor)
    if approval.journal.event_id:
        services.event_refresh_status(event_id=approval.journal.event_id, actor=actor)


def document_reject(*, approval, actor) -> None:
    documents.document_rejected(kind=approval.kind, journal=approval.journal, actor=actor)
    if approval.journal.event_id:
        services.event_refresh_status(event_id=approval.journal.event_id, actor=actor)


def on_journals_posted(*, journals, actor) -> None:
    event_ids = {j.event_id for j in journals if j.event_id}
    if len(event_ids) == 1:
        services.event_refresh_status(event_id=next(iter(event_ids)), actor=actor)
    elif event_ids:
        services.events_refresh_status(event_ids=event_ids, actor=actor)


def on_event_exceptions_changed(*, event_id, actor) -> None:
    services.event_refresh_status(event_id=event_id, actor=actor)


def on_exception_resolved(*, exception, actor) -> None:
    callbacks.notify(event=exception.event, kind=callbacks.RESOLVED, actor=actor)  # no-op without an event
    if exception.process == ExceptionRecord.Process.RECONCILIATION:
        services.reconciliation_breaks_resolve_for_exception(exception=exception, actor=actor)


def reconciliation_retry(*, exception, actor) -> None:
    services.reconciliation_exception_retry(exception=exception, actor=actor)


def reconciliation_replay_refusal(*, exception) -> str:
    return "a reconciliation break is not replayed; retry re-runs the reconciliation for its object"


def register() -> None:
    for process in EVENT_PROCESSES:
        workflow.exception_kind_register(process, retry=event_retry, replay=event_replay,
                                         exception_replay_refusal=event_replay_refusal, replay_check=event_replay_check)
    workflow.exception_kind_register(ExceptionRecord.Process.CALLBACK, retry=callback_retry,
                                     exception_replay_refusal=callback_replay_refusal)
    workflow.exception_kind_register(ExceptionRecord.Process.RECONCILIATION, retry=reconciliation_retry,
                                     exception_replay_refusal=reconciliation_replay_refusal)
    for kind in (Approval.Kind.CREDIT_NOTE, Approval.Kind.WRITE_OFF):
        workflow.approval_kind_register(kind, approve=document_approve, reject=document_reject)
    ledger_hooks.journals_posted.connect(on_journals_posted)
    ledger_selectors.reconciliation_status_provide(selectors.journal_reconciliation_statuses)
    workflow.event_exceptions_changed.connect(on_event_exceptions_changed)
    workflow.exception_resolved.connect(on_exception_resolved)
