"""ERPNext read-back against the Frappe REST stand-in: journals posted through the real posting path come back
as `ErpDocument`s with their lines in our account codes, page by page (keyed by `name`, an entry cut by a page
boundary read again, one longer than a page read alone), incrementally by `modified`; each finance-world case
(an amount edited, an entry cancelled, deleted, a manual entry on the receivable account, a duplicate carrying
our reference, a posting date moved) shows in the documents and in the GL movements; rate limits are retried
honouring Retry-After (capped) and counted, exhausted retries raise `TransientError`, a refused token
`PermanentError`.
"""
import datetime
import json
from decimal import Decimal
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from django.db import transaction

from ledger import connectors, services
from ledger.connectors.base import ErpDocument, ErpLine, ErpMovement
from ledger.models import ErpBatch, Journal
from tests import factories as f
from tests.fixtures import ERPNEXT_TOKEN_ENV, erpnext_configure

pytestmark = pytest.mark.django_db
NOV_1, NOV_30 = datetime.date(2026, 11, 1), datetime.date(2026, 11, 30)
UTC = datetime.UTC
RECEIVABLE = "1200"


def configure(entity, erp, **settings):
    with transaction.atomic():
        return erpnext_configure(entity, erp, read_timeout=2, connect_timeout=1, **settings)


@pytest.fixture
def erp_entity(entity, erp):
    return configure(entity, erp)


def post_invoices(integration, count, **invoice):
    """`count` invoices sent through the API (processed and posted to the ERP inline); their journals."""
    customer = f.customer()
    integration.send(customer)
    for _ in range(count):
        response = integration.send(f.invoice(customer_id=customer["data"]["customer_id"], **invoice))
        assert response.status_code == 202, response.content
    journals = list(Journal.objects.filter(kind="invoice").order_by("erp_document_ref"))
    assert [j.status for j in journals] == ["posted"] * count
    return journals


def expected_lines(journal) -> list[tuple]:
    return lines_of([ErpLine(line.account.code, line.debit, line.credit) for line in journal.lines.all()])


def lines_of(lines) -> list[tuple]:
    return sorted((line.account, line.debit, line.credit) for line in lines)


def read(entity, **kwargs):
    connector = connectors.get_connector(entity)
    docs = list(connector.erp_documents(date_from=kwargs.pop("date_from", NOV_1),
                                        date_to=kwargs.pop("date_to", NOV_30), **kwargs))
    return connector, docs


def movements(entity, accounts=("1200", "2200", "4000")):
    connector = connectors.get_connector(entity)
    return {(m.account, m.month): (m.debit, m.credit)
            for m in connector.account_movements(date_from=NOV_1, date_to=NOV_30, accounts=accounts)}


def list_requests(erp, path="/api/resource/Journal Entry"):
    """The read-back list requests the stand-in received, as (filters, limit_page_length)."""
    out = []
    for method, raw in erp.requests:
        parts = urlsplit(raw)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if method == "GET" and unquote(parts.path) == path and "order_by" in query:
            out.append((json.loads(query["filters"]), int(query["limit_page_length"])))
    return out


# ------------------------------------------------------------------------------------------------ reading
def test_posted_journals_come_back_with_their_lines_in_our_codes(erp, erp_entity, integration):
    journals = post_invoices(integration, 3)
    connector, docs = read(erp_entity)
    assert [d.our_ref for d in docs] == [str(j.pk) for j in journals]
    for doc, journal in zip(docs, journals, strict=True):
        assert doc.ref == journal.erp_document_ref
        assert doc.status == ErpDocument.Status.POSTED
        assert doc.posting_date == journal.accounting_date
        assert lines_of(doc.lines) == expected_lines(journal)
        assert doc.modified is not None and doc.modified.tzinfo is not None
    # One page: the entries and their account rows in one request.
    assert connector.requests_made == 1
    [(filters, length)] = list_requests(erp)
    assert length == 500
    assert ["company", "=", "Tieout US"] in filters
    assert ["posting_date", "between", ["2026-11-01", "2026-11-30"]] in filters
    assert ["cheque_no", "is", "set"] in filters


def test_outside_the_date_range_nothing_comes_back(erp, erp_entity, integration):
    post_invoices(integration, 1)
    _, docs = read(erp_entity, date_from=datetime.date(2026, 12, 1), date_to=datetime.date(2026, 12, 31))
    assert docs == []


def test_pages_are_keyed_by_name_and_an_entry_cut_by_a_page_is_read_again(erp, entity, integration):
    # Invoice journals have 3 rows (receivable, revenue, tax): 4 rows a page cut the second entry in two.
    erp_entity = configure(entity, erp, page_size=4)
    journals = post_invoices(integration, 5)
    connector, docs = read(erp_entity)
    assert [d.our_ref for d in docs] == [str(j.pk) for j in journals]
    assert all(lines_of(d.lines) == expected_lines(j) for d, j in zip(docs, journals, strict=True))
    pages = list_requests(erp)
    assert len(pages) == connector.requests_made == 5
    names = [j.erp_document_ref for j in journals]
    # Each page after the first asks for names after the last entry it read whole.
    assert [next((flt[2] for flt in filters if flt[:2] == ["name", ">"]), None) for filters, _ in pages] == \
        [None, *names[:4]]


def test_an_entry_longer_than_a_page_is_read_on_its_own(erp, entity, integration):
    erp_entity = configure(entity, erp, page_size=2)
    journals = post_invoices(integration, 2, lines=[("100.00", "7.25"), ("40.00", "2.90")])  # 5 rows each
    connector, docs = read(erp_entity)
    assert [lines_of(d.lines) for d in docs] == [expected_lines(j) for j in journals]
    gets = [path for method, path in erp.requests if method == "GET" and "/Journal%20Entry/" in path]
    assert len(gets) == 2  # one GET .../{name} per long entry


def test_incremental_reads_only_what_changed_since(erp, erp_entity, integration):
    erp.clock = lambda: datetime.datetime(2026, 11, 2, 9, 0, 0)
    first, second = post_invoices(integration, 2)
    erp.clock = lambda: datetime.datetime(2026, 11, 3, 9, 0, 0)
    erp.edit_amount(second.erp_document_ref, "1.00")
    _, docs = read(erp_entity, modified_since=datetime.datetime(2026, 11, 3, 8, 0, tzinfo=UTC))
    assert [d.our_ref for d in docs] == [str(second.pk)]
    assert docs[0].modified == datetime.datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    _, docs = read(erp_entity, modified_since=datetime.datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    assert len(docs) == 2  # at or after


def test_the_sites_time_zone_converts_modified_both_ways(erp, entity, integration):
    erp_entity = configure(entity, erp, time_zone="America/New_York")
    erp.clock = lambda: datetime.datetime(2026, 11, 2, 9, 0, 0)  # the site's wall clock
    post_invoices(integration, 1)
    _, docs = read(erp_entity, modified_since=datetime.datetime(2026, 11, 2, 14, 0, tzinfo=UTC))
    assert [d.modified for d in docs] == [datetime.datetime(2026, 11, 2, 14, 0, tzinfo=UTC)]
    [(filters, _)] = list_requests(erp)
    assert ["modified", ">=", "2026-11-02 09:00:00"] in filters
    _, docs = read(erp_entity, modified_since=datetime.datetime(2026, 11, 2, 14, 0, 1, tzinfo=UTC))
    assert docs == []


def test_one_document_by_its_reference(erp, erp_entity, integration):
    [journal] = post_invoices(integration, 1)
    connector = connectors.get_connector(erp_entity)
    doc = connector.erp_document(journal.erp_document_ref)
    assert doc.our_ref == str(journal.pk) and lines_of(doc.lines) == expected_lines(journal)
    assert connector.erp_document("ACC-JV-2026-99999") is None


def test_a_batch_comes_back_as_one_document_carrying_the_batch_id(erp, entity, integration,
                                                                  django_capture_on_commit_callbacks):
    erp_entity = configure(entity, erp, posting_mode="batch")
    customer = f.customer()
    integration.send(customer)
    for amount in ("100.00", "101.00"):
        integration.send(f.invoice(customer_id=customer["data"]["customer_id"], lines=[(amount, "10.00")]))
    with django_capture_on_commit_callbacks(execute=True):
        services.erp_batches_sweep(window_seconds=0)
    batch = ErpBatch.objects.get(status="posted")
    [doc] = read(erp_entity)[1]
    assert (doc.ref, doc.our_ref, doc.status) == (batch.erp_document_ref, str(batch.pk), "posted")
    assert lines_of(doc.lines) == lines_of(ErpLine(line.account.code, line.debit, line.credit)
                                           for line in batch.lines.all())


# ------------------------------------------------------------------------------------------------ the cases
def test_an_edited_amount_shows_in_the_lines_and_the_movements(erp, erp_entity, integration):
    [journal] = post_invoices(integration, 1)
    before = movements(erp_entity)
    erp.edit_amount(journal.erp_document_ref, "10.00")
    [doc] = read(erp_entity)[1]
    lines = {line.account: line for line in doc.lines}
    assert lines[RECEIVABLE].debit == Decimal("117.25")  # first debit row
    assert lines["4000"].credit == Decimal("110.00")  # first credit row
    after = movements(erp_entity)
    assert after[(RECEIVABLE, "2026-11")] == (before[(RECEIVABLE, "2026-11")][0] + 10, Decimal("0.00"))


def test_a_cancelled_entry_is_read_as_cancelled_and_leaves_the_movements(erp, erp_entity, integration):
    first, second = post_invoices(integration, 2)
    erp.cancel(second.erp_document_ref)
    docs = {d.our_ref: d for d in read(erp_entity)[1]}
    assert docs[str(second.pk)].status == ErpDocument.Status.CANCELLED
    assert docs[str(first.pk)].status == ErpDocument.Status.POSTED
    assert movements(erp_entity)[(RECEIVABLE, "2026-11")] == (Decimal("107.25"), Decimal("0.00"))
    # ERPNext keeps the GL rows, flagged, and adds flagged reversals.
    cancelled = [g for g in erp.gl_entries if g["voucher_no"] == second.erp_document_ref]
    assert len(cancelled) == 6 and all(g["is_cancelled"] == 1 for g in cancelled)


def test_a_deleted_entry_is_gone(erp, erp_entity, integration):
    first, second = post_invoices(integration, 2)
    erp.delete(second.erp_document_ref)
    assert [d.our_ref for d in read(erp_entity)[1]] == [str(first.pk)]
    assert connectors.get_connector(erp_entity).erp_document(second.erp_document_ref) is None
    assert movements(erp_entity)[(RECEIVABLE, "2026-11")] == (Decimal("107.25"), Decimal("0.00"))


def test_a_manual_entry_on_the_receivable_shows_only_in_the_movements(erp, erp_entity, integration):
    [journal] = post_invoices(integration, 1)
    erp.add_manual_entry(account="1200", amount="50.00", against="4000", posting_date="2026-11-15")
    erp.add_manual_entry(account="1200", amount="9.00", against="4000", cheque_no="BANK-REF-77")  # not ours
    assert [d.our_ref for d in read(erp_entity)[1]] == [str(journal.pk)]
    moved = movements(erp_entity)
    assert moved[(RECEIVABLE, "2026-11")] == (Decimal("166.25"), Decimal("0.00"))
    assert moved[("4000", "2026-11")] == (Decimal("0.00"), Decimal("159.00"))


def test_a_duplicate_carrying_our_reference_comes_back_twice(erp, erp_entity, integration):
    [journal] = post_invoices(integration, 1)
    copy = erp.duplicate(journal.erp_document_ref)
    docs = read(erp_entity)[1]
    assert [(d.ref, d.our_ref) for d in docs] == [(journal.erp_document_ref, str(journal.pk)), (copy, str(journal.pk))]
    assert movements(erp_entity)[(RECEIVABLE, "2026-11")] == (Decimal("214.50"), Decimal("0.00"))


def test_a_moved_posting_date_shows_in_the_document_and_the_month(erp, erp_entity, integration):
    [journal] = post_invoices(integration, 1)
    erp.set_posting_date(journal.erp_document_ref, "2026-12-02")
    connector = connectors.get_connector(erp_entity)
    [doc] = connector.erp_documents(date_from=NOV_1, date_to=datetime.date(2026, 12, 31))
    assert doc.posting_date == datetime.date(2026, 12, 2)
    assert list(connector.account_movements(date_from=NOV_1, date_to=datetime.date(2026, 12, 31),
                                            accounts=[RECEIVABLE])) == \
        [ErpMovement(RECEIVABLE, "2026-12", Decimal("107.25"), Decimal("0.00"))]


def test_movements_are_summed_per_account_and_month_over_pages(erp, entity, integration):
    erp_entity = configure(entity, erp, page_size=2)
    post_invoices(integration, 3)
    erp.add_manual_entry(account="1200", amount="1.00", against="4000", posting_date="2026-10-31")
    connector = connectors.get_connector(erp_entity)
    got = list(connector.account_movements(date_from=datetime.date(2026, 10, 1), date_to=NOV_30,
                                           accounts=["1200", "4000", "2200"]))
    assert got == [ErpMovement("1200", "2026-10", Decimal("1.00"), Decimal("0.00")),
                   ErpMovement("1200", "2026-11", Decimal("321.75"), Decimal("0.00")),
                   ErpMovement("2200", "2026-11", Decimal("0.00"), Decimal("21.75")),
                   ErpMovement("4000", "2026-10", Decimal("0.00"), Decimal("1.00")),
                   ErpMovement("4000", "2026-11", Decimal("0.00"), Decimal("300.00"))]
    # 11 GL Entries, 2 a page: 5 full pages and a last one.
    gl_pages = list_requests(erp, "/api/resource/GL Entry")
    assert len(gl_pages) == connector.requests_made == 6
    assert ["is_cancelled", "=", 0] in gl_pages[0][0]
    assert ["account", "in", ["1200", "2200", "4000"]] in gl_pages[0][0]


def test_account_names_are_mapped_back_to_our_codes(erp, erp_entity, integration):
    erp.accounts |= {"Debtors - TUS", "Suspense - TUS"}
    services.account_set_erp_name(entity=erp_entity, account_code="1200", erp_account="Debtors - TUS", actor="test")
    [journal] = post_invoices(integration, 1)
    assert {r["account"] for r in erp.entries[journal.erp_document_ref]["accounts"]} >= {"Debtors - TUS"}
    erp.add_manual_entry(account="Suspense - TUS", amount="5.00", against="Debtors - TUS")
    [doc] = read(erp_entity)[1]
    assert lines_of(doc.lines) == expected_lines(journal)
    moved = movements(erp_entity, accounts=["1200"])
    assert moved == {(RECEIVABLE, "2026-11"): (Decimal("107.25"), Decimal("5.00"))}
    [(filters, _)] = list_requests(erp, "/api/resource/GL Entry")
    assert ["account", "in", ["Debtors - TUS"]] in filters
    # An ERP account we do not know keeps its ERP name.
    copy = erp.duplicate(journal.erp_document_ref)
    erp.entries[copy]["accounts"][0]["account"] = "Suspense - TUS"
    doc = connectors.get_connector(erp_entity).erp_document(copy)
    assert "Suspense - TUS" in {line.account for line in doc.lines}


# ------------------------------------------------------------------------------------------------ failures
def test_rate_limits_are_retried_honouring_retry_after_and_counted(erp, erp_entity, integration, settings):
    post_invoices(integration, 2)
    settings.TIEOUT_READBACK_RETRY_AFTER_CAP = 5
    erp.retry_after = "0.03"
    erp.read_faults.add("rate_limit", 2)
    connector, docs = read(erp_entity)
    assert len(docs) == 2
    assert connector.requests_made == 3 and connector.retries_made == 2
    assert connector.seconds_waited == pytest.approx(0.06)


def test_retry_after_is_capped(erp, erp_entity, integration, settings):
    post_invoices(integration, 1)
    settings.TIEOUT_READBACK_RETRY_AFTER_CAP = 0.02
    erp.retry_after = "3600"
    erp.read_faults.add("rate_limit")
    connector, docs = read(erp_entity)
    assert len(docs) == 1 and connector.seconds_waited == pytest.approx(0.02)


def test_exhausted_retries_raise_transient(erp, erp_entity, integration, settings):
    post_invoices(integration, 1)
    settings.TIEOUT_READBACK_MAX_ATTEMPTS = 3
    erp.read_faults.add("error_503", 3)
    connector = connectors.get_connector(erp_entity)
    with pytest.raises(connectors.TransientError) as caught:
        list(connector.erp_documents(date_from=NOV_1, date_to=NOV_30))
    assert "gave up after 3 attempts" in str(caught.value)
    assert connector.requests_made == 3 and connector.retries_made == 2
    # The next read, with the ERP answering again, works.
    assert len(list(connector.erp_documents(date_from=NOV_1, date_to=NOV_30))) == 1


def test_a_refused_token_is_permanent_and_not_retried(erp, erp_entity, monkeypatch):
    monkeypatch.setenv(ERPNEXT_TOKEN_ENV, "key:wrong")
    connector = connectors.get_connector(erp_entity)
    with pytest.raises(connectors.PermanentError) as caught:
        list(connector.account_movements(date_from=NOV_1, date_to=NOV_30, accounts=["1200"]))
    assert "Invalid token" in caught.value.erp_message
    assert connector.requests_made == 1 and connector.retries_made == 0


# ------------------------------------------------------------------------------------------------ the stand-in
def test_the_stand_in_refuses_what_frappe_refuses(erp, erp_entity, integration):
    [journal] = post_invoices(integration, 1)
    name = journal.erp_document_ref
    connector = connectors.get_connector(erp_entity)
    with pytest.raises(connectors.PermanentError) as caught:
        connector.request("PUT", f"/api/resource/Journal Entry/{name}", write=True, json={"posting_date": "2026-11-02"})
    assert "UpdateAfterSubmitError" in caught.value.erp_message
    with pytest.raises(connectors.PermanentError) as caught:
        connector.request("DELETE", f"/api/resource/Journal Entry/{name}", write=True)
    assert "Cancel it first" in caught.value.erp_message
    connector.request("POST", "/api/method/frappe.client.cancel", write=True,
                      json={"doctype": "Journal Entry", "name": name})
    assert erp.entries[name]["docstatus"] == 2
    connector.request("DELETE", f"/api/resource/Journal Entry/{name}", write=True)
    assert name not in erp.entries and not [g for g in erp.gl_entries if g["voucher_no"] == name]


def test_drafts_make_no_gl_entries_until_submitted(erp, erp_entity):
    name = erp.add_manual_entry(account="1200", amount="5.00", against="4000", docstatus=0)
    assert erp.gl_entries == []
    connector = connectors.get_connector(erp_entity)
    [doc] = [connector.erp_document(name)]
    assert doc.status == ErpDocument.Status.DRAFT and doc.our_ref == ""
    connector.request("PUT", f"/api/resource/Journal Entry/{name}", write=True, json={"docstatus": 1})
    assert {(g["account"], g["debit"], g["credit"]) for g in erp.gl_entries} == {("1200", 5.0, 0.0),
                                                                                ("4000", 0.0, 5.0)}
