"""Odoo read-back against the stand-in, every test on both APIs (JSON-2 with Odoo 19's `formatted_read_group`,
JSON-RPC with `read_group`): journals posted through the real posting path come back as `ErpDocument`s with
their lines in our account codes (mapped by Odoo id or Odoo code), moves paged by id with their lines in one
call a page, incrementally by `write_date`; each finance-world case (an amount edited, a move cancelled,
deleted, a manual entry on the receivable account, a duplicate carrying our reference, a date moved) shows in
the documents and in the posted movements per account and month; rate limits are retried and counted,
exhausted retries raise `TransientError`, a refused key `PermanentError`.
"""
import datetime
from decimal import Decimal

import pytest

from ledger import connectors, services
from ledger.connectors.base import ErpDocument, ErpMovement
from ledger.models import Journal
from tests import factories as f
from tests.standins.odoo import OdooStandin

pytestmark = pytest.mark.django_db
NOV_1, NOV_30 = datetime.date(2026, 11, 1), datetime.date(2026, 11, 30)
UTC = datetime.UTC
APIS = ["json2", "jsonrpc"]


@pytest.fixture(params=APIS)
def api(request):
    return request.param


@pytest.fixture
def odoo(erp_standin):
    return erp_standin(OdooStandin, env={"TEST_ODOO_KEY": "odoo-key"}, slow_seconds=1.0)


def configure(entity, odoo, api, **settings):
    return services.entity_configure_erp(entity=entity, connector="odoo", actor="test", erp_settings={
        "url": odoo.url, "database": "tieout", "api": api, "token_env": "TEST_ODOO_KEY",
        "username": "integration@tieout.test", "read_timeout": 2, "connect_timeout": 1, **settings})


@pytest.fixture
def odoo_entity(entity, odoo, api):
    return configure(entity, odoo, api)


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
    return connector, list(connector.erp_documents(date_from=kwargs.pop("date_from", NOV_1),
                                                   date_to=kwargs.pop("date_to", NOV_30), **kwargs))


def movements(entity, accounts=("1200", "2200", "4000"), date_to=NOV_30):
    connector = connectors.get_connector(entity)
    return {(m.account, m.month): (m.debit, m.credit)
            for m in connector.account_movements(date_from=NOV_1, date_to=date_to, accounts=accounts)}


def calls(odoo, model, method):
    return [c for c in odoo.calls if c[1:] == (model, method)]


# ------------------------------------------------------------------------------------------------ reading
def test_posted_journals_come_back_with_their_lines_in_our_codes(odoo, odoo_entity, integration, api):
    journals = post_invoices(integration, 3)
    odoo.calls.clear()
    connector, docs = read(odoo_entity)
    assert [(d.ref, d.our_ref) for d in docs] == [(j.erp_document_ref, str(j.pk)) for j in journals]
    for doc, journal in zip(docs, journals, strict=True):
        assert doc.status == ErpDocument.Status.POSTED
        assert doc.posting_date == journal.accounting_date
        assert lines_of(doc.lines) == expected_lines(journal)
        assert doc.modified.tzinfo is not None
    # The accounts once, then one page of moves and their lines in one call (+ the JSON-RPC login).
    assert [c[1:] for c in odoo.calls] == [("account.account", "search_read"), ("account.move", "search_read"),
                                          ("account.move.line", "search_read")]
    assert connector.requests_made == (3 if api == "json2" else 4)


def test_moves_are_paged_by_id(odoo, entity, integration, api):
    odoo_entity = configure(entity, odoo, api, page_size=2)
    journals = post_invoices(integration, 5)
    odoo.calls.clear()
    _, docs = read(odoo_entity)
    assert [d.our_ref for d in docs] == [str(j.pk) for j in journals]
    assert all(lines_of(d.lines) == expected_lines(j) for d, j in zip(docs, journals, strict=True))
    assert len(calls(odoo, "account.move", "search_read")) == 3  # 2 + 2 + 1
    assert len(calls(odoo, "account.move.line", "search_read")) == 3


def test_incremental_reads_only_what_changed_since(odoo, odoo_entity, integration):
    odoo.clock = lambda: datetime.datetime(2026, 11, 2, 9, 0, 0)
    first, second = post_invoices(integration, 2)
    odoo.clock = lambda: datetime.datetime(2026, 11, 3, 9, 0, 0)
    move_id = odoo.by_ref(str(second.pk))[0]["id"]
    odoo.edit_amount(move_id, "1.00")
    _, docs = read(odoo_entity, modified_since=datetime.datetime(2026, 11, 3, 8, 0, tzinfo=UTC))
    assert [d.our_ref for d in docs] == [str(second.pk)]
    assert docs[0].modified == datetime.datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    assert len(read(odoo_entity, modified_since=datetime.datetime(2026, 11, 2, 9, 0, tzinfo=UTC))[1]) == 2


def test_one_document_by_its_number(odoo, odoo_entity, integration):
    [journal] = post_invoices(integration, 1)
    connector = connectors.get_connector(odoo_entity)
    doc = connector.erp_document(journal.erp_document_ref)
    assert doc.our_ref == str(journal.pk) and lines_of(doc.lines) == expected_lines(journal)
    assert connector.erp_document("MISC/2026/11/9999") is None
    draft = odoo.add_manual_entry(account="1200", amount="3.00", against="4000", state="draft")
    doc = connector.erp_document(f"id:{draft}")
    assert (doc.ref, doc.status, doc.our_ref) == (f"id:{draft}", ErpDocument.Status.DRAFT, "")


# ------------------------------------------------------------------------------------------------ the cases
def test_an_edited_amount_shows_in_the_lines_and_the_movements(odoo, odoo_entity, integration):
    [journal] = post_invoices(integration, 1)
    odoo.edit_amount(odoo.by_ref(str(journal.pk))[0]["id"], "10.00")
    [doc] = read(odoo_entity)[1]
    lines = {line.account: line for line in doc.lines}
    assert lines["1200"].debit == Decimal("117.25") and lines["4000"].credit == Decimal("110.00")
    assert movements(odoo_entity)[("1200", "2026-11")] == (Decimal("117.25"), Decimal("0.00"))


def test_a_cancelled_move_is_read_as_cancelled_and_leaves_the_movements(odoo, odoo_entity, integration):
    first, second = post_invoices(integration, 2)
    odoo.cancel(odoo.by_ref(str(second.pk))[0]["id"])
    docs = {d.our_ref: d.status for d in read(odoo_entity)[1]}
    assert docs == {str(first.pk): "posted", str(second.pk): "cancelled"}
    assert movements(odoo_entity)[("1200", "2026-11")] == (Decimal("107.25"), Decimal("0.00"))


def test_a_deleted_move_is_gone(odoo, odoo_entity, integration):
    first, second = post_invoices(integration, 2)
    odoo.delete(odoo.by_ref(str(second.pk))[0]["id"])
    assert [d.our_ref for d in read(odoo_entity)[1]] == [str(first.pk)]
    assert connectors.get_connector(odoo_entity).erp_document(second.erp_document_ref) is None
    assert movements(odoo_entity)[("1200", "2026-11")] == (Decimal("107.25"), Decimal("0.00"))


def test_one_connector_asks_for_the_accounts_once(odoo, odoo_entity, integration):
    """A reconciliation run reads through one connector: the listing, each look-up by reference and the movements
    share one read of the accounts."""
    journals = post_invoices(integration, 2)
    connector = connectors.get_connector(odoo_entity)
    before = len(calls(odoo, "account.account", "search_read"))
    assert len(list(connector.erp_documents(date_from=NOV_1, date_to=NOV_30))) == 2
    for journal in journals:
        assert connector.erp_document(journal.erp_document_ref).our_ref == str(journal.pk)
    assert list(connector.account_movements(date_from=NOV_1, date_to=NOV_30, accounts=["1200"]))
    assert len(calls(odoo, "account.account", "search_read")) - before == 1


def test_a_manual_entry_on_the_receivable_shows_only_in_the_movements(odoo, odoo_entity, integration):
    [journal] = post_invoices(integration, 1)
    odoo.add_manual_entry(account="1200", amount="50.00", against="4000", date="2026-11-15")
    odoo.add_manual_entry(account="1200", amount="9.00", against="4000", ref="BANK-REF-77")  # not ours
    odoo.add_manual_entry(account="1200", amount="4.00", against="4000", state="draft")  # not posted
    assert [d.our_ref for d in read(odoo_entity)[1]] == [str(journal.pk)]
    moved = movements(odoo_entity)
    assert moved[("1200", "2026-11")] == (Decimal("166.25"), Decimal("0.00"))
    assert moved[("4000", "2026-11")] == (Decimal("0.00"), Decimal("159.00"))


def test_a_duplicate_carrying_our_reference_comes_back_twice(odoo, odoo_entity, integration):
    [journal] = post_invoices(integration, 1)
    copy = odoo.duplicate(odoo.by_ref(str(journal.pk))[0]["id"])
    docs = read(odoo_entity)[1]
    assert [(d.ref, d.our_ref) for d in docs] == [(journal.erp_document_ref, str(journal.pk)),
                                                 (odoo.moves[copy]["name"], str(journal.pk))]
    assert movements(odoo_entity)[("1200", "2026-11")] == (Decimal("214.50"), Decimal("0.00"))


def test_a_moved_date_shows_in_the_document_and_the_month(odoo, odoo_entity, integration):
    [journal] = post_invoices(integration, 1)
    odoo.set_date(odoo.by_ref(str(journal.pk))[0]["id"], "2026-12-02")
    dec_31 = datetime.date(2026, 12, 31)
    [doc] = read(odoo_entity, date_to=dec_31)[1]
    assert doc.posting_date == datetime.date(2026, 12, 2)
    assert movements(odoo_entity, accounts=["1200"], date_to=dec_31) == \
        {("1200", "2026-12"): (Decimal("107.25"), Decimal("0.00"))}


def test_movements_group_per_account_and_month_in_one_call(odoo, odoo_entity, integration, api):
    post_invoices(integration, 3)
    odoo.add_manual_entry(account="1200", amount="1.00", against="4000", date="2026-10-31")
    odoo.calls.clear()
    connector = connectors.get_connector(odoo_entity)
    got = list(connector.account_movements(date_from=datetime.date(2026, 10, 1), date_to=NOV_30,
                                           accounts=["1200", "4000", "2200"]))
    assert got == [ErpMovement("1200", "2026-10", Decimal("1.00"), Decimal("0.00")),
                   ErpMovement("1200", "2026-11", Decimal("321.75"), Decimal("0.00")),
                   ErpMovement("2200", "2026-11", Decimal("0.00"), Decimal("21.75")),
                   ErpMovement("4000", "2026-10", Decimal("0.00"), Decimal("1.00")),
                   ErpMovement("4000", "2026-11", Decimal("0.00"), Decimal("300.00"))]
    grouping = "formatted_read_group" if api == "json2" else "read_group"
    assert [c[1:] for c in odoo.calls] == [("account.account", "search_read"), ("account.move.line", grouping)]


@pytest.mark.parametrize("mapping", ["id:150", "110200"])
def test_odoo_accounts_are_mapped_back_to_our_codes(odoo, odoo_entity, integration, mapping):
    odoo.accounts["110200"] = 150
    services.account_set_erp_name(entity=odoo_entity, account_code="1200", erp_account=mapping, actor="test")
    [journal] = post_invoices(integration, 1)
    odoo.accounts["999000"] = 999
    odoo.add_manual_entry(account="999000", amount="5.00", against="110200", ref=str(journal.pk))
    docs = read(odoo_entity)[1]
    assert lines_of(docs[0].lines) == expected_lines(journal)
    # An Odoo account we do not map keeps its Odoo code.
    assert {line.account for line in docs[1].lines} == {"999000", "1200"}
    assert movements(odoo_entity, accounts=["1200"]) == {("1200", "2026-11"): (Decimal("107.25"), Decimal("5.00"))}


# ------------------------------------------------------------------------------------------------ failures
def test_rate_limits_are_retried_and_counted(odoo, odoo_entity, integration, settings):
    post_invoices(integration, 2)
    settings.TIEOUT_READBACK_RETRY_AFTER_CAP = 5
    odoo.retry_after = "0.02"
    odoo.read_faults.add("rate_limit", 2)
    connector, docs = read(odoo_entity)
    assert len(docs) == 2 and connector.retries_made == 2
    assert connector.seconds_waited == pytest.approx(0.04)


def test_exhausted_retries_raise_transient(odoo, odoo_entity, integration, settings):
    post_invoices(integration, 1)
    settings.TIEOUT_READBACK_MAX_ATTEMPTS = 2
    odoo.read_faults.add("error_503", 2)
    connector = connectors.get_connector(odoo_entity)
    with pytest.raises(connectors.TransientError):
        list(connector.account_movements(date_from=NOV_1, date_to=NOV_30, accounts=["1200"]))
    assert connector.retries_made == 1


def test_a_refused_key_is_permanent_and_not_retried(odoo, odoo_entity, monkeypatch):
    monkeypatch.setenv("TEST_ODOO_KEY", "wrong")
    connector = connectors.get_connector(odoo_entity)
    with pytest.raises(connectors.PermanentError):
        list(connector.erp_documents(date_from=NOV_1, date_to=NOV_30))
    assert connector.requests_made == 1 and connector.retries_made == 0
