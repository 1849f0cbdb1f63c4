"""Re-posting a posted journal that the ERP no longer has (deleted, or cancelled there), asked for by
reconciliation: look it up by our reference first and only send it when the ERP has no live document for it,
so it is never booked twice. A posted journal never changes (database trigger), so the ERP document it lives
in from then on is recorded as a posting attempt marked `REPOST` (its `erp_document_ref`); reconciliation reads
the latest such attempt as the journal's ERP document (`effective_erp_ref`)."""
from django.db import transaction
from django.utils import timezone

from audit import services as audit
from config.errors import ApiError, Codes, Conflict, NotFound
from ledger import connectors
from ledger.models import Journal, PostingAttempt

# The message that starts every re-post attempt: how reconciliation tells them from the first posting.
REPOST = "repost"


def effective_erp_ref(journal: Journal) -> str | None:
    """The ERP document a posted journal lives in now: its latest re-post's, else the one it was posted as."""
    latest = (PostingAttempt.objects.filter(journal=journal, message__startswith=REPOST,
                                            outcome__in=[PostingAttempt.Outcome.POSTED,
                                                         PostingAttempt.Outcome.ALREADY_POSTED])
              .exclude(erp_document_ref="").order_by("-started_at", "-id").values_list("erp_document_ref", flat=True)
              .first())
    return latest or journal.erp_document_ref


def journal_repost(*, journal_id, actor, reason: str = "") -> connectors.PostResult:
    """Send a posted journal to the ERP again after the ERP lost it; returns where it lives now.

    Looks up our reference first (the connector's look-up finds a live document carrying the journal's id):
    a document found is only linked (`already_existed`), nothing is sent. Otherwise the journal is posted as
    a new ERP document. The call to the ERP runs outside any transaction; the outcome is one posting attempt
    (`REPOST ...`) and one audit entry `journal.reposted`. Batch members are refused (their batch document
    carries them). ERP failures are refused with `posting_failed` (502) and change nothing.
    """
    journal = Journal.objects.select_related("entity").filter(pk=journal_id).first()
    if journal is None:
        raise NotFound(f"no journal {journal_id}")
    if journal.status != Journal.Status.POSTED:
        raise Conflict(f"journal {journal.pk} is {journal.status}, not posted: posting sends it",
                       code=Codes.INVALID_STATE)
    if journal.erp_batch_id:
        raise Conflict(f"journal {journal.pk} was posted in batch document {journal.erp_document_ref}; "
                       "it is not re-posted on its own", code=Codes.INVALID_STATE)
    before = effective_erp_ref(journal)
    connector = connectors.get_connector(journal.entity)
    started = timezone.now()
    try:
        result = connector.lookup(journal)
        if result is None:
            result = connector.post_journal(journal)
    except connectors.base.ConnectorError as exc:
        raise ApiError(f"the ERP did not take journal {journal.pk}: {exc.erp_message}", code=Codes.POSTING_FAILED,
                       status=502, title="The ERP did not take the journal") from exc
    outcome = PostingAttempt.Outcome.ALREADY_POSTED if result.already_existed else PostingAttempt.Outcome.POSTED
    with transaction.atomic():
        PostingAttempt.objects.create(journal=journal, started_at=started, finished_at=timezone.now(),
                                      connector=connector.name, outcome=outcome,
                                      erp_document_ref=result.erp_document_ref,
                                      message=f"{REPOST}: {reason}"[:4000] if reason else REPOST)
        audit.record(actor=actor, action="journal.reposted", object_type="journal", object_id=journal.pk,
                     event_id=journal.event_id, before={"erp_document_ref": before},
                     after={"erp_document_ref": result.erp_document_ref, "linked": result.already_existed,
                            "reason": reason})
    return result
