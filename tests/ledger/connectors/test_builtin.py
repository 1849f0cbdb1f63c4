"""Gapless ERP document numbers from the built-in connector under concurrent posting.

`JE-{ENTITY}-{YYYY}-{NNNNNN}` comes from a row-locked counter inside the transaction that marks the
journal posted: many threads posting at once never share or skip a number, a journal posted twice at
the same moment is posted once, and a posting that rolls back gives its number back.

These tests commit for real (`transactional_db`) and post from several threads, each on its own
database connection (closed at the end of the thread).
"""
import datetime
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection, transaction

from ledger import services as ledger
from ledger.services import outbox, posting
from audit.models import AuditEntry
from ledger.models import DocumentSequence, Journal, Outbox, PostingAttempt

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 8


@pytest.fixture
def no_relay(monkeypatch):
    """Journals stay `ready`: the after-commit relay (which would post them eagerly) does nothing."""
    monkeypatch.setattr(outbox, "outbox_relay", lambda outbox_ids: None)


def _ready_journals(entity, count: int, *, day=datetime.date(2026, 11, 1)) -> list:
    ids = []
    with transaction.atomic():
        for index in range(count):
            amount = Decimal(100 + index)
            spec = ledger.JournalSpec(entity=entity, accounting_date=day, kind="manual", lines=[
                ledger.LineSpec(debit=amount, role="receivable", customer_id="cus_n", invoice_id=f"inv_{index}"),
                ledger.LineSpec(credit=amount, role="revenue", customer_id="cus_n", invoice_id=f"inv_{index}"),
            ], description=f"journal {index}")
            ids.append(ledger.journal_create(spec, actor="test").pk)
    assert Journal.objects.filter(pk__in=ids, status=Journal.Status.READY).count() == count
    return ids


def _run_in_threads(fn, items, threads=THREADS):
    """Call fn(item) for every item from `threads` threads released together; return results in order."""
    barrier = threading.Barrier(threads)
    lock = threading.Lock()
    queue = list(enumerate(items))
    results = [None] * len(items)
    errors = []

    def worker():
        try:
            barrier.wait(timeout=30)
            while True:
                with lock:
                    if not queue:
                        return
                    index, item = queue.pop(0)
                try:
                    results[index] = fn(item)
                except Exception as exc:  # noqa: BLE001 - reported to the test below
                    errors.append((item, exc))
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(worker) for _ in range(threads)]:
            future.result(timeout=120)
    return results, errors


def _last_number(entity, year=2026) -> int:
    return DocumentSequence.objects.filter(entity=entity, year=year).values_list("last_number", flat=True).first() or 0


def _expected(n: int, year=2026, code="US01") -> list[str]:
    return [f"JE-{code}-{year}-{number:06d}" for number in range(1, n + 1)]


def test_concurrent_posting_numbers_gaplessly(entity, no_relay):
    ids = _ready_journals(entity, 40)

    results, errors = _run_in_threads(lambda jid: ledger.journal_post(journal_id=jid, actor="test"), ids)

    assert errors == []
    assert all(r.status == Journal.Status.POSTED for r in results)
    refs = sorted(r.erp_document_ref for r in results)
    assert refs == _expected(40)
    stored = dict(Journal.objects.filter(pk__in=ids).values_list("pk", "erp_document_ref"))
    assert sorted(stored.values()) == _expected(40)
    assert {r.journal_id: r.erp_document_ref for r in results} == stored
    assert Journal.objects.filter(pk__in=ids, status=Journal.Status.POSTED, posted_at__isnull=False).count() == 40
    attempts = PostingAttempt.objects.filter(journal_id__in=ids)
    assert attempts.count() == 40
    assert set(attempts.values_list("outcome", flat=True)) == {PostingAttempt.Outcome.POSTED}
    assert _last_number(entity) == 40
    # Nothing is left for the relay: posting marks the journal's outbox row dispatched.
    assert not Outbox.objects.filter(journal_id__in=ids, dispatched_at__isnull=True).exists()


def test_sequences_are_per_year(entity, no_relay):
    ids_2026 = _ready_journals(entity, 6)
    ids_2027 = _ready_journals(entity, 6, day=datetime.date(2027, 1, 4))
    mixed = [j for pair in zip(ids_2026, ids_2027) for j in pair]

    results, errors = _run_in_threads(lambda jid: ledger.journal_post(journal_id=jid, actor="test"), mixed, threads=4)

    assert errors == []
    refs = dict(Journal.objects.filter(pk__in=mixed).values_list("pk", "erp_document_ref"))
    assert sorted(refs[j] for j in ids_2026) == _expected(6, 2026)
    assert sorted(refs[j] for j in ids_2027) == _expected(6, 2027)


def test_sequences_are_per_entity(entity, no_relay):
    other, _ = ledger.entity_setup(code="CA01", currency="CAD", actor="test")
    ids_us = _ready_journals(entity, 8)
    ids_ca = _ready_journals(other, 8)
    mixed = [j for pair in zip(ids_us, ids_ca) for j in pair]

    results, errors = _run_in_threads(lambda jid: ledger.journal_post(journal_id=jid, actor="test"), mixed, threads=4)

    assert errors == []
    refs = dict(Journal.objects.filter(pk__in=mixed).values_list("pk", "erp_document_ref"))
    assert sorted(refs[j] for j in ids_us) == _expected(8)
    assert sorted(refs[j] for j in ids_ca) == _expected(8, code="CA01")


def test_the_same_journal_posted_twice_at_once_posts_once(entity, no_relay):
    [journal_id] = _ready_journals(entity, 1)

    results, errors = _run_in_threads(lambda jid: ledger.journal_post(journal_id=jid, actor="test"),
                                      [journal_id, journal_id], threads=2)

    assert errors == []
    assert [r.erp_document_ref for r in results] == ["JE-US01-2026-000001"] * 2
    journal = Journal.objects.get(pk=journal_id)
    assert journal.status == Journal.Status.POSTED
    assert journal.erp_document_ref == "JE-US01-2026-000001"
    assert journal.posting_attempts == 1
    attempts = list(PostingAttempt.objects.filter(journal_id=journal_id).values_list("outcome", "erp_document_ref"))
    assert attempts == [(PostingAttempt.Outcome.POSTED, "JE-US01-2026-000001")]
    assert _last_number(entity) == 1


def test_many_deliveries_of_the_same_journals_post_each_once(entity, no_relay):
    ids = _ready_journals(entity, 10)

    results, errors = _run_in_threads(lambda jid: ledger.journal_post(journal_id=jid, actor="test"), ids * 4)

    assert errors == []
    assert sorted(Journal.objects.filter(pk__in=ids).values_list("erp_document_ref", flat=True)) == _expected(10)
    assert PostingAttempt.objects.filter(journal_id__in=ids).count() == 10
    assert _last_number(entity) == 10
    by_journal = {}
    for result in results:
        by_journal.setdefault(result.journal_id, set()).add(result.erp_document_ref)
    assert all(len(refs) == 1 for refs in by_journal.values())


class _Boom(Exception):
    pass


def test_a_rolled_back_posting_gives_its_number_back(entity, no_relay, monkeypatch):
    first, second = _ready_journals(entity, 2)
    real_mark_posted = posting._mark_posted

    def mark_then_fail(journal, result, connector_name, **kw):
        real_mark_posted(journal, result, connector_name, **kw)
        raise _Boom(f"crash after numbering {result.erp_document_ref}")

    monkeypatch.setattr(posting, "_mark_posted", mark_then_fail)
    with pytest.raises(_Boom, match="JE-US01-2026-000001"):
        ledger.journal_post(journal_id=first, actor="test")
    monkeypatch.setattr(posting, "_mark_posted", real_mark_posted)

    journal = Journal.objects.get(pk=first)
    assert journal.status == Journal.Status.READY
    assert journal.erp_document_ref is None
    assert not PostingAttempt.objects.filter(journal_id=first).exists()
    # The counter's row itself was created in the rolled-back transaction: no number was kept.
    assert _last_number(entity) == 0

    assert ledger.journal_post(journal_id=second, actor="test").erp_document_ref == "JE-US01-2026-000001"
    assert ledger.journal_post(journal_id=first, actor="test").erp_document_ref == "JE-US01-2026-000002"
    assert _last_number(entity) == 2


def test_a_posting_rolled_back_by_the_callers_transaction_gives_its_number_back(entity, no_relay):
    first, second = _ready_journals(entity, 2)
    with pytest.raises(_Boom):
        with transaction.atomic():
            assert ledger.journal_post(journal_id=first, actor="test").erp_document_ref == "JE-US01-2026-000001"
            raise _Boom
    assert Journal.objects.get(pk=first).erp_document_ref is None
    assert ledger.journal_post(journal_id=second, actor="test").erp_document_ref == "JE-US01-2026-000001"


def test_concurrent_posting_with_rollbacks_stays_gapless(entity, no_relay, monkeypatch):
    ids = _ready_journals(entity, 24)
    doomed = set(ids[::4])  # every fourth journal's first posting crashes after it took a number
    crashed = set()
    lock = threading.Lock()
    real_mark_posted = posting._mark_posted

    def sometimes_fail(journal, result, connector_name, **kw):
        real_mark_posted(journal, result, connector_name, **kw)
        with lock:
            crash = journal.pk in doomed and journal.pk not in crashed
            if crash:
                crashed.add(journal.pk)
        if crash:
            raise _Boom(str(journal.pk))

    monkeypatch.setattr(posting, "_mark_posted", sometimes_fail)

    def post_with_one_retry(journal_id):
        try:
            return ledger.journal_post(journal_id=journal_id, actor="test")
        except _Boom:
            return ledger.journal_post(journal_id=journal_id, actor="test")

    results, errors = _run_in_threads(post_with_one_retry, ids)

    assert errors == []
    assert crashed == doomed
    assert sorted(r.erp_document_ref for r in results) == _expected(24)
    assert sorted(Journal.objects.filter(pk__in=ids).values_list("erp_document_ref", flat=True)) == _expected(24)
    assert PostingAttempt.objects.filter(journal_id__in=ids).count() == 24
    assert _last_number(entity) == 24


# ----------------------------------------------------------------------- many at once (the relay's set-based path)

def test_many_at_once_number_in_creation_order_in_one_transaction(entity, no_relay):
    ids = _ready_journals(entity, 12)

    statuses = posting.journals_post_in_database(journal_ids=list(reversed(ids)), actor="test")

    assert statuses == {journal_id: Journal.Status.POSTED for journal_id in ids}
    refs = dict(Journal.objects.filter(pk__in=ids).values_list("pk", "erp_document_ref"))
    assert [refs[j] for j in ids] == _expected(12)  # creation order, whatever order they were handed over in
    assert Journal.objects.filter(pk__in=ids, status=Journal.Status.POSTED, posting_attempts=1,
                                  posted_at__isnull=False).count() == 12
    attempts = PostingAttempt.objects.filter(journal_id__in=ids)
    assert sorted(attempts.values_list("erp_document_ref", flat=True)) == _expected(12)
    assert set(attempts.values_list("outcome", "connector")) == {(PostingAttempt.Outcome.POSTED, "builtin")}
    posted = AuditEntry.objects.filter(action="journal.posted", object_id__in=[str(j) for j in ids])
    assert sorted(e.after["erp_document_ref"] for e in posted) == _expected(12)
    assert not Outbox.objects.filter(journal_id__in=ids, dispatched_at__isnull=True).exists()
    assert _last_number(entity) == 12


def test_overlapping_calls_and_single_posts_at_once_stay_gapless_and_post_each_once(entity, no_relay):
    ids = _ready_journals(entity, 40)
    slices = [ids[start:start + 10] for start in range(0, 40, 5)]  # every journal in two calls

    def post(work):
        if isinstance(work, list):
            return posting.journals_post_in_database(journal_ids=work, actor="test")
        return ledger.journal_post(journal_id=work, actor="test")

    results, errors = _run_in_threads(post, slices + ids[::3])

    assert errors == []
    assert sorted(Journal.objects.filter(pk__in=ids).values_list("erp_document_ref", flat=True)) == _expected(40)
    assert PostingAttempt.objects.filter(journal_id__in=ids).count() == 40
    assert AuditEntry.objects.filter(action="journal.posted", object_id__in=[str(j) for j in ids]).count() == 40
    assert _last_number(entity) == 40


def test_many_at_once_fail_a_closed_periods_journals_and_skip_what_is_not_ready(entity, no_relay):
    november = _ready_journals(entity, 3)
    december = _ready_journals(entity, 3, day=datetime.date(2026, 12, 1))
    ledger.period_set_status(entity=entity, year=2026, month=11, status="closed", actor="test")
    ledger.journal_post(journal_id=december[0], actor="test")  # posted already: left as it is

    statuses = posting.journals_post_in_database(journal_ids=november + december, actor="test")

    assert statuses == {**{j: Journal.Status.FAILED for j in november},
                        **{j: Journal.Status.POSTED for j in december[1:]}}
    assert set(Journal.objects.filter(pk__in=november).values_list("status", "last_error")) == {
        (Journal.Status.FAILED, "period 2026-11 of US01 is closed")}
    refs = dict(Journal.objects.filter(pk__in=december).values_list("pk", "erp_document_ref"))
    assert [refs[j] for j in december] == _expected(3)
    assert PostingAttempt.objects.filter(journal_id=december[0]).count() == 1


def test_many_at_once_rolled_back_give_their_numbers_back(entity, no_relay):
    ids = _ready_journals(entity, 5)
    with pytest.raises(_Boom):
        with transaction.atomic():
            posting.journals_post_in_database(journal_ids=ids[:3], actor="test")
            assert _last_number(entity) == 3
            raise _Boom
    assert _last_number(entity) == 0
    assert not Journal.objects.filter(pk__in=ids, erp_document_ref__isnull=False).exists()

    posting.journals_post_in_database(journal_ids=ids, actor="test")
    refs = dict(Journal.objects.filter(pk__in=ids).values_list("pk", "erp_document_ref"))
    assert [refs[j] for j in ids] == _expected(5)
