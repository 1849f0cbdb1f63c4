"""The posting task when our own database fails under it (a restart, a dropped connection, a deadlock victim,
PostgreSQL's lock table full): nothing was recorded, so the task looks again itself, backing off, a bounded
number of times, rather than leave a ready journal to the sweep's ten-minute stale pass. The task's retry
policy (`_post_with_retries`) runs as a worker runs it: each delivery with its retry count, a retry asked for
is delivered again (its countdown recorded), and the journal is posted through the real services."""
from types import SimpleNamespace

import pytest
from django.db import OperationalError

from ledger import services, tasks
from ledger.models import Journal
from ledger.services import outbox
from tests import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def journal(entity, integration, monkeypatch):
    """A ready invoice journal of the built-in ledger whose posting has not run (the relay is held back)."""
    monkeypatch.setattr(outbox, "outbox_relay", lambda ids: None)
    customer = f.customer()
    integration.send(customer)
    integration.send(f.invoice(customer_id=customer["data"]["customer_id"]))
    journal = Journal.objects.get(kind="invoice")
    assert journal.status == Journal.Status.READY
    return journal


class Redelivered(Exception):
    pass


def _deliver(journal_id: str) -> list[float]:
    """Deliver `post_journal`'s work until it does not ask for a retry; the countdowns it asked for."""
    asked: list[float] = []

    def retry(*, exc, countdown):
        asked.append(countdown)
        return Redelivered()

    for retries in range(50):
        task = SimpleNamespace(request=SimpleNamespace(retries=retries), retry=retry)
        try:
            tasks._post_with_retries(task, lambda: services.journal_post(journal_id=journal_id),
                                     lambda message: services.journal_post_failed(journal_id=journal_id,
                                                                                   message=message),
                                     ref=f"journal:{journal_id}")
        except Redelivered:
            continue
        return asked
    raise AssertionError("still retrying after 50 deliveries")


def _failing(monkeypatch, times: int):
    real = services.journal_post
    calls = []

    def journal_post(**kwargs):
        calls.append(kwargs["journal_id"])
        if len(calls) <= times:
            raise OperationalError("out of shared memory")
        return real(**kwargs)

    monkeypatch.setattr(services, "journal_post", journal_post)
    return calls


def test_a_database_failure_is_retried_with_backoff_until_the_journal_posts(journal, monkeypatch):
    calls = _failing(monkeypatch, times=3)

    countdowns = _deliver(str(journal.pk))

    journal.refresh_from_db()
    assert journal.status == Journal.Status.POSTED
    assert journal.erp_document_ref.startswith("JE-US01-")
    assert len(calls) == 4
    assert countdowns == [1.0, 2.0, 4.0]


def test_a_database_that_stays_down_leaves_the_journal_ready_for_the_sweep(journal, monkeypatch, settings):
    settings.TIEOUT_POSTING_MAX_RETRIES = 3
    calls = _failing(monkeypatch, times=100)

    countdowns = _deliver(str(journal.pk))  # no error escapes: the sweep owns it now

    journal.refresh_from_db()
    assert journal.status == Journal.Status.READY
    assert journal.next_attempt_at is None
    assert len(calls) == 4
    assert countdowns == [1.0, 2.0, 4.0]
