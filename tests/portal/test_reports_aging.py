"""AR aging and unapplied-cash aging through GET /api/v1/reports/ar-aging and /unapplied-cash, on histories sent
through the API: the bucket edges (due today is current; 1, 30 | 31, 60 | 61, 90 | 91 days past due), the open
amount as of a past date (a payment dated after it does not reduce it; an invoice issued after it is not there),
the tie to the receivable account and the difference a manual journal on it makes (and one naming an invoice
billing does not know), unapplied cash by days since receipt, applied and refunded later, tied to 2300."""
import datetime
from decimal import Decimal

import pytest
from django.db import transaction

from billing_sync import selectors as billing_selectors
from config import correlation
from ledger import services as ledger
from ledger.rules import R
from ledger.services import JournalSpec, LineSpec
from tests.portal import report_history as h

pytestmark = pytest.mark.django_db

AS_OF = datetime.date(2026, 11, 30)
AR = "/api/v1/reports/ar-aging"
UNAPPLIED = "/api/v1/reports/unapplied-cash"


@pytest.fixture
def run(django_capture_on_commit_callbacks):
    def call(fn, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(**kwargs)
    return call


def _days(n: int) -> str:
    return (AS_OF - datetime.timedelta(days=n)).isoformat()


def _aging(api, path=AR, **params):
    response = api.get(path, entity="US01", **params)
    assert response.status_code == 200, response.content
    return response.json()


# Days past due at AS_OF -> an amount that says which invoice it is (powers of two never sum alike).
EDGES = {-10: "1.00", 0: "2.00", 1: "4.00", 30: "8.00", 31: "16.00", 60: "32.00", 61: "64.00", 90: "128.00",
         91: "256.00"}


@pytest.mark.parametrize("days,bucket", [(-10, "current"), (0, "current"), (1, "1-30"), (30, "1-30"),
                                         (31, "31-60"), (60, "31-60"), (61, "61-90"), (90, "61-90"), (91, "90+"),
                                         (400, "90+")])
def test_bucket_of_an_age(days, bucket):
    assert billing_selectors.aging_bucket(days) == bucket


def test_buckets_at_each_edge(entity, integration, finance):
    h.customer(integration, "cus_edges", name="Edge Ltd")
    for days, amount in EDGES.items():
        h.invoice(integration, f"inv_due_{days}", "cus_edges", amount, issued=_days(days + 30), due=_days(days))
    body = _aging(finance, as_of=AS_OF.isoformat())
    assert body["buckets"] == {"current": "3.00", "1-30": "12.00", "31-60": "48.00", "61-90": "192.00",
                               "90+": "256.00"}
    assert body["total"] == body["ar_control_balance"] == "511.00"
    assert body["ties_out"] is True and body["difference"] == "0.00"
    assert body["customers"] == [{"id": "cus_edges", "source_system": "billing-prod", "name": "Edge Ltd",
                                  "buckets": body["buckets"], "total": "511.00"}]
    # One day later every invoice is a day older: due today moves to 1-30, 30 to 31-60, 90 to 90+.
    later = _aging(finance, as_of=(AS_OF + datetime.timedelta(days=1)).isoformat())
    assert later["buckets"] == {"current": "1.00", "1-30": "6.00", "31-60": "24.00", "61-90": "96.00",
                                "90+": "384.00"}
    invoices = {i["invoice_id"]: (i["days_past_due"], i["bucket"])
                for i in billing_selectors.ar_aging_invoices(entity=entity, as_of=AS_OF)}
    assert invoices == {f"inv_due_{d}": (d, billing_selectors.aging_bucket(d)) for d in EDGES}


def test_as_of_in_the_past_counts_only_what_was_posted_by_then(entity, integration, finance):
    h.customer(integration, "cus_past")
    h.invoice(integration, "inv_old", "cus_past", "100.00", issued="2026-10-01", due="2026-10-31")
    h.invoice(integration, "inv_new", "cus_past", "40.00", issued="2026-11-20", due="2026-12-20")
    h.payment(integration, "pay_late", "cus_past", "60.00", on="2026-11-15", allocations=[("inv_old", "60.00")])
    h.credit_note(integration, "inv_old", "10.00", on="2026-11-25")

    before_issue = _aging(finance, as_of="2026-09-30")
    assert (before_issue["total"], before_issue["customers"], before_issue["ties_out"]) == ("0.00", [], True)
    on_the_10th = _aging(finance, as_of="2026-11-10")  # the payment of the 15th does not reduce it
    assert on_the_10th["buckets"]["1-30"] == "100.00" and on_the_10th["total"] == "100.00"
    assert on_the_10th["ar_control_balance"] == "100.00" and on_the_10th["ties_out"]
    on_the_20th = _aging(finance, as_of="2026-11-20")  # paid 60 on the 15th; inv_new issued today, not due
    assert on_the_20th["buckets"] == {"current": "40.00", "1-30": "40.00", "31-60": "0.00", "61-90": "0.00",
                                      "90+": "0.00"}
    at_month_end = _aging(finance, as_of="2026-11-30")  # the credit note of the 25th
    assert at_month_end["buckets"]["1-30"] == "30.00" and at_month_end["total"] == "70.00"
    assert at_month_end["ties_out"]
    # Today (no as_of) sees everything posted: the same as the month end here.
    assert _aging(finance)["total"] == "70.00"


def test_a_manual_journal_on_the_receivable_account_breaks_the_tie(entity, integration, finance, controller, run):
    h.customer(integration, "cus_tie")
    h.invoice(integration, "inv_tie", "cus_tie", "500.00", issued="2026-11-01", due="2026-12-01")
    h.manual_journal(run, controller, entity=entity, on=datetime.date(2026, 11, 20),
                     lines=[("1200", "75.50", "", "booked straight to AR"), ("4000", "", "75.50", "")])
    before = _aging(finance, as_of="2026-11-19")
    assert before["ties_out"] and before["ar_control_balance"] == before["total"] == "500.00"
    after = _aging(finance, as_of="2026-11-30")
    assert after["total"] == "500.00" and after["ar_control_balance"] == "575.50"
    assert after["ties_out"] is False and after["difference"] == "75.50"
    assert after["difference_detail"] == {"without_invoice": "75.50", "unknown_invoices": "0.00"}
    tb = {a["code"]: a["balance"] for a in
          finance.get("/api/v1/ledger/trial-balance", entity="US01", as_of="2026-11-30").json()["accounts"]}
    assert tb["1200"] == after["ar_control_balance"]


def test_a_line_naming_an_invoice_billing_does_not_know_is_part_of_the_difference(entity, integration, finance,
                                                                                  run):
    h.customer(integration, "cus_known")
    h.invoice(integration, "inv_known", "cus_known", "80.00", issued="2026-11-01", due="2026-12-01")
    spec = JournalSpec(entity=entity, accounting_date=datetime.date(2026, 11, 10), kind="test_import",
                       source_system="billing-prod", description="an import that names a lost invoice",
                       lines=[LineSpec(debit=Decimal("12.00"), role=R.RECEIVABLE, invoice_id="inv_ghost"),
                              LineSpec(credit=Decimal("12.00"), role=R.REVENUE)])

    def book():
        with correlation.bound(None), transaction.atomic():
            return ledger.journal_create(spec, actor="test")

    assert run(book).pk
    body = _aging(finance, as_of="2026-11-30")
    assert body["total"] == "80.00" and body["ar_control_balance"] == "92.00" and not body["ties_out"]
    assert body["difference_detail"] == {"without_invoice": "0.00", "unknown_invoices": "12.00"}


def test_unapplied_cash_by_days_since_receipt_tied_to_2300(entity, integration, finance, controller, run):
    h.customer(integration, "cus_cash", name="Cash Co")
    h.customer(integration, "cus_other", name="Other Co")
    h.invoice(integration, "inv_cash", "cus_cash", "100.00", issued="2026-10-01", due="2026-10-31")
    h.payment(integration, "pay_early", "cus_cash", "80.00", on="2026-10-01")  # all unapplied
    h.payment(integration, "pay_over", "cus_cash", "150.00", on="2026-11-05",
              allocations=[("inv_cash", "100.00")])  # 50 left unapplied
    h.payment(integration, "pay_today", "cus_other", "7.00", on="2026-11-30")
    h.invoice(integration, "inv_cash2", "cus_cash", "30.00", issued="2026-11-10", due="2026-12-10")
    h.applied(integration, "pay_early", [("inv_cash2", "30.00")], on="2026-11-20")
    h.refund(integration, "pay_early", "10.00", on="2026-11-25")

    body = _aging(finance, UNAPPLIED, as_of="2026-11-30")
    # pay_early: 80 - 30 - 10 = 40, received 60 days before; pay_over 50, 25 days; pay_today 7, 0 days.
    assert body["buckets"] == {"current": "7.00", "1-30": "50.00", "31-60": "40.00", "61-90": "0.00",
                               "90+": "0.00"}
    assert body["total"] == body["unapplied_cash_balance"] == "97.00" and body["ties_out"]
    assert body["account"] == "2300"
    assert [(c["id"], c["total"]) for c in body["customers"]] == [("cus_cash", "90.00"), ("cus_other", "7.00")]
    before = _aging(finance, UNAPPLIED, as_of="2026-11-19")  # before the application and the refund
    assert before["buckets"]["31-60"] == "80.00" and before["buckets"]["1-30"] == "50.00"
    assert before["total"] == "130.00" and before["ties_out"]
    payments = {p["payment_id"]: (p["days_since"], p["bucket"], p["unapplied_amount"])
                for p in billing_selectors.unapplied_cash_payments(entity=entity, as_of=AS_OF)}
    assert payments == {"pay_early": (60, "31-60", Decimal("40.00")), "pay_over": (25, "1-30", Decimal("50.00")),
                        "pay_today": (0, "current", Decimal("7.00"))}
    h.manual_journal(run, controller, entity=entity, on=datetime.date(2026, 11, 28),
                     lines=[("6100", "5.00", "", ""), ("2300", "", "5.00", "")])
    after = _aging(finance, UNAPPLIED, as_of="2026-11-30")
    assert after["unapplied_cash_balance"] == "102.00" and after["total"] == "97.00" and not after["ties_out"]
    assert after["difference"] == "5.00"
    assert after["difference_detail"] == {"without_payment": "5.00", "unknown_payments": "0.00"}


def test_the_body_is_the_json_postgresql_writes_compact_and_escaped(entity, integration, finance):
    # Names with quotes, a backslash, a newline and non-ASCII letters go through PostgreSQL's to_json: the body
    # must parse to exactly the names sent; the order is by total, largest first, then customer id.
    tricky = 'Quote "Co" \\ Ünïcode\nLtd'
    h.customer(integration, "cus_tricky", name=tricky)
    h.customer(integration, "cus_b", name="B")
    h.customer(integration, "cus_a", name="A")
    h.invoice(integration, "inv_t", "cus_tricky", "5.00", issued=_days(10), due=_days(-5))
    h.invoice(integration, "inv_a", "cus_a", "7.50", issued=_days(40), due=_days(10))
    h.invoice(integration, "inv_b", "cus_b", "7.50", issued=_days(125), due=_days(95))
    response = finance.get(AR, entity="US01", as_of=AS_OF.isoformat())
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["entity", "as_of", "currency", "account", "buckets", "total", "ar_control_balance",
                          "ties_out", "difference", "difference_detail", "customers"]
    assert [(c["id"], c["name"], c["total"]) for c in body["customers"]] == [
        ("cus_a", "A", "7.50"), ("cus_b", "B", "7.50"), ("cus_tricky", tricky, "5.00")]
    assert body["customers"][1]["buckets"] == {"current": "0.00", "1-30": "0.00", "31-60": "0.00", "61-90": "0.00",
                                               "90+": "7.50"}
    assert body["total"] == "20.00" and body["ties_out"] is True
    assert b", " not in response.content and b'": ' not in response.content  # compact, as the renderer wrote it
    # The pages' rows (the same statement's other ending) agree with the API's customers.
    rows = billing_selectors.ar_aging(entity=entity, as_of=AS_OF)
    assert [(c["customer_id"], str(c["total"])) for c in rows["customers"]] == [
        (c["id"], c["total"]) for c in body["customers"]]
    assert {k: str(v) for k, v in rows["buckets"].items()} == body["buckets"]
