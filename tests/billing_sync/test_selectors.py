"""Billing-sync reads the portal's pages use: the invoices a person may see and find, an event's payload, and
what the period close reads of reconciliation (the latest full run covering a month, the open breaks in it)."""
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from billing_sync import selectors
from billing_sync.models import ReconciliationBreak
from config import correlation
from ledger import services as ledger
from ledger.models import Journal
from tests import factories as f
from tests.close_helpers import reconciled

pytestmark = pytest.mark.django_db


def _user(username: str):
    return get_user_model().objects.get(username=username)  # fresh: config.roles caches the scope per object


@pytest.fixture
def invoices(entity, integration, finance):
    """US01: an open invoice and a voided one; GB01: an open one. Their invoice ids, by letter."""
    with correlation.bound(None), transaction.atomic():
        ledger.entity_setup(code="GB01", currency="GBP", name="Tieout UK", actor="test")
    for code in ("US01", "GB01"):
        assert integration.send(f.customer(f"cus_{code}", entity=code)).status_code == 202
    sent = {
        "a": f.invoice("inv_sel_a", customer_id="cus_US01", number="SEL-A-100", issue_date="2026-11-01"),
        "b": f.invoice("inv_sel_b", customer_id="cus_US01", number="SEL-B-200", issue_date="2026-11-02"),
        "c": f.invoice("inv_sel_c", customer_id="cus_GB01", number="SEL-C-100", issue_date="2026-11-03",
                       currency="GBP", entity="GB01"),
    }
    for payload in sent.values():
        assert integration.send(payload).status_code == 202
    assert integration.send(f.invoice_voided("inv_sel_b")).status_code == 202
    return {letter: payload["data"]["invoice_id"] for letter, payload in sent.items()}


def _found(user, text: str) -> list[str]:
    return [i.invoice_id for i in selectors.invoices_search(user, text)]


def test_without_text_the_search_lists_the_open_invoices_newest_issued_first(invoices):
    assert selectors.invoices_for(_user("fiona-ops")).count() == 3
    assert _found(_user("fiona-ops"), "") == [invoices["c"], invoices["a"]]  # the voided one is left out


def test_the_search_matches_invoice_ids_and_numbers_whatever_their_status(invoices):
    fiona = _user("fiona-ops")
    assert _found(fiona, "inv_sel_a") == [invoices["a"]]  # the invoice id
    assert _found(fiona, "sel-b-200") == [invoices["b"]]  # the number, any case; voided invoices too
    assert _found(fiona, "100") == [invoices["c"], invoices["a"]]  # part of a number
    assert _found(fiona, "_sel_") == [invoices["c"], invoices["b"], invoices["a"]]  # part of an invoice id
    assert _found(fiona, "nothing-like-it") == []


def test_invoices_stay_inside_the_users_entities(invoices):
    with correlation.bound(None):
        ledger.entity_access_set(user=_user("fiona-ops"), entity_codes=["US01"], actor="test")
    fiona = _user("fiona-ops")
    assert _found(fiona, "100") == [invoices["a"]]
    assert _found(fiona, "") == [invoices["a"]]
    gb = selectors.invoice_by_identity(f.SOURCE, invoices["c"])
    us = selectors.invoice_by_identity(f.SOURCE, invoices["a"])
    assert selectors.invoice_for(fiona, gb.pk) is None
    assert selectors.invoice_for(fiona, us.pk) == us


def test_event_payload_is_what_was_sent(entity, integration):
    payload = f.customer("cus_payload")
    event_id = integration.send(payload).json()["id"]
    assert selectors.event_payload(event_id) == payload


# ------------------------------------------------------------------------------------ period close
def test_the_close_status_dates_each_open_break_and_finds_the_latest_full_run(entity, integration):
    """A break counts for the months its period, its journal or its document is dated in; one dated by
    nothing of its own counts for the range of the run that last saw it; resolved breaks never count."""
    assert integration.send(f.customer("cus_rc")).status_code == 202
    assert integration.send(f.invoice("inv_oct", customer_id="cus_rc", issue_date="2026-10-15")).status_code == 202
    october_journal = Journal.objects.get(document_id="inv_oct")
    earlier = reconciled(entity, 2026, 11, started_at=timezone.now() - timedelta(hours=1))
    run = reconciled(entity, 2026, 11, breaks=(
        {"code": "erp_balance_mismatch", "period": "2026-10", "account": "1200"},
        {"code": "missing_in_erp", "journal": october_journal},
        {"code": "journal_amount_mismatch", "document": f"invoice:{f.SOURCE}:inv_oct"},
        {"code": "ar_control_mismatch", "account": "1200"},  # entity-wide: the run covered November
        {"code": "missing_journal", "document": f"credit_note:{f.SOURCE}:cn_nowhere"},  # undated too
    ))
    ReconciliationBreak.objects.create(entity=entity, key="resolved", code="missing_in_erp", period="2026-10",
                                       status="resolved", resolved_at=timezone.now(), resolution="matched by run",
                                       opened_by_run=run, last_seen_run=run)
    status = selectors.reconciliation_close_status(entity=entity, months=[(2026, 9), (2026, 10), (2026, 11)])
    assert status[(2026, 9)] == {"run": None, "open_breaks": 0, "by_code": {}, "breaks": []}
    assert status[(2026, 10)]["run"] is None  # November's runs do not cover October
    assert status[(2026, 10)]["by_code"] == {"erp_balance_mismatch": 1, "missing_in_erp": 1,
                                             "journal_amount_mismatch": 1}
    assert status[(2026, 11)]["by_code"] == {"ar_control_mismatch": 1, "missing_journal": 1}
    assert status[(2026, 11)]["run"]["id"] == run.pk != earlier.pk  # the latest one
    assert [b["code"] for b in status[(2026, 10)]["breaks"]] == ["erp_balance_mismatch", "missing_in_erp",
                                                                  "journal_amount_mismatch"]
