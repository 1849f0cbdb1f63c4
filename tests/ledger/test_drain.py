"""A drain (ledger.services.drain) run in this process against the ERPNext stand-in: many journals in flight, each
outcome recorded exactly as `journal_post` records it (attempts, audit entries, retry due times, exceptions),
a 429 pausing the shared bucket, an ambiguous answer looked up before sending again. The real-worker cases
(two processes, hostile ERP, SIGKILL) are tests/faults/test_concurrent_posting.py."""
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEntry
from exceptions_queue.models import ExceptionRecord
from ledger import connectors, services
from ledger.connectors.ratelimit import TokenBucket
from ledger.models import Journal, PostingAttempt
from ledger.services import outbox
from tests import factories as f
from tests.fixtures import erpnext_configure

pytestmark = pytest.mark.django_db


@pytest.fixture
def erp_entity(entity, erp):
    return erpnext_configure(entity, erp, read_timeout=0.5, connect_timeout=0.5)


@pytest.fixture
def journals(erp_entity, integration, monkeypatch):
    """Twelve ready invoice journals whose relay has not run (the drain finds them)."""
    monkeypatch.setattr(outbox, "outbox_relay", lambda ids: None)
    customer = f.customer()
    integration.send(customer)
    for n in range(12):
        integration.send(f.invoice(customer_id=customer["data"]["customer_id"], lines=[(f"{10 + n}.00", "0")]))
    return list(Journal.objects.filter(kind="invoice"))


def test_a_drain_posts_every_ready_journal_with_the_same_records_as_one_at_a_time(journals, erp, erp_entity,
                                                                                settings):
    settings.TIEOUT_POSTING_IN_FLIGHT = 4
    with CaptureQueriesContext(connection) as queries:
        result = services.posting_drain(entity_id=erp_entity.pk)
    print(f"\n[drain] {len(queries.captured_queries) / len(journals):.1f} queries per journal")
    assert result == {"posted": len(journals), "failed": 0}
    for journal in Journal.objects.filter(kind="invoice"):
        assert journal.status == Journal.Status.POSTED
        assert [e["name"] for e in erp.by_cheque(str(journal.pk))] == [journal.erp_document_ref]
        [attempt] = journal.attempts.all()
        assert attempt.outcome == PostingAttempt.Outcome.POSTED and attempt.erp_document_ref
        actions = list(AuditEntry.objects.filter(object_type="journal", object_id=str(journal.pk))
                       .order_by("pk").values_list("action", flat=True))
        assert actions[-2:] == ["journal.posting", "journal.posted"]
    assert not Journal.objects.filter(status__in=["ready", "posting"]).exists()


def test_a_429_pauses_the_bucket_and_the_journal_gets_its_retry_due_time(journals, erp, erp_entity, settings):
    settings.TIEOUT_POSTING_IN_FLIGHT = 1
    erp.retry_after = "30"
    erp.faults.add("none", 3)
    erp.faults.add("rate_limit")
    result = services.posting_drain(entity_id=erp_entity.pk)
    # Three posted, the fourth told to wait 30 s: the bucket is paused, so the drain stops claiming and hands over.
    assert result == {"posted": 3, "failed": 1}
    [limited] = Journal.objects.filter(posting_retries=1)
    assert limited.status == Journal.Status.READY and "429" in limited.last_error
    assert (limited.next_attempt_at - limited.attempts.get().finished_at).total_seconds() >= 29
    assert Journal.objects.filter(status=Journal.Status.READY).count() == len(journals) - 3
    erp_entity.refresh_from_db()
    granted, wait = TokenBucket.for_connector(connectors.get_connector(erp_entity)).take(1)
    assert granted == 0 and 25 < wait <= 30


def test_an_ambiguous_answer_is_looked_up_not_sent_again(journals, erp, erp_entity, settings):
    settings.TIEOUT_POSTING_IN_FLIGHT = 6
    settings.TIEOUT_POSTING_BACKOFF_CAP = 0  # the retry is due at once: the same drain takes it again
    erp.faults.add("commit_then_502")
    assert services.posting_drain(entity_id=erp_entity.pk) == {"posted": len(journals), "failed": 1}
    [ambiguous] = Journal.objects.filter(posting_retries=1)
    assert ambiguous.status == Journal.Status.POSTED
    assert len(erp.by_cheque(str(ambiguous.pk))) == 1
    assert sum(1 for method, _ in erp.requests if method == "POST") == len(journals)  # sent once each
    assert [a.outcome for a in ambiguous.attempts.order_by("started_at")] == [
        PostingAttempt.Outcome.AMBIGUOUS, PostingAttempt.Outcome.ALREADY_POSTED]


def test_a_permanent_refusal_opens_the_posting_exception(journals, erp, erp_entity):
    erp.fail_validation = "Account 1200 is frozen"
    result = services.posting_drain(entity_id=erp_entity.pk)
    assert result == {"posted": 0, "failed": len(journals)}
    for journal in Journal.objects.filter(kind="invoice"):
        assert journal.status == Journal.Status.FAILED
        assert ExceptionRecord.objects.get(journal=journal).code == "posting_failed"
