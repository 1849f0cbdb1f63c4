"""Batch mode: journals of an entity that posts in batches gather into one ERP document per window, posted and
acknowledged together, set-based. A batch's retry keeps its due time on the batch, where the sweep finds it.
"""
import datetime
from decimal import Decimal

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from audit import services as audit
from config.errors import Codes
from ledger import connectors, hooks, tasks
from ledger.models import Entity, ErpBatch, ErpBatchLine, Journal, Outbox, PostingAttempt
from config.money import ZERO
from ledger.services.outcomes import PostOutcome, _fail, _release_for_retry, _scheduled

log = structlog.get_logger("tieout.ledger")


def _batch_add(journal: Journal, *, actor) -> ErpBatch:
    """Add a ready journal to its entity's open batch for the day (caller holds the journal's lock)."""
    entity = journal.entity
    for _ in range(3):
        batch = (ErpBatch.objects.select_for_update()
                 .filter(entity=entity, accounting_date=journal.accounting_date, status=ErpBatch.Status.OPEN).first())
        if batch is not None:
            break
        try:
            with transaction.atomic():
                batch = ErpBatch.objects.create(entity=entity, accounting_date=journal.accounting_date)
            batch = ErpBatch.objects.select_for_update().get(pk=batch.pk)
            break
        except IntegrityError:  # another worker opened today's batch first: use that one
            continue
    else:
        raise connectors.TransientError("could not open a batch; will retry")
    sums: dict[int, list[Decimal]] = {}
    for line in journal.lines.all():
        pair = sums.setdefault(line.account_id, [ZERO, ZERO])
        pair[0] += line.debit
        pair[1] += line.credit
    existing = {row.account_id: row for row in ErpBatchLine.objects.filter(batch=batch, account_id__in=sums)}
    for account_id, (debit, credit) in sums.items():
        row = existing.get(account_id)
        if row is None:
            ErpBatchLine.objects.create(batch=batch, account_id=account_id, debit=debit, credit=credit)
        else:
            row.debit += debit
            row.credit += credit
            row.save(update_fields=["debit", "credit"])
    batch.journal_count += 1
    batch.save(update_fields=["journal_count"])
    before = journal.status
    journal.status = Journal.Status.POSTING
    journal.erp_batch = batch
    journal.save(update_fields=["status", "erp_batch"])
    audit.record(actor=actor, action="journal.batched", object_type="journal", object_id=journal.pk,
                 event_id=journal.event_id, before={"status": before},
                 after={"status": "posting", "erp_batch": batch.pk})
    if batch.journal_count >= settings.TIEOUT_BATCH_MAX_JOURNALS:
        _batch_close(batch, actor=actor)
    return batch


def _batch_close(batch: ErpBatch, *, actor) -> None:
    """Stop adding to a batch, net each account to one side, and hand it to the posting queue."""
    for row in ErpBatchLine.objects.select_for_update().filter(batch=batch):
        net = row.debit - row.credit
        if net == ZERO:
            row.delete()
            continue
        row.debit, row.credit = (net, ZERO) if net > ZERO else (ZERO, -net)
        row.save(update_fields=["debit", "credit"])
    batch.status = ErpBatch.Status.READY
    batch.closed_at = timezone.now()
    batch.save(update_fields=["status", "closed_at"])
    audit.record(actor=actor, action="erp_batch.closed", object_type="erp_batch", object_id=batch.pk,
                 after={"journals": batch.journal_count, "accounting_date": batch.accounting_date})
    transaction.on_commit(lambda: _send_batch(batch.pk))


def _send_batch(batch_id) -> None:
    try:
        tasks.post_erp_batch.apply_async(args=[str(batch_id)], queue="posting")
    except Exception as exc:  # the sweep re-sends
        log.warning("erp_batch.send_failed", batch=str(batch_id), error=str(exc))


def _send_batches(batch_ids) -> None:
    for batch_id in batch_ids:
        _send_batch(batch_id)


_BATCH_LINES_SQL = """
INSERT INTO ledger_erpbatchline (batch_id, account_id, debit, credit)
SELECT %s, account_id, GREATEST(SUM(debit) - SUM(credit), 0), GREATEST(SUM(credit) - SUM(debit), 0)
FROM ledger_journalline WHERE journal_id = ANY(%s)
GROUP BY account_id HAVING SUM(debit) <> SUM(credit)
"""


def erp_batches_form(*, actor="system") -> int:
    """Gather ready journals of batch-mode entities into closed batches, set-based.

    The relay does not hand batch-mode journals to one task each (that would serialise every worker on
    the day's open batch); they wait `ready` and this, run by the sweep, moves up to
    TIEOUT_BATCH_MAX_JOURNALS of them per entity and day into a batch in a few statements: the batch's
    net lines by one INSERT ... SELECT ... GROUP BY, the journals by one UPDATE. SKIP LOCKED lets two
    sweeps run at once without waiting on each other or taking the same journal.
    """
    formed = 0
    with transaction.atomic():
        rows = list(Journal.objects.select_for_update(skip_locked=True, of=("self",))
                    .filter(status=Journal.Status.READY, erp_batch__isnull=True,
                            entity__posting_mode=Entity.PostingMode.BATCH)
                    .exclude(entity__erp_connector="builtin")
                    .order_by("created_at").values_list("pk", "entity_id", "accounting_date", "event_id")[:20_000])
        groups: dict = {}
        for pk, entity_id, day, event_id in rows:
            groups.setdefault((entity_id, day), []).append((pk, event_id))
        size = settings.TIEOUT_BATCH_MAX_JOURNALS
        now = timezone.now()
        for (entity_id, day), members in groups.items():
            for start in range(0, len(members), size):
                chunk = members[start:start + size]
                ids = [pk for pk, _ in chunk]
                batch = ErpBatch.objects.create(entity_id=entity_id, accounting_date=day, status=ErpBatch.Status.READY,
                                                journal_count=len(ids), closed_at=now)
                with transaction.get_connection().cursor() as cursor:
                    cursor.execute(_BATCH_LINES_SQL, [batch.pk, ids])
                Journal.objects.filter(pk__in=ids).update(status=Journal.Status.POSTING, erp_batch=batch)
                Outbox.objects.filter(journal_id__in=ids, dispatched_at__isnull=True).update(dispatched_at=now)
                audit.record_many([{"actor": actor, "action": "journal.batched", "object_type": "journal",
                                    "object_id": pk, "event_id": event_id, "before": {"status": "ready"},
                                    "after": {"status": "posting", "erp_batch": str(batch.pk)}}
                                   for pk, event_id in chunk]
                                  + [{"actor": actor, "action": "erp_batch.closed", "object_type": "erp_batch",
                                      "object_id": batch.pk, "after": {"journals": len(ids), "accounting_date": day}}])
                transaction.on_commit(lambda batch_id=batch.pk: _send_batch(batch_id))
                formed += 1
    return formed


def erp_batches_sweep(*, window_seconds: float) -> int:
    """Form batches from waiting journals, close batches whose window has passed, send again what is due.

    Due: a ready batch whose retry's due time has passed (after TIEOUT_POSTING_DUE_GRACE_SECONDS, the task's
    own countdown's turn), a ready batch never heard of since it closed (its message lost), and a batch whose
    worker died holding its lease. Once sent, its due time moves TIEOUT_POSTING_REDISPATCH_SECONDS ahead
    (bookkeeping of the schedule only; the claim re-checks everything), so that a batch waiting in the queue
    is not sent again by every sweep.
    """
    now = timezone.now()
    count = erp_batches_form()
    for batch_id in ErpBatch.objects.filter(status=ErpBatch.Status.OPEN,
                                            created_at__lte=now - datetime.timedelta(seconds=window_seconds)
                                            ).values_list("pk", flat=True)[:500]:
        with transaction.atomic():
            batch = ErpBatch.objects.select_for_update().get(pk=batch_id)
            if batch.status == ErpBatch.Status.OPEN:
                _batch_close(batch, actor="system")
                count += 1
    grace = datetime.timedelta(seconds=settings.TIEOUT_POSTING_DUE_GRACE_SECONDS)
    due = (Q(status=ErpBatch.Status.READY, next_attempt_at__lte=now - grace)
           | Q(status=ErpBatch.Status.READY, next_attempt_at__isnull=True,
               closed_at__lte=now - datetime.timedelta(seconds=window_seconds))
           | (Q(status=ErpBatch.Status.POSTING, posting_claimed_until__lt=now)
              & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))))
    with transaction.atomic():
        stale = list(ErpBatch.objects.select_for_update(skip_locked=True).filter(due)
                     .order_by("next_attempt_at").values_list("pk", flat=True)[:500])
        if stale:
            ErpBatch.objects.filter(pk__in=stale).update(
                next_attempt_at=now + datetime.timedelta(seconds=settings.TIEOUT_POSTING_REDISPATCH_SECONDS))
            transaction.on_commit(lambda: _send_batches(stale))
    return count + len(stale)


def erp_batch_post(*, batch_id, actor="system") -> PostOutcome:
    """Post a closed batch as one ERP document; on acknowledgement every member journal is posted."""
    with transaction.atomic():
        batch = ErpBatch.objects.select_for_update(of=("self",)).select_related("entity").get(pk=batch_id)
        if batch.status not in (ErpBatch.Status.READY, ErpBatch.Status.POSTING):
            return PostOutcome(batch.pk, batch.status, batch.erp_document_ref)
        now = timezone.now()
        if batch.status == ErpBatch.Status.POSTING and batch.posting_claimed_until and batch.posting_claimed_until > now:
            raise connectors.TransientError("another worker is posting this batch",
                                            retry_after=(batch.posting_claimed_until - now).total_seconds())
        if batch.posting_attempts >= settings.TIEOUT_POSTING_MAX_DELIVERIES:
            raise connectors.PermanentError(f"batch parked after {batch.posting_attempts} delivery attempts; "
                                            f"last error: {batch.last_error or 'none'}")
        look_up_first = batch.posting_attempts > 0
        batch.status = ErpBatch.Status.POSTING
        batch.posting_attempts += 1
        batch.posting_claimed_until = now + datetime.timedelta(seconds=settings.TIEOUT_POSTING_LEASE_SECONDS)
        batch.next_attempt_at = None  # the lease says who holds it now; a failure sets the next due time
        batch.save(update_fields=["status", "posting_attempts", "posting_claimed_until", "next_attempt_at"])
        connector = connectors.get_connector(batch.entity)
    try:
        result = connector.lookup(batch) if look_up_first else None
        if result is None:
            result = connector.post_journal(batch)
    except connectors.base.ConnectorError as exc:
        _batch_release(batch_id, exc, actor=actor)
        raise
    with transaction.atomic():
        batch = ErpBatch.objects.select_for_update().get(pk=batch_id)
        if batch.status == ErpBatch.Status.POSTED:
            return PostOutcome(batch.pk, batch.status, batch.erp_document_ref)
        now = timezone.now()
        batch.status = ErpBatch.Status.POSTED
        batch.erp_document_ref = result.erp_document_ref
        batch.posted_at = now
        batch.posting_claimed_until = None
        batch.next_attempt_at = None
        batch.save(update_fields=["status", "erp_document_ref", "posted_at", "posting_claimed_until",
                                  "next_attempt_at"])
        audit.record(actor=actor, action="erp_batch.posted", object_type="erp_batch", object_id=batch.pk,
                     after={"erp_document_ref": result.erp_document_ref, "journals": batch.journal_count})
        _mark_batch_journals_posted(batch, result, connector.name, actor=actor)
    return PostOutcome(batch.pk, ErpBatch.Status.POSTED, result.erp_document_ref)


def _mark_batch_journals_posted(batch: ErpBatch, result: connectors.PostResult, connector_name: str, *,
                                actor) -> None:
    """Every member journal is posted by the batch's acknowledgement: set-based, so a batch of 500 costs
    a handful of statements rather than a dozen per journal."""
    journals = list(Journal.objects.select_for_update().filter(erp_batch=batch, status=Journal.Status.POSTING)
                    .only("pk", "event_id"))
    if not journals:
        return
    now = timezone.now()
    ids = [j.pk for j in journals]
    Journal.objects.filter(pk__in=ids).update(status=Journal.Status.POSTED, erp_document_ref=result.erp_document_ref,
                                              posted_at=now, posting_claimed_until=None, last_error="")
    PostingAttempt.objects.bulk_create([
        PostingAttempt(journal_id=pk, started_at=now, finished_at=now, connector=connector_name,
                       outcome=PostingAttempt.Outcome.POSTED, erp_document_ref=result.erp_document_ref,
                       message=f"in batch {batch.pk}") for pk in ids])
    Outbox.objects.filter(journal_id__in=ids, dispatched_at__isnull=True).update(dispatched_at=now)
    audit.record_many([{"actor": actor, "action": "journal.posted", "object_type": "journal", "object_id": j.pk,
                        "event_id": j.event_id, "before": {"status": "posting"},
                        "after": {"status": "posted", "erp_document_ref": result.erp_document_ref,
                                  "erp_batch": str(batch.pk)}} for j in journals])
    hooks.journals_posted.send(journals=journals, actor=actor)


def _batch_release(batch_id, exc, *, actor) -> None:
    """A batch's attempt failed: free it for its retry with the retry's due time in the same transaction (the
    sweep sends it when it is due, whatever became of this worker), or fail it: a permanent error at once, a
    transient one once TIEOUT_POSTING_MAX_RETRIES retries are spent."""
    with transaction.atomic():
        batch = ErpBatch.objects.select_for_update().get(pk=batch_id)
        if batch.status != ErpBatch.Status.POSTING:  # settled meanwhile (a duplicate delivery): nothing is due
            _scheduled(exc, None)
            return
        permanent = isinstance(exc, connectors.PermanentError)
        _release_for_retry(batch, exc, permanent=permanent)
        if permanent:
            _batch_fail(batch, exc.erp_message, actor=actor)
        elif batch.next_attempt_at is None:
            _batch_fail(batch, f"gave up after {batch.posting_retries} attempts: {exc.erp_message}", actor=actor)
        _scheduled(exc, batch.next_attempt_at)


def erp_batch_failed(*, batch_id, message: str, actor="system") -> None:
    """The batch could not be posted: it and its journals fail, each journal with its exception."""
    with transaction.atomic():
        batch = ErpBatch.objects.select_for_update().get(pk=batch_id)
        if batch.status in (ErpBatch.Status.POSTED, ErpBatch.Status.FAILED):
            return
        _batch_fail(batch, message, actor=actor)


def _batch_fail(batch: ErpBatch, message: str, *, actor) -> None:
    batch.status = ErpBatch.Status.FAILED
    batch.posting_claimed_until = None
    batch.next_attempt_at = None
    batch.last_error = message[:4000]
    batch.save(update_fields=["status", "posting_claimed_until", "next_attempt_at", "last_error"])
    audit.record(actor=actor, action="erp_batch.failed", object_type="erp_batch", object_id=batch.pk,
                 after={"error": message[:1000]})
    for journal in Journal.objects.select_for_update(of=("self",)).select_related("entity").filter(
            erp_batch=batch, status=Journal.Status.POSTING):
        _fail(journal, Codes.POSTING_FAILED, f"batch {batch.pk}: {message}", actor=actor)
