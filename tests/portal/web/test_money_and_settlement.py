"""Money on the pages (`{{ amount|money:currency }}`) and what an invoice is called (Invoice.settlement_on)."""
import datetime
import html
import re
from decimal import Decimal

import pytest
from django.template import Context, Template

from billing_sync.models import Invoice
from config.money import display, fmt
from portal.templatetags.money import money_text
from tests import factories as f
from tests.portal.web.conftest import client_for

D = Decimal


def _render(amount, currency=None) -> str:
    source = "{{ a|money:c }}" if currency else "{{ a|money }}"
    return Template(source).render(Context({"a": amount, "c": currency}))  # a builtin: no {% load %}


# ------------------------------------------------------------------------------------------- money filter
@pytest.mark.parametrize(("amount", "currency", "shown"), [
    (D("16087.5"), "USD", "16,087.50"),
    ("16087.50", None, "16,087.50"),            # the API's money string, digits kept
    (D("1234567.891"), "KWD", "1,234,567.891"),  # three minor-unit digits
    (D("16087.5"), "JPY", "16,088"),             # none (half up, as config.money.quantize)
    (D("999.999"), "USD", "1,000.00"),
    (D("0"), "USD", "0.00"),
    (D("12.3400"), "USD", "12.34"),              # the database's four decimals cut to the currency's
    (D("-1234.5"), "USD", "-1,234.50"),          # negatives: a leading minus, grouped
    ("-0.001", "USD", "0.00"),                   # never a negative zero
    (1234567, None, "1,234,567"),
])
def test_money_groups_thousands_at_the_currencys_digits(amount, currency, shown):
    assert _render(amount, currency) == shown
    assert display(amount, currency) == shown


@pytest.mark.parametrize("amount", [None, ""])
def test_money_of_nothing_is_empty(amount):
    assert _render(amount, "USD") == "" and display(amount) == ""


def test_money_leaves_what_is_not_a_number_alone_and_fmt_stays_plain():
    assert _render("—") == "—" and display("n/a", "USD") == "n/a"
    assert fmt(D("16087.5"), "USD") == "16087.50"  # the API, CSV and JSON keep machine-readable digits


# ------------------------------------------------------------------------------------------- settlement
TODAY = datetime.date(2026, 12, 3)


def _inv(total="100.00", *, applied="0", credited="0", written_off="0", refunded="0", due=TODAY,
         status=Invoice.Status.OPEN) -> Invoice:
    return Invoice(total=D(total), subtotal=D(total), tax_total=D("0"), applied_total=D(applied),
                   credited_total=D(credited), written_off_total=D(written_off), refunded_total=D(refunded),
                   due_date=due, status=status)


@pytest.mark.parametrize(("invoice", "expected"), [
    (_inv(applied="100.00"), "paid"),                                     # paid exactly
    (_inv(applied="100.00", due=TODAY - datetime.timedelta(days=40)), "paid"),  # paid is never overdue
    (_inv(applied="99.99"), "partially_paid"),                            # a cent short
    (_inv(applied="100.00", refunded="10.00"), "partially_paid"),         # a refund naming it reopens it
    (_inv(), "open"),                                                     # due today: not yet overdue
    (_inv(due=TODAY - datetime.timedelta(days=1)), "overdue"),            # the day after the due date
    (_inv(applied="40.00", due=TODAY - datetime.timedelta(days=1)), "overdue"),
    (_inv(applied="40.00", status=Invoice.Status.VOIDED), "voided"),      # void wins over anything
    (_inv(applied="60.00", written_off="40.00"), "written_off"),          # the rest written off
    (_inv(written_off="100.00", due=TODAY - datetime.timedelta(days=9)), "written_off"),
    (_inv(credited="100.00"), "credited"),                                # fully credited
    (_inv(applied="100.00", credited="20.00"), "credited"),               # a credit balance (open < 0)
    (_inv(applied="80.00", credited="20.00"), "credited"),
    (_inv(credited="30.00"), "open"),                                     # partly credited, nothing paid
])
def test_invoice_settlement_from_the_amounts(invoice, expected):
    assert invoice.settlement_on(TODAY) == expected
    assert Invoice.SETTLEMENT_LABELS[expected]


# ------------------------------------------------------------------------------------------- on the pages
@pytest.mark.django_db
def test_a_paid_invoice_reads_paid_with_grouped_amounts(entity, integration, finance):
    customer = f.customer(name="Initech")
    assert integration.send(customer).status_code == 202
    cid = customer["data"]["customer_id"]
    paid = f.invoice(customer_id=cid, lines=[("15000.00", "1087.50")], number="INV-PAID", due_date="2099-12-31")
    part = f.invoice(customer_id=cid, lines=[("2000.00", "0")], number="INV-PART", due_date="2099-12-31")
    for payload in (paid, part, f.payment(customer_id=cid, amount="16087.50",
                                          allocations=[(paid["data"]["invoice_id"], "16087.50")]),
                    f.payment(customer_id=cid, amount="500.00", allocations=[(part["data"]["invoice_id"], "500.00")])):
        assert integration.send(payload).status_code == 202
    invoice = Invoice.objects.get(invoice_id=paid["data"]["invoice_id"])
    assert invoice.open_amount == 0 and invoice.status == "open"  # stored status unchanged (the API's)

    page = client_for("fiona-ops").get("/adjustments/?q=INV-")
    text = html.unescape(page.content.decode())
    rows = {m.group(1): m.group(2) for m in re.finditer(r">(INV-PAID|INV-PART)</a>(.*?)</tr>", text, re.S)}
    assert "16,087.50 USD" in rows["INV-PAID"] and "16087.50" not in text
    assert 'settle-paid">paid<' in rows["INV-PAID"] and ">open<" not in rows["INV-PAID"]
    assert "1,500.00 USD" in rows["INV-PART"] and ">partially paid<" in rows["INV-PART"]

    detail = html.unescape(client_for("fiona-ops").get(f"/adjustments/invoices/{invoice.pk}/").content.decode())
    assert 'id="open-amount">0.00 USD' in detail and ">paid</span>" in detail
    trace = client_for("fiona-ops").get(f"/trace/invoice/{invoice.source_system}/{invoice.invoice_id}/")
    assert ">paid</span>" in trace.content.decode() and "16,087.50" in trace.content.decode()
    api = finance.get(f"/api/v1/invoices/{invoice.source_system}/{invoice.invoice_id}")
    assert api.status_code == 200 and api.json()["status"] == "open"  # the API's field keeps its values


@pytest.mark.parametrize("value, currency, shown", [
    ("16087.5000", "USD", "16,087.50"), ("-1234.5", "USD", "-1,234.50"), ("2", None, "2"), ("inv_1", "USD", "inv_1"),
    ("2026-11-03", "USD", "2026-11-03"), (None, "USD", None),
])
def test_version_diff_values_show_amounts_as_money_and_the_rest_as_they_are(value, currency, shown):
    assert money_text(value, currency) == shown
