"""Built-in ERP read-back: our own posted records through the same interface as an external ERP. Journals
posted alone come back as documents with their lines (paged by id, each page's lines in one query), posted
batches as one document each (their journals not again), incrementally by posting time; movements are posted
journal lines summed per account and month by PostgreSQL, without what is not posted."""
import datetime
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone

from ledger import connectors, services
from ledger.connectors import builtin
from ledger.connectors.base import ErpDocument, ErpMovement
from ledger.models import ErpBatch, Journal
from tests import factories as f
from tests.fixtures import erpnext_configure

pytestmark = pytest.mark.django_db
NOV_1, NOV_30 = datetime.date(2026, 11, 1), datetime.date(2026, 11, 30)


def post_invoices(integration, count, **invoice):
    customer = f.customer()
    integration.send(customer)
    for _ in range(count):
        assert integration.send(f.invoice(customer_id=customer["data"]["customer_id"], **invoice)).status_code == 202
    journals = list(Journal.objects.filter(kind="invoice").order_by("erp_document_ref"))
    assert [j.status for j in journals] == ["posted"] * count
    return journals


def lines_of(lines) -> list[tuple]:
    return sorted((line.account, line.debit, line.credit) for line in lines)


def expected_lines(journal) -> list[tuple]:
    return sorted((line.account.code, line.debit, line.credit) for line in journal.lines.all())


def read(entity, **kwargs):
    connector = connectors.get_connector(entity)
    return connector, list(connector.erp_documents(date_from=NOV_1, date_to=NOV_30, **kwargs))


def test_posted_journals_come_back_as_documents(entity, integration):
    journals = post_invoices(integration, 3)
    connector, docs = read(entity)
    assert sorted((d.ref, d.our_ref) for d in docs) == [(j.erp_document_ref, str(j.pk)) for j in journals]
    by_ref = {d.our_ref: d for d in docs}
    for journal in journals:
        doc = by_ref[str(journal.pk)]
        assert doc.status == ErpDocument.Status.POSTED and doc.posting_date == journal.accounting_date
        assert doc.modified == journal.posted_at
        assert lines_of(doc.lines) == expected_lines(journal)
    assert connector.requests_made == 3  # journals and their lines; the (empty) batches


def test_documents_are_paged_by_id(entity, integration, monkeypatch):
    monkeypatch.setattr(builtin, "PAGE_SIZE", 2)
    journals = post_invoices(integration, 5)
    connector, docs = read(entity)
    assert sorted(d.our_ref for d in docs) == sorted(str(j.pk) for j in journals)
    assert all(lines_of(d.lines) == expected_lines(j) for d, j in
               zip(sorted(docs, key=lambda d: d.our_ref), sorted(journals, key=lambda j: str(j.pk)), strict=True))
    assert connector.requests_made == 2 * 3 + 1  # three pages of journals with their lines; no batch


def test_incremental_reads_what_was_posted_since(entity, integration):
    post_invoices(integration, 2)
    since = timezone.now()
    customer = f.customer()
    integration.send(customer)
    integration.send(f.invoice(customer_id=customer["data"]["customer_id"]))
    latest = Journal.objects.filter(kind="invoice").order_by("-posted_at").first()
    _, docs = read(entity, modified_since=since)
    assert [d.our_ref for d in docs] == [str(latest.pk)]


def test_one_document_by_its_number(entity, integration):
    [journal] = post_invoices(integration, 1)
    connector = connectors.get_connector(entity)
    doc = connector.erp_document(journal.erp_document_ref)
    assert doc.our_ref == str(journal.pk) and lines_of(doc.lines) == expected_lines(journal)
    assert connector.erp_document("JE-US01-2026-999999") is None


def test_movements_are_posted_lines_per_account_and_month(entity, integration):
    post_invoices(integration, 2)
    post_invoices_on = f.invoice(customer_id="cus_dec", issue_date="2026-12-03", due_date="2026-12-31")
    integration.send(f.customer("cus_dec"))
    integration.send(post_invoices_on)
    with transaction.atomic():  # waiting for approval: not posted, not in the books
        services.journal_create(services.JournalSpec(entity=entity, accounting_date=NOV_1, kind="manual", lines=[
            services.LineSpec(debit=Decimal("9.00"), role="receivable"),
            services.LineSpec(credit=Decimal("9.00"), role="revenue")], needs_approval=True), actor="test")
    connector = connectors.get_connector(entity)
    got = list(connector.account_movements(date_from=NOV_1, date_to=datetime.date(2026, 12, 31),
                                           accounts=["1200", "4000"]))
    assert got == [ErpMovement("1200", "2026-11", Decimal("214.50"), Decimal("0")),
                   ErpMovement("1200", "2026-12", Decimal("107.25"), Decimal("0")),
                   ErpMovement("4000", "2026-11", Decimal("0"), Decimal("200.00")),
                   ErpMovement("4000", "2026-12", Decimal("0"), Decimal("100.00"))]
    assert connector.requests_made == 1


def test_a_posted_batch_is_one_document_and_its_journals_are_not_read_again(entity, erp, integration,
                                                                            django_capture_on_commit_callbacks):
    with transaction.atomic():
        erpnext_configure(entity, erp, posting_mode="batch")
    customer = f.customer()
    integration.send(customer)
    for amount in ("100.00", "101.00"):
        integration.send(f.invoice(customer_id=customer["data"]["customer_id"], lines=[(amount, "10.00")]))
    with django_capture_on_commit_callbacks(execute=True):
        services.erp_batches_sweep(window_seconds=0)
    batch = ErpBatch.objects.get(status="posted")
    # Back on the built-in ERP, which reads our records: the batch is one document.
    entity.refresh_from_db()
    services.entity_configure_erp(entity=entity, connector="builtin", erp_settings={}, actor="test")
    _, docs = read(entity)
    [doc] = docs
    assert (doc.ref, doc.our_ref) == (batch.erp_document_ref, str(batch.pk))
    assert lines_of(doc.lines) == [("1200", Decimal("221.00"), Decimal("0")),
                                   ("2200", Decimal("0"), Decimal("20.00")),
                                   ("4000", Decimal("0"), Decimal("201.00"))]
