"""Posting retries keep their due time in the database (issue #13, item 2): a transient or ambiguous ERP failure
is recorded on the journal (or batch) with the retry count, the error and `next_attempt_at`, in the
transaction that records the failed attempt; the outbox sweep (the batch sweep for batches) sends what is
due and nobody holds, once per redispatch interval; a journal not yet due, or held, is left alone. The crash
case (a real worker SIGKILLed while it holds the retry's countdown) is tests/faults/test_retry_due_times.py.
"""
import datetime

import pytest
from django.utils import timezone

from audit.models import AuditEntry
from exceptions_queue import services as queue
from exceptions_queue.models import ExceptionRecord
from ledger import connectors, services
from ledger.models import ErpBatch, Journal, Outbox
from ledger.services import outbox, outcomes
from tests import factories as f
from tests.fixtures import erpnext_configure

pytestmark = pytest.mark.django_db
REAL_RELAY = outbox.outbox_relay
SECOND = datetime.timedelta(seconds=1)


@pytest.fixture
def erp_entity(entity, erp):
    return erpnext_configure(entity, erp, read_timeout=0.5, connect_timeout=0.5)


@pytest.fixture
def held_relay(monkeypatch):
    """The relay is held back: what the sweep queues is recorded (an outbox row) and goes nowhere (lost)."""
    monkeypatch.setattr(outbox, "outbox_relay", lambda ids: None)


@pytest.fixture
def journal(erp_entity, integration, held_relay):
    """A ready invoice journal whose posting task has not run."""
    customer = f.customer()
    integration.send(customer)
    integration.send(f.invoice(customer_id=customer["data"]["customer_id"]))
    return Journal.objects.get(kind="invoice")


def fail_once(journal, erp, fault="error_503"):
    """One real attempt against the stand-in that answers `fault`; the exception and when it was raised."""
    erp.faults.add(fault)
    before = timezone.now()
    with pytest.raises((connectors.TransientError, connectors.AmbiguousError)) as caught:
        services.journal_post(journal_id=journal.pk)
    journal.refresh_from_db()
    return caught.value, before


def make_due(journal, seconds_ago=60):
    """Move the failure back in time: its due time `seconds_ago`, its dispatch (the relay is held back here)
    before that."""
    due = timezone.now() - seconds_ago * SECOND
    Journal.objects.filter(pk=journal.pk).update(next_attempt_at=due)
    Outbox.objects.filter(journal=journal).update(created_at=due - 10 * SECOND, dispatched_at=due - 10 * SECOND)


def sweep(capture) -> int:
    with capture(execute=True):
        return services.outbox_sweep(older_than_seconds=30)


def new_outbox_rows(journal, since) -> int:
    return Outbox.objects.filter(journal=journal, created_at__gt=since).count()


# The failure is recorded with its due time ------------------------------------------------------------


def test_a_rate_limited_attempt_stores_the_retry_count_error_and_the_erps_retry_after(journal, erp):
    erp.retry_after = "7"
    exc, before = fail_once(journal, erp, "rate_limit")
    assert journal.status == Journal.Status.READY
    assert journal.posting_claimed_until is None
    assert (journal.posting_attempts, journal.posting_retries) == (1, 1)
    assert "429" in journal.last_error
    # Retry-After (7 s) wins over the first backoff (at most 1 s); the due time is the stored one.
    assert before + 7 * SECOND <= journal.next_attempt_at <= timezone.now() + 7 * SECOND
    assert exc.scheduled and exc.next_attempt_at == journal.next_attempt_at
    entry = AuditEntry.objects.filter(object_id=str(journal.pk), action="journal.attempt_failed").get()
    assert entry.after["status"] == "ready" and entry.after["outcome"] == "transient"
    assert entry.after["retries"] == 1
    assert datetime.datetime.fromisoformat(entry.after["next_attempt_at"]) == journal.next_attempt_at
    assert not ExceptionRecord.objects.exists()


def test_each_failure_in_a_row_counts_and_an_ambiguous_one_is_looked_up_when_due(journal, erp):
    fail_once(journal, erp, "error_503")
    first_due = journal.next_attempt_at
    exc, before = fail_once(journal, erp, "commit_then_502")
    assert isinstance(exc, connectors.AmbiguousError)
    assert journal.posting_retries == 2
    assert before <= journal.next_attempt_at <= timezone.now() + 2 * SECOND  # backoff: up to 2 ** 1 s
    assert journal.next_attempt_at != first_due
    services.journal_post(journal_id=journal.pk)
    journal.refresh_from_db()
    assert journal.status == Journal.Status.POSTED and journal.next_attempt_at is None
    assert len(erp.entries) == 1, "found by the look-up, not created twice"


def test_the_backoff_doubles_up_to_its_cap_and_retry_after_up_to_its_own(settings, monkeypatch):
    monkeypatch.setattr(outcomes.random, "uniform", lambda low, high: high)  # the jitter's ceiling
    settings.TIEOUT_POSTING_BACKOFF_CAP = 10
    settings.TIEOUT_POSTING_RETRY_AFTER_CAP = 30
    settings.TIEOUT_POSTING_MAX_RETRIES = 8

    def delay(failures, retry_after=None):
        due = outcomes._retry_due(failures, connectors.TransientError("x", retry_after=retry_after))
        return round((due - timezone.now()).total_seconds())

    assert [delay(n) for n in (1, 2, 3, 4, 5, 8)] == [1, 2, 4, 8, 10, 10]
    assert delay(1, retry_after=20) == 20
    assert delay(1, retry_after=600) == 30
    assert delay(5, retry_after=3) == 10
    assert outcomes._retry_due(9, connectors.TransientError("x")) is None  # the budget is spent


def test_retries_spent_fail_the_journal_in_the_same_transaction_and_a_retry_starts_afresh(
        journal, erp, settings, finance, monkeypatch):
    settings.TIEOUT_POSTING_MAX_RETRIES = 1
    fail_once(journal, erp)
    exc, _ = fail_once(journal, erp)
    assert exc.scheduled and exc.next_attempt_at is None
    assert journal.status == Journal.Status.FAILED
    assert journal.next_attempt_at is None and journal.posting_retries == 2
    [exception] = ExceptionRecord.objects.filter(journal=journal)
    assert exception.code == "posting_failed"
    assert exception.message == journal.last_error
    assert journal.last_error.startswith("gave up after 2 attempts: ") and "503" in journal.last_error
    actions = list(AuditEntry.objects.filter(object_id=str(journal.pk)).order_by("id").values_list("action", flat=True))
    assert actions[-2:] == ["journal.attempt_failed", "journal.failed"]

    monkeypatch.setattr(outbox, "outbox_relay", REAL_RELAY)
    assert finance.post(f"/api/v1/exceptions/{exception.pk}/retry").status_code == 200
    journal.refresh_from_db()
    assert journal.status == Journal.Status.POSTED
    assert journal.posting_retries == 0 and journal.next_attempt_at is None


def test_a_permanent_error_fails_at_once_with_no_due_time(journal, erp):
    erp.fail_validation = "Account 1200 is frozen"
    with pytest.raises(connectors.PermanentError) as caught:
        services.journal_post(journal_id=journal.pk)
    journal.refresh_from_db()
    assert journal.status == Journal.Status.FAILED
    assert journal.next_attempt_at is None and journal.posting_retries == 0
    assert caught.value.scheduled and caught.value.next_attempt_at is None
    [exception] = ExceptionRecord.objects.filter(journal=journal)
    assert exception.code == "posting_failed" and "Account 1200 is frozen" in exception.message
    services.journal_post_failed(journal_id=journal.pk, message=caught.value.erp_message)  # the task's call: no-op
    assert ExceptionRecord.objects.filter(journal=journal).count() == 1


# The sweep sends what is due, and nothing else -----------------------------------------------------------


def test_the_sweep_posts_a_journal_whose_retry_is_due(journal, erp, django_capture_on_commit_callbacks,
                                                     monkeypatch):
    fail_once(journal, erp)
    make_due(journal)
    monkeypatch.setattr(outbox, "outbox_relay", REAL_RELAY)
    assert sweep(django_capture_on_commit_callbacks) == 1
    journal.refresh_from_db()
    assert journal.status == Journal.Status.POSTED
    assert journal.next_attempt_at is None
    assert len(erp.entries) == 1
    assert list(journal.attempts.order_by("started_at").values_list("outcome", flat=True)) == ["transient", "posted"]
    assert sweep(django_capture_on_commit_callbacks) == 0


def test_the_sweep_leaves_a_journal_not_yet_due_even_when_its_dispatch_is_long_past(
        journal, erp, django_capture_on_commit_callbacks):
    erp.retry_after = "600"
    fail_once(journal, erp, "rate_limit")
    # Long-lived and dispatched long ago: the stale-message path must not send it before it is due either.
    long_ago = timezone.now() - datetime.timedelta(hours=1)
    Journal.objects.filter(pk=journal.pk).update(created_at=long_ago)
    Outbox.objects.filter(journal=journal).update(created_at=long_ago, dispatched_at=long_ago)
    since = timezone.now()
    assert sweep(django_capture_on_commit_callbacks) == 0
    assert new_outbox_rows(journal, since) == 0
    journal.refresh_from_db()
    assert journal.status == Journal.Status.READY and not erp.entries


def test_the_sweep_leaves_a_due_retry_to_its_countdown_for_the_grace(journal, erp, settings,
                                                                      django_capture_on_commit_callbacks):
    settings.TIEOUT_POSTING_DUE_GRACE_SECONDS = 5
    fail_once(journal, erp)
    make_due(journal, seconds_ago=1)
    since = timezone.now()
    assert sweep(django_capture_on_commit_callbacks) == 0
    make_due(journal, seconds_ago=6)
    assert sweep(django_capture_on_commit_callbacks) == 1
    assert new_outbox_rows(journal, since) == 1


def test_the_sweep_leaves_a_journal_that_a_live_lease_holds(journal, erp, django_capture_on_commit_callbacks):
    fail_once(journal, erp)
    make_due(journal)
    now = timezone.now()
    # A worker has claimed it (status posting, its lease running) ...
    Journal.objects.filter(pk=journal.pk).update(status=Journal.Status.POSTING, posting_claimed_until=now + 60 * SECOND)
    assert sweep(django_capture_on_commit_callbacks) == 0
    # ... or holds a lease on a ready row (defensive: only an expired lease lets the sweep take it).
    Journal.objects.filter(pk=journal.pk).update(status=Journal.Status.READY)
    assert sweep(django_capture_on_commit_callbacks) == 0
    assert new_outbox_rows(journal, now) == 0
    Journal.objects.filter(pk=journal.pk).update(posting_claimed_until=now - SECOND)
    assert sweep(django_capture_on_commit_callbacks) == 1


def test_a_due_journal_is_queued_once_and_again_only_when_its_message_was_lost(
        journal, erp, settings, django_capture_on_commit_callbacks):
    settings.TIEOUT_POSTING_REDISPATCH_SECONDS = 60
    fail_once(journal, erp)
    make_due(journal)
    since = timezone.now()
    assert sweep(django_capture_on_commit_callbacks) == 1
    assert sweep(django_capture_on_commit_callbacks) == 0, "still queued: a backlog is not multiplied by the sweep"
    assert new_outbox_rows(journal, since) == 1
    # The message was handed to the broker and lost: after the redispatch interval the journal goes again.
    lost_at = timezone.now() - 61 * SECOND
    Outbox.objects.filter(journal=journal, created_at__gt=since).update(created_at=lost_at, dispatched_at=lost_at)
    assert sweep(django_capture_on_commit_callbacks) == 1
    assert Outbox.objects.filter(journal=journal).count() == 3


# Batches ------------------------------------------------------------------------------------------------


@pytest.fixture
def batch(entity, erp, integration):
    """A closed, ready batch of two journals whose post task has not run."""
    erpnext_configure(entity, erp, posting_mode="batch")
    customer = f.customer()
    integration.send(customer)
    for amount in (100, 200):
        integration.send(f.invoice(customer_id=customer["data"]["customer_id"], lines=[(f"{amount}.00", "0")]))
    services.erp_batches_sweep(window_seconds=0)  # forms and closes; on-commit sends are not run
    return ErpBatch.objects.get()


def test_a_batchs_transient_failure_stores_its_due_time_and_the_sweep_sends_it_when_due(
        batch, erp, django_capture_on_commit_callbacks):
    erp.retry_after = "30"
    erp.faults.add("rate_limit")
    before = timezone.now()
    with pytest.raises(connectors.TransientError) as caught:
        services.erp_batch_post(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.status == ErpBatch.Status.READY and batch.posting_retries == 1
    assert before + 30 * SECOND <= batch.next_attempt_at <= timezone.now() + 30 * SECOND
    assert "429" in batch.last_error
    assert caught.value.scheduled and caught.value.next_attempt_at == batch.next_attempt_at

    with django_capture_on_commit_callbacks(execute=True):
        services.erp_batches_sweep(window_seconds=0)
    batch.refresh_from_db()
    assert batch.status == ErpBatch.Status.READY and not erp.entries, "not sent before it is due"

    ErpBatch.objects.filter(pk=batch.pk).update(next_attempt_at=timezone.now() - 60 * SECOND)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.erp_batches_sweep(window_seconds=0) == 1
    batch.refresh_from_db()
    assert batch.status == ErpBatch.Status.POSTED and batch.next_attempt_at is None
    assert len(erp.entries) == 1
    assert set(Journal.objects.values_list("status", flat=True)) == {"posted"}


def test_a_due_batch_is_sent_once_per_redispatch_interval_and_not_while_leased(batch, erp, settings,
                                                                               django_capture_on_commit_callbacks):
    settings.TIEOUT_POSTING_REDISPATCH_SECONDS = 60
    erp.faults.add("error_503")
    with pytest.raises(connectors.TransientError):
        services.erp_batch_post(batch_id=batch.pk)
    ErpBatch.objects.filter(pk=batch.pk).update(next_attempt_at=timezone.now() - 60 * SECOND)
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert services.erp_batches_sweep(window_seconds=0) == 1
    assert len(sent) == 1  # the send, held back: a lost message
    batch.refresh_from_db()
    assert batch.next_attempt_at > timezone.now() + 55 * SECOND, "its next send is one redispatch interval away"
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert services.erp_batches_sweep(window_seconds=0) == 0
    assert not sent
    # Claimed by a worker whose lease is running: left alone even once the redispatch time has come.
    ErpBatch.objects.filter(pk=batch.pk).update(status=ErpBatch.Status.POSTING, next_attempt_at=None,
                                                posting_claimed_until=timezone.now() + 60 * SECOND)
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert services.erp_batches_sweep(window_seconds=0) == 0
    ErpBatch.objects.filter(pk=batch.pk).update(posting_claimed_until=timezone.now() - SECOND)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.erp_batches_sweep(window_seconds=0) == 1
    batch.refresh_from_db()
    assert batch.status == ErpBatch.Status.POSTED
    assert len(erp.entries) == 1


def test_a_batch_whose_retries_are_spent_fails_with_every_journal(batch, erp, settings):
    settings.TIEOUT_POSTING_MAX_RETRIES = 0
    erp.faults.add("error_503")
    with pytest.raises(connectors.TransientError) as caught:
        services.erp_batch_post(batch_id=batch.pk)
    assert caught.value.scheduled and caught.value.next_attempt_at is None
    batch.refresh_from_db()
    assert batch.status == ErpBatch.Status.FAILED and batch.next_attempt_at is None
    assert batch.last_error.startswith("gave up after 1 attempts: ")
    assert set(Journal.objects.values_list("status", flat=True)) == {"failed"}
    assert ExceptionRecord.objects.filter(code="posting_failed").count() == 2
    assert AuditEntry.objects.filter(object_id=str(batch.pk), action="erp_batch.failed").count() == 1


def test_a_manual_retry_of_a_failed_journal_clears_its_schedule(journal, erp, settings):
    settings.TIEOUT_POSTING_MAX_RETRIES = 0
    fail_once(journal, erp)
    assert journal.status == Journal.Status.FAILED
    exception = ExceptionRecord.objects.get(journal=journal)
    queue.exception_retry(exception_id=exception.pk, actor="test")
    journal.refresh_from_db()
    assert journal.status == Journal.Status.READY
    assert (journal.posting_retries, journal.next_attempt_at, journal.deliveries_lost) == (0, None, 0)
