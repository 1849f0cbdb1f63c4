"""The transactional outbox: a ready journal gets its outbox row in the transaction that made it ready; after
commit the relay hands rows to the posting workers (or posts in-database ledgers inline), and the sweep re-
sends what a crash or a broker outage left behind, and every journal whose retry is due (its due time is kept
on the journal, so a worker that died holding the retry's countdown loses nothing).
"""
import contextlib
import datetime
import threading

import structlog
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from config import deferred
from ledger import connectors, tasks
from ledger.models import Entity, Journal, Outbox
from ledger.services.drain import concurrent_posting, posting_wake, posting_wake_due
from ledger.services.posting import journal_post, journals_post_in_database

log = structlog.get_logger("tieout.ledger")


# The outbox rows made inside `outbox_relay_batched` on this thread (Django's connections are per thread).
_batched = threading.local()


def _enqueue(journal: Journal) -> None:
    outbox = Outbox(journal=journal)
    deferred.insert(outbox)  # in a chunk, written with its others before commit (its pk is set then)
    collected = getattr(_batched, "rows", None)
    if collected is not None:
        collected.append(outbox)
        return
    # robust: a relay that fails (broker, database) is the sweep's to repair, and the callbacks after it (the
    # wake-ups of events queued behind this one) must still run.
    transaction.on_commit(lambda: outbox_relay(_written([outbox])), robust=True)


def _written(rows: list[Outbox]) -> list[int]:
    """The ids of the rows that were written: one deferred in a savepoint that rolled back never was."""
    return [row.pk for row in rows if row.pk is not None]


@contextlib.contextmanager
def outbox_relay_batched():
    """Inside a transaction: the journals made ready in the block are relayed together after commit, by one
    `outbox_relay` call rather than one per journal, so that an in-database ledger posts them in one
    transaction (`journals_post_in_database`). A row made in a savepoint that rolled back is in the list but
    not in the table (or, written behind, was never written): the relay finds nothing for it. Nested blocks
    join the outer one."""
    if getattr(_batched, "rows", None) is not None:
        yield
        return
    _batched.rows = []
    try:
        yield
    finally:
        rows, _batched.rows = _batched.rows, None
    if rows:
        transaction.on_commit(lambda: outbox_relay(_written(rows)), robust=True)


def outbox_relay(outbox_ids: list[int]) -> None:
    """Hand outbox rows to Celery (after commit). A crash before this line is repaired by the sweep.

    A ready journal of an external ERP in per-journal mode is not sent as a task of its own: its entity's
    doorbell is rung (`ledger.services.drain`), and a drain posts it with the others, many at once. A journal
    still `posting` (its worker died, its lease ran out) is sent alone to `post_journal`."""
    rows = (Outbox.objects.filter(pk__in=outbox_ids, dispatched_at__isnull=True)
            .values_list("pk", "journal_id", "journal__entity_id", "journal__entity__erp_connector",
                         "journal__entity__posting_mode", "journal__status"))
    rung: dict = {}  # entity id -> whether its doorbell was rung (once per relay, not once per row)
    rows = list(rows)
    posted = _post_in_database([(journal_id, connector_name, status) for _, journal_id, _, connector_name, _, status
                                in rows])
    for pk, journal_id, entity_id, connector_name, posting_mode, status in rows:
        if journal_id in posted:
            continue  # posted right here with the others, its outbox row settled in that transaction
        if posting_mode == Entity.PostingMode.BATCH and connector_name != "builtin":
            continue  # batch mode: the sweep gathers ready journals into batches (form_erp_batches)
        if connectors.connector_class(connector_name).in_database and not settings.CELERY_TASK_ALWAYS_EAGER:
            # The built-in ledger needs no network: post right here rather than pay a broker round trip
            # and a second task. Whatever goes wrong falls back to the queue (and the sweep).
            try:
                journal_post(journal_id=journal_id)
                Outbox.objects.filter(pk=pk, dispatched_at__isnull=True).update(
                    dispatched_at=timezone.now(), dispatch_count=F("dispatch_count") + 1)
                continue
            except Exception as exc:
                log.warning("outbox.inline_post_failed", outbox=pk, error=str(exc))
        try:
            if status == Journal.Status.READY and concurrent_posting(connector_name, posting_mode):
                if entity_id not in rung:
                    rung[entity_id] = False
                    posting_wake(entity_id)
                    rung[entity_id] = True
                elif not rung[entity_id]:
                    continue  # its doorbell could not be rung just now: the sweep tries again
            else:
                tasks.post_journal.apply_async(args=[str(journal_id)], queue="posting")
        except Exception as exc:  # broker down: the sweep re-sends; the API must not fail for it
            log.warning("outbox.relay_failed", outbox=pk, error=str(exc))
            continue
        Outbox.objects.filter(pk=pk, dispatched_at__isnull=True).update(
            dispatched_at=timezone.now(), dispatch_count=F("dispatch_count") + 1)


def _post_in_database(rows) -> set:
    """The relayed ready journals of in-database ledgers, posted together (`journals_post_in_database`: one
    transaction, the gapless counter taken once); the ids it settled. Whatever goes wrong, each journal goes
    the one-at-a-time way below (and the queue, and the sweep)."""
    ids = [journal_id for journal_id, connector_name, status in rows
           if status == Journal.Status.READY and connectors.connector_class(connector_name).in_database]
    if len(ids) < 2:
        return set()
    try:
        return set(journals_post_in_database(journal_ids=ids))
    except Exception as exc:
        log.warning("outbox.inline_post_many_failed", journals=len(ids), error=str(exc))
        return set()


def outbox_sweep(*, older_than_seconds: int) -> int:
    """Re-send what is due and nobody holds: outbox rows never dispatched (crash between commit and enqueue,
    broker outage), journals whose retry is due, journals whose worker died while it held them, and journals
    still ready long after their dispatch (a lost message). Returns how many journals it sent, plus the drains it
woke."""
    now = timezone.now()
    cutoff = now - datetime.timedelta(seconds=older_than_seconds)
    ids = list(Outbox.objects.filter(dispatched_at__isnull=True, created_at__lte=cutoff)
               .order_by("created_at").values_list("pk", flat=True)[:1000])
    if ids:
        outbox_relay(ids)
    due = _send_due(now)
    woken = posting_wake_due()  # drains that died with their doorbell rung, or whose message was lost
    # A worker died while it held a journal (SIGKILL, OOM): once the lease is over, post it again;
    # journal_post looks it up in the ERP first, so an entry the ERP already took is not sent twice.
    expired = list(Journal.objects.filter(status=Journal.Status.POSTING, posting_claimed_until__lt=now)
                   .values_list("pk", flat=True)[:1000])
    for journal_id in expired:
        with transaction.atomic():
            journal = Journal.objects.select_for_update().get(pk=journal_id)
            if journal.status == Journal.Status.POSTING and journal.posting_claimed_until < timezone.now():
                _enqueue(journal)
    # Journals still ready long after dispatch (a lost message) get a fresh outbox row. One waiting for a
    # retry is the due-time path's (above), not this one's: it is not sent before it is due.
    stale = (Journal.objects.filter(status=Journal.Status.READY, next_attempt_at__isnull=True,
                                    created_at__lte=cutoff - datetime.timedelta(minutes=10))
             .exclude(outbox__dispatched_at__gte=cutoff - datetime.timedelta(minutes=10))
             .values_list("pk", flat=True)[:1000])
    for journal_id in stale:
        with transaction.atomic():
            journal = Journal.objects.select_for_update().get(pk=journal_id)
            if journal.status == Journal.Status.READY:
                _enqueue(journal)
    return len(ids) + due + woken


def _send_due(now) -> int:
    """Ready journals whose retry is due and that no live lease holds get a fresh outbox row, relayed after commit.

    The retry's own countdown (the posting task's fast path) gets TIEOUT_POSTING_DUE_GRACE_SECONDS first. A
    journal is sent again only when nothing was queued for it since it fell due, or what was queued has waited
    TIEOUT_POSTING_REDISPATCH_SECONDS (its message was lost): a backlog is not multiplied by every sweep.
    Sending twice is harmless (the claim, its lease and the look-up before sending), only wasteful.
    """
    grace = datetime.timedelta(seconds=settings.TIEOUT_POSTING_DUE_GRACE_SECONDS)
    redispatch = datetime.timedelta(seconds=settings.TIEOUT_POSTING_REDISPATCH_SECONDS)
    queued = Outbox.objects.filter(journal=OuterRef("pk"), created_at__gte=OuterRef("next_attempt_at"),
                                   created_at__gt=now - redispatch)
    with transaction.atomic():
        # SKIP LOCKED: a journal being claimed right now is that worker's; two sweeps never take the same one.
        due = list(Journal.objects.select_for_update(skip_locked=True)
                   .filter(Q(posting_claimed_until__isnull=True) | Q(posting_claimed_until__lt=now),
                           status=Journal.Status.READY, next_attempt_at__lte=now - grace)
                   .exclude(Exists(queued))
                   .order_by("next_attempt_at").values_list("pk", flat=True)[:1000])
        if due:
            rows = Outbox.objects.bulk_create([Outbox(journal_id=pk, created_at=now) for pk in due])
            transaction.on_commit(lambda: outbox_relay([row.pk for row in rows]))
            log.info("outbox.retries_due", journals=len(due))
    return len(due)
