"""Posting one journal to the ERP: claim it, ask the connector (looking up by our reference first when an
earlier attempt's outcome is unknown), mark it posted (announced through `ledger.hooks`), or record the failed
attempt with the due time of its retry (in the database, where the outbox sweep finds it) or the failure.
"""
import datetime
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q, prefetch_related_objects
from django.utils import timezone

from audit import services as audit
from config import correlation
from config.memo import memo_scope
from config.errors import Codes, TieoutError
from ledger import connectors, hooks
from ledger.models import Entity, Journal, Outbox, PostingAttempt
from ledger.services.batches import _batch_add
from ledger.services.outcomes import PostOutcome, _fail, _release_for_retry, _scheduled
from ledger.services.periods import period_is_closed


def journal_post(*, journal_id, actor="system") -> PostOutcome:
    """Post one journal through its entity's connector. Safe to run twice and after a crash.

    The built-in connector posts inside our own transaction. An external ERP is called outside any
    transaction, between a claim (status `posting`, a lease, an attempt row) and the acknowledgement.
    Once a journal has been attempted, every later attempt looks it up by our reference first: a
    crash or an ambiguous failure may have left it in the ERP, and it must never be created twice.
    (`ledger.services.drain` does the same for many journals at once: `journals_claim`, `_send`, `_settle`.)

    A *suspect* (a journal whose worker died while it was in flight: still `posting`, or with deliveries lost)
    is posted while no other suspect of its entity is (a session advisory lock, which PostgreSQL releases by
    itself when the holder's process dies): when a journal kills its worker, every journal in flight dies with
    it, and without this they would all come back together and die together again until they are all parked.
    One at a time, only the culprit keeps dying.
    """
    suspect_lock = []
    try:
        return _journal_post(journal_id, actor, suspect_lock)
    finally:
        for key in suspect_lock:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", [key])


def _journal_post(journal_id, actor, suspect_lock: list) -> PostOutcome:
    with transaction.atomic():
        journal = Journal.objects.select_for_update(of=("self",)).select_related("entity").filter(pk=journal_id).first()
        if journal is None:
            raise TieoutError(f"no journal {journal_id}", code=Codes.NOT_FOUND, status=404)
        if journal.status not in (Journal.Status.READY, Journal.Status.POSTING):  # failed: only a retry re-posts
            return PostOutcome(journal.pk, journal.status, journal.erp_document_ref)
        with correlation.bound(journal.correlation_id or None):
            if period_is_closed(journal.entity, journal.accounting_date):
                _fail(journal, Codes.PERIOD_CLOSED,
                      f"period {journal.accounting_date:%Y-%m} of {journal.entity.code} is closed", actor=actor)
                return PostOutcome(journal.pk, journal.status)
            connector = connectors.get_connector(journal.entity)
            if connector.in_database:
                result = connector.post_journal(journal)
                _mark_posted(journal, result, connector.name, actor=actor)
                return PostOutcome(journal.pk, Journal.Status.POSTED, result.erp_document_ref)
            if journal.entity.posting_mode == Entity.PostingMode.BATCH:
                if journal.erp_batch_id is None:
                    _batch_add(journal, actor=actor)
                return PostOutcome(journal.pk, journal.status)
            if journal.status == Journal.Status.POSTING or journal.deliveries_lost:
                key = f"tieout:posting-suspect:{journal.entity_id}"
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key])
                    if not cursor.fetchone()[0]:
                        raise connectors.TransientError(
                            "another journal of this entity whose worker died is being posted", retry_after=1.0)
                suspect_lock.append(key)
            attempt, look_up_first = _claim(journal, connector.name, actor=actor)
    with correlation.bound(journal.correlation_id or None):
        try:
            result = _send(connector, journal, look_up_first)
        except connectors.base.ConnectorError as exc:
            _release(journal.pk, attempt.pk, exc, actor=actor)
            raise
        return _settle(journal.pk, attempt.pk, result, connector.name, actor=actor)


def journals_post_in_database(*, journal_ids, actor="system") -> dict:
    """Post ready journals of in-database ledgers (the built-in one) many at once, in one transaction,
    set-based: what `journal_post` and `_mark_posted` do for one (a closed period fails the journal; the journal
    posted with its gapless number, an attempt row, its outbox row settled, a `journal.posted` audit entry with
    its correlation id, `ledger.hooks.journals_posted` once for all of them) in a statement or two per table.

    Numbers are taken per entity and year in creation order, after the journals are locked and checked, so the
    counter's row is held for the last statements and the commit, once per call rather than once per journal
    (two workers posting one entity queued on it for each other's whole posting). The audit entries carry the
    numbers, and the hooks' entries come after them as one at a time has them, so those follow the counter. Journals that are not `ready`
    (posted by another delivery, failed, still `posting` after a crash) or not of an in-database ledger are left
    to `journal_post`. Returns {journal id: status} for the journals it took."""
    ids = list(dict.fromkeys(journal_ids))
    if not ids:
        return {}
    with transaction.atomic(), memo_scope():  # the hooks' reference data (a source system's callback) read once
        journals = [j for j in Journal.objects.select_for_update(of=("self",)).select_related("entity")
                    .filter(pk__in=ids, status=Journal.Status.READY).order_by("created_at", "pk")
                    if connectors.connector_class(j.entity.erp_connector).in_database]
        statuses: dict = {}
        closed: dict = {}
        by_entity: dict = {}
        for journal in journals:
            month = (journal.entity_id, journal.accounting_date.year, journal.accounting_date.month)
            if month not in closed:
                closed[month] = period_is_closed(journal.entity, journal.accounting_date)
            if closed[month]:
                with correlation.bound(journal.correlation_id or None):
                    _fail(journal, Codes.PERIOD_CLOSED,
                          f"period {journal.accounting_date:%Y-%m} of {journal.entity.code} is closed", actor=actor)
                statuses[journal.pk] = journal.status
                continue
            by_entity.setdefault(journal.entity_id, []).append(journal)
        if not by_entity:
            return statuses
        results: dict = {}
        for group in by_entity.values():  # the counter as late as it can be: only the writes and hooks follow
            results.update(connectors.get_connector(group[0].entity).post_journals(group))
        now = timezone.now()
        marked = [j for group in by_entity.values() for j in group]
        entries = []
        for journal in marked:
            result = results[journal.pk]
            entries.append({"actor": actor, "action": "journal.posted", "object_type": "journal",
                            "object_id": journal.pk, "event_id": journal.event_id,
                            "correlation_id": journal.correlation_id or correlation.new_id(),
                            "before": {"status": journal.status},
                            "after": {"status": "posted", "erp_document_ref": result.erp_document_ref}})
            journal.status = Journal.Status.POSTED
            journal.erp_document_ref = result.erp_document_ref
            journal.posted_at = now
            journal.posting_claimed_until = None
            journal.next_attempt_at = None
            journal.posting_attempts += 1
            journal.last_error = ""
            statuses[journal.pk] = journal.status
        with connection.cursor() as cursor:
            cursor.execute("""
                UPDATE ledger_journal AS j
                   SET status = %s, erp_document_ref = v.ref, posted_at = %s, posting_claimed_until = NULL,
                       next_attempt_at = NULL, posting_attempts = j.posting_attempts + 1, last_error = ''
                  FROM unnest(%s::uuid[], %s::text[]) AS v(id, ref)
                 WHERE j.id = v.id""", [Journal.Status.POSTED, now, [j.pk for j in marked],
                                        [j.erp_document_ref for j in marked]])
        PostingAttempt.objects.bulk_create([
            PostingAttempt(journal=journal, started_at=now, finished_at=now, connector=journal.entity.erp_connector,
                           outcome=PostingAttempt.Outcome.ALREADY_POSTED if results[journal.pk].already_existed
                           else PostingAttempt.Outcome.POSTED, erp_document_ref=journal.erp_document_ref)
            for journal in marked])
        Outbox.objects.filter(journal__in=marked, dispatched_at__isnull=True).update(dispatched_at=now)
        audit.record_many(entries)
        hooks.journals_posted.send(journals=marked, actor=actor)
    return statuses


@dataclass
class Claim:
    """A journal claimed for posting (status `posting`, leased, its attempt row open), lines loaded."""

    journal: Journal
    attempt_id: int
    look_up_first: bool


def journals_claim(*, entity: Entity, connector_name: str, limit: int, actor="system") -> list[Claim]:
    """Claim up to `limit` of the entity's ready journals that are due and unleased, oldest first, in one
    transaction, set-based: what `_claim` does for one journal (status `posting`, a lease, the attempt count, an
    attempt row, a `journal.posting` audit entry with the journal's correlation id) in one statement per table;
    a closed period or a parked journal fails instead, a journal with an attempt still open goes through `_claim`.
    `SKIP LOCKED`: journals another poster or a sweep holds right now are left to it, so any number of claimers
    run at once without taking a journal twice. Only `ready` journals are taken: one still `posting` after its
    lease ran out (its worker died) goes through `journal_post` alone."""
    now = timezone.now()
    with transaction.atomic():
        journals = list(Journal.objects.select_for_update(skip_locked=True, of=("self",)).select_related("entity")
                        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now),
                                Q(posting_claimed_until__isnull=True) | Q(posting_claimed_until__lt=now),
                                entity=entity, status=Journal.Status.READY)
                        .order_by("created_at")[:limit])
        if not journals:
            return []
        # What the connector reads to build a document, loaded here: the posting threads touch no database.
        prefetch_related_objects(journals, "lines__account", "entity__mappings")
        attempted, open_attempts = set(), set()
        for journal_id, outcome in PostingAttempt.objects.filter(journal__in=journals).values_list("journal_id",
                                                                                                 "outcome"):
            attempted.add(journal_id)
            if outcome == PostingAttempt.Outcome.IN_PROGRESS:
                open_attempts.add(journal_id)
        closed: dict[tuple[int, int], bool] = {}
        claims, taken = [], []
        lease = now + datetime.timedelta(seconds=settings.TIEOUT_POSTING_LEASE_SECONDS)
        for journal in journals:
            with correlation.bound(journal.correlation_id or None):
                month = (journal.accounting_date.year, journal.accounting_date.month)
                if month not in closed:
                    closed[month] = period_is_closed(journal.entity, journal.accounting_date)
                if closed[month]:
                    _fail(journal, Codes.PERIOD_CLOSED,
                          f"period {journal.accounting_date:%Y-%m} of {journal.entity.code} is closed", actor=actor)
                    continue
                if journal.pk in open_attempts or journal.deliveries_lost >= settings.TIEOUT_POSTING_MAX_DELIVERIES:
                    try:  # the rare cases, as one journal: `_claim` closes the open attempt, or parks it
                        attempt, look_up_first = _claim(journal, connector_name, actor=actor)
                    except connectors.PermanentError as exc:
                        _fail(journal, Codes.POSTING_FAILED, exc.erp_message, actor=actor)
                        continue
                    claims.append(Claim(journal, attempt.pk, look_up_first))
                    continue
            journal.status = Journal.Status.POSTING
            journal.posting_claimed_until = lease
            journal.posting_attempts += 1
            journal.next_attempt_at = None
            taken.append(journal)
        if taken:
            # One plain UPDATE: every taken journal gets the same values (bulk_update's CASE per row and field
            # cost the drain a fifth of its CPU). The rows are locked above, so the increment matches the objects.
            Journal.objects.filter(pk__in=[journal.pk for journal in taken]).update(
                status=Journal.Status.POSTING, posting_claimed_until=lease,
                posting_attempts=F("posting_attempts") + 1, next_attempt_at=None)
            attempts = PostingAttempt.objects.bulk_create([
                PostingAttempt(journal=journal, started_at=now, connector=connector_name,
                               outcome=PostingAttempt.Outcome.IN_PROGRESS) for journal in taken])
            audit.record_many([{"actor": actor, "action": "journal.posting", "object_type": "journal",
                                "object_id": journal.pk, "event_id": journal.event_id,
                                "correlation_id": journal.correlation_id or correlation.new_id(),
                                "before": {"status": Journal.Status.READY},
                                "after": {"status": "posting", "attempt": journal.posting_attempts}}
                               for journal in taken])
            # Any earlier attempt may have reached the ERP (an ambiguous answer): look before sending.
            claims += [Claim(journal, attempt.pk, journal.pk in attempted) for journal, attempt in zip(taken, attempts)]
    return claims


def _send(connector, journal: Journal, look_up_first: bool, *, before_post=None) -> connectors.PostResult:
    """The ERP request(s) of one claimed journal, outside any transaction: the look-up first when an earlier
    attempt may have reached the ERP, then the post if the ERP does not have it (`before_post` runs first:
    the rate limiter's wait)."""
    result = connector.lookup(journal) if look_up_first else None
    if result is None:
        if before_post is not None:
            before_post()
        result = connector.post_journal(journal)
    return result


def _settle(journal_id, attempt_id, result: connectors.PostResult, connector_name: str, *, actor) -> PostOutcome:
    """The ERP has the journal: mark it posted in its own transaction (unless a duplicate delivery did)."""
    with transaction.atomic():
        journal = Journal.objects.select_for_update(of=("self",)).select_related("entity").get(pk=journal_id)
        if journal.status == Journal.Status.POSTED:
            return PostOutcome(journal.pk, journal.status, journal.erp_document_ref)
        with correlation.bound(journal.correlation_id or None):
            _mark_posted(journal, result, connector_name, actor=actor, attempt_id=attempt_id)
    return PostOutcome(journal.pk, Journal.Status.POSTED, result.erp_document_ref)


def journals_settle_posted(*, results: list[tuple[Claim, connectors.PostResult]], connector_name: str,
                           actor="system") -> int:
    """The ERP has these claimed journals: mark them posted in one transaction, set-based (what `_mark_posted`
    does for one: the journal, its attempt, its outbox row, a `journal.posted` audit entry with the journal's
    correlation id, `ledger.hooks.journals_posted` once for all of them). One already posted (a duplicate
    delivery) is left as it is. Returns how many it marked."""
    if not results:
        return 0
    with transaction.atomic():
        ids = [claim.journal.pk for claim, _ in results]
        journals = {j.pk: j for j in Journal.objects.select_for_update().filter(pk__in=ids).order_by("pk")
                    .exclude(status=Journal.Status.POSTED)}
        now = timezone.now()
        marked, attempts, entries = [], [], []
        for claim, result in results:
            journal = journals.get(claim.journal.pk)
            if journal is None:
                continue
            before = journal.status
            journal.status = Journal.Status.POSTED
            journal.erp_document_ref = result.erp_document_ref
            journal.posted_at = now
            journal.posting_claimed_until = None
            journal.next_attempt_at = None
            journal.last_error = ""
            marked.append(journal)
            attempts.append(PostingAttempt(
                pk=claim.attempt_id, finished_at=now, erp_document_ref=result.erp_document_ref,
                outcome=PostingAttempt.Outcome.ALREADY_POSTED if result.already_existed
                else PostingAttempt.Outcome.POSTED))
            entries.append({"actor": actor, "action": "journal.posted", "object_type": "journal",
                            "object_id": journal.pk, "event_id": journal.event_id,
                            "correlation_id": journal.correlation_id or correlation.new_id(),
                            "before": {"status": before},
                            "after": {"status": "posted", "erp_document_ref": result.erp_document_ref}})
        if not marked:
            return 0
        # One UPDATE each from arrays of the values (not bulk_update's CASE per row and field, which cost the
        # drain a fifth of its CPU).
        with connection.cursor() as cursor:
            cursor.execute("""
                UPDATE ledger_journal AS j
                   SET status = %s, erp_document_ref = v.ref, posted_at = %s, posting_claimed_until = NULL,
                       next_attempt_at = NULL, last_error = ''
                  FROM unnest(%s::uuid[], %s::text[]) AS v(id, ref)
                 WHERE j.id = v.id""", [Journal.Status.POSTED, now, [j.pk for j in marked],
                                        [j.erp_document_ref for j in marked]])
            cursor.execute("""
                UPDATE ledger_postingattempt AS a
                   SET finished_at = %s, outcome = v.outcome, erp_document_ref = v.ref
                  FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS v(id, outcome, ref)
                 WHERE a.id = v.id""", [now, [a.pk for a in attempts], [a.outcome for a in attempts],
                                        [a.erp_document_ref for a in attempts]])
        Outbox.objects.filter(journal__in=marked, dispatched_at__isnull=True).update(dispatched_at=now)
        audit.record_many(entries)
        hooks.journals_posted.send(journals=marked, actor=actor)
    return len(marked)


def _claim(journal: Journal, connector_name: str, *, actor) -> tuple[PostingAttempt, bool]:
    now = timezone.now()
    if journal.status == Journal.Status.POSTING and journal.posting_claimed_until and \
            journal.posting_claimed_until > now:
        wait = (journal.posting_claimed_until - now).total_seconds()
        raise connectors.TransientError("another worker is posting this journal", retry_after=wait)
    # An attempt still in progress was abandoned by a worker that died (SIGKILL, OOM, a crash in the
    # connector). Transient ERP failures are bounded by the task's retries; deaths are bounded here, so a
    # task that kills its worker every time is parked instead of looping.
    lost = journal.attempts.filter(outcome=PostingAttempt.Outcome.IN_PROGRESS).update(
        outcome=PostingAttempt.Outcome.ABANDONED, finished_at=now, message="the worker stopped before the ERP answered")
    if lost:
        journal.deliveries_lost += lost
        journal.save(update_fields=["deliveries_lost"])
    if journal.deliveries_lost >= settings.TIEOUT_POSTING_MAX_DELIVERIES:
        raise connectors.PermanentError(
            f"parked after {journal.deliveries_lost} deliveries whose worker died; last error: "
            f"{journal.last_error or 'none'}")
    # Any earlier attempt may have reached the ERP (a crash, an ambiguous answer): look before sending.
    look_up_first = journal.status == Journal.Status.POSTING or journal.attempts.exists()
    before = journal.status
    journal.status = Journal.Status.POSTING
    journal.posting_claimed_until = now + datetime.timedelta(seconds=settings.TIEOUT_POSTING_LEASE_SECONDS)
    journal.posting_attempts += 1
    journal.next_attempt_at = None  # the lease says who holds it now; the release sets the next due time
    journal.save(update_fields=["status", "posting_claimed_until", "posting_attempts", "next_attempt_at"])
    attempt = PostingAttempt.objects.create(journal=journal, started_at=now, connector=connector_name,
                                            outcome=PostingAttempt.Outcome.IN_PROGRESS)
    if before != Journal.Status.POSTING:
        audit.record(actor=actor, action="journal.posting", object_type="journal", object_id=journal.pk,
                     event_id=journal.event_id, before={"status": before},
                     after={"status": "posting", "attempt": journal.posting_attempts})
    return attempt, look_up_first


def _release(journal_id, attempt_id, exc, *, actor) -> None:
    """An attempt failed: record its outcome and free the journal for its retry, with the retry's due time in
    the same transaction (the outbox sweep sends it when it is due, whatever became of this worker), or fail
    it: a permanent error at once, a transient one once TIEOUT_POSTING_MAX_RETRIES retries are spent."""
    outcome = {connectors.TransientError: PostingAttempt.Outcome.TRANSIENT,
               connectors.AmbiguousError: PostingAttempt.Outcome.AMBIGUOUS}.get(type(exc),
                                                                                 PostingAttempt.Outcome.PERMANENT)
    with transaction.atomic():
        journal = Journal.objects.select_for_update().get(pk=journal_id)  # not the entity's row: posters run at once
        PostingAttempt.objects.filter(pk=attempt_id).update(finished_at=timezone.now(), outcome=outcome,
                                                            message=f"{exc}: {exc.erp_message}"[:4000])
        if journal.status != Journal.Status.POSTING:  # settled meanwhile (a duplicate delivery): nothing is due
            _scheduled(exc, None)
            return
        permanent = outcome == PostingAttempt.Outcome.PERMANENT
        _release_for_retry(journal, exc, permanent=permanent)
        after = {"status": "ready", "outcome": outcome, "error": exc.erp_message[:1000]}
        if journal.next_attempt_at:
            after.update(retries=journal.posting_retries, next_attempt_at=journal.next_attempt_at)
        audit.record(actor=actor, action="journal.attempt_failed", object_type="journal", object_id=journal.pk,
                     event_id=journal.event_id, before={"status": "posting"}, after=after)
        if permanent:
            _fail(journal, Codes.POSTING_FAILED, exc.erp_message, actor=actor)
        elif journal.next_attempt_at is None:
            _fail(journal, Codes.POSTING_FAILED,
                  f"gave up after {journal.posting_retries} attempts: {exc.erp_message}", actor=actor)
        _scheduled(exc, journal.next_attempt_at)


def _mark_posted(journal: Journal, result: connectors.PostResult, connector_name: str, *, actor,
                 attempt_id=None) -> None:
    now = timezone.now()
    before = journal.status
    journal.status = Journal.Status.POSTED
    journal.erp_document_ref = result.erp_document_ref
    journal.posted_at = now
    journal.posting_claimed_until = None
    journal.next_attempt_at = None
    if attempt_id is None:
        journal.posting_attempts += 1
    journal.last_error = ""
    journal.save(update_fields=["status", "erp_document_ref", "posted_at", "posting_attempts", "posting_claimed_until",
                                "next_attempt_at", "last_error"])
    outcome = PostingAttempt.Outcome.ALREADY_POSTED if result.already_existed else PostingAttempt.Outcome.POSTED
    if attempt_id is None:
        PostingAttempt.objects.create(journal=journal, started_at=now, finished_at=now, connector=connector_name,
                                      outcome=outcome, erp_document_ref=result.erp_document_ref)
    else:
        PostingAttempt.objects.filter(pk=attempt_id).update(finished_at=now, outcome=outcome,
                                                            erp_document_ref=result.erp_document_ref)
    Outbox.objects.filter(journal=journal, dispatched_at__isnull=True).update(dispatched_at=now)
    audit.record(actor=actor, action="journal.posted", object_type="journal", object_id=journal.pk,
                 event_id=journal.event_id, before={"status": before},
                 after={"status": "posted", "erp_document_ref": result.erp_document_ref})
    hooks.journals_posted.send(journals=[journal], actor=actor)


def journal_post_failed(*, journal_id, message: str, actor="system") -> None:
    """The posting task gave up (retries spent or a permanent ERP error): record it and open an exception."""
    with transaction.atomic():
        journal = Journal.objects.select_for_update(of=("self",)).select_related("entity").get(pk=journal_id)
        if journal.status in (Journal.Status.POSTED, Journal.Status.FAILED):
            return
        _fail(journal, Codes.POSTING_FAILED, message, actor=actor)
