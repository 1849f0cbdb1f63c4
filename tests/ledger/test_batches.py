"""Batch mode: journals of one entity and day travel to the ERP as one summarised document, each
journal keeping the link (and, once posted, the document reference); failures fail every member."""
from decimal import Decimal

import pytest

from exceptions_queue.models import ExceptionRecord
from ledger import connectors, services
from ledger.models import ErpBatch, Journal
from ledger.selectors import trial_balance
from tests import factories as f
from tests.fixtures import erpnext_configure

pytestmark = pytest.mark.django_db


@pytest.fixture
def batch_entity(entity, erp):
    """US01 posting to the ERPNext stand-in `erp` (tests/fixtures.py) in batch mode."""
    return erpnext_configure(entity, erp, posting_mode="batch")


def _send_invoices(integration, count=3):
    customer = f.customer()
    integration.send(customer)
    for amount in range(count):
        integration.send(f.invoice(customer_id=customer["data"]["customer_id"],
                                   lines=[(f"{100 + amount}.00", "10.00")]))


def test_journals_wait_ready_until_the_sweep_gathers_them(batch_entity, integration, erp):
    _send_invoices(integration)
    assert not ErpBatch.objects.exists()
    assert set(Journal.objects.values_list("status", flat=True)) == {"ready"}
    assert not erp.entries


def test_a_journal_handed_to_the_posting_task_joins_the_open_batch(batch_entity, integration, erp):
    """The per-journal path (a stale journal re-sent by the outbox sweep) still batches, never posts alone."""
    _send_invoices(integration, count=2)
    for journal in Journal.objects.all():
        services.journal_post(journal_id=journal.pk)
    batch = ErpBatch.objects.get()
    assert (batch.status, batch.journal_count) == ("open", 2)
    assert set(Journal.objects.values_list("status", flat=True)) == {"posting"}
    assert not erp.entries


def test_a_closed_batch_posts_one_summarised_document_for_all_its_journals(batch_entity, integration, erp,
                                                                           django_capture_on_commit_callbacks):
    _send_invoices(integration)
    with django_capture_on_commit_callbacks(execute=True):
        services.erp_batches_sweep(window_seconds=0)
    batch = ErpBatch.objects.get()
    assert batch.status == "posted"
    [entry] = erp.entries.values()
    assert entry["cheque_no"] == str(batch.pk)
    rows = {row["account"]: row for row in entry["accounts"]}
    assert Decimal(rows["1200"]["debit_in_account_currency"]) == Decimal("333.00")
    assert Decimal(rows["4000"]["credit_in_account_currency"]) == Decimal("303.00")
    assert Decimal(rows["2200"]["credit_in_account_currency"]) == Decimal("30.00")
    journals = Journal.objects.all()
    assert {j.status for j in journals} == {"posted"}
    assert {j.erp_document_ref for j in journals} == {batch.erp_document_ref}
    assert {j.erp_batch_id for j in journals} == {batch.pk}
    tb = trial_balance(entity=batch_entity)
    assert tb["total_debit"] == tb["total_credit"] == Decimal("333.00")
    for journal in journals:
        assert integration.event(journal.event_id)["status"] == "posted"


def test_batches_hold_at_most_the_configured_number_of_journals(batch_entity, integration, erp, settings,
                                                                django_capture_on_commit_callbacks):
    settings.TIEOUT_BATCH_MAX_JOURNALS = 2
    _send_invoices(integration, count=3)
    with django_capture_on_commit_callbacks(execute=True):
        services.erp_batches_sweep(window_seconds=0)
    assert sorted(ErpBatch.objects.values_list("status", "journal_count")) == [("posted", 1), ("posted", 2)]
    assert len(erp.entries) == 2
    assert set(Journal.objects.values_list("status", flat=True)) == {"posted"}


def test_a_refused_batch_fails_every_journal_and_a_retry_rebatches(batch_entity, integration, erp, finance,
                                                                   django_capture_on_commit_callbacks):
    _send_invoices(integration, count=2)
    erp.fail_validation = "Posting date is in a closed fiscal year"
    with django_capture_on_commit_callbacks(execute=True):
        services.erp_batches_sweep(window_seconds=0)
    assert ErpBatch.objects.get().status == "failed"
    assert set(Journal.objects.values_list("status", flat=True)) == {"failed"}
    exceptions = ExceptionRecord.objects.filter(code="posting_failed")
    assert exceptions.count() == 2
    assert "closed fiscal year" in exceptions[0].message
    erp.fail_validation = None
    for exc in exceptions:
        assert finance.post(f"/api/v1/exceptions/{exc.pk}/retry").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        services.erp_batches_sweep(window_seconds=0)
    assert set(Journal.objects.values_list("status", flat=True)) == {"posted"}
    assert ErpBatch.objects.filter(status="posted").count() == 1
    assert len(erp.entries) == 1
    assert not ExceptionRecord.objects.exclude(status="resolved").exists()


def test_an_ambiguous_batch_is_looked_up_not_sent_twice(batch_entity, integration, erp,
                                                        django_capture_on_commit_callbacks):
    _send_invoices(integration, count=2)
    services.erp_batches_sweep(window_seconds=0)  # closes; the post task is not run yet
    batch = ErpBatch.objects.get()
    erp.faults.add("commit_then_502")

    with pytest.raises(connectors.AmbiguousError):
        services.erp_batch_post(batch_id=batch.pk)
    services.erp_batch_post(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.status == "posted"
    assert len(erp.entries) == 1
