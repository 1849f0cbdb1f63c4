"""The report pages through Django's test client: AR aging (totals, tie-out, filters, sorting by any column,
paging, drill-down to a customer's invoices and on to the invoice's trace page), unapplied cash, a customer's
statement (search, lines, links), CSV and XLSX downloads of each read back with csv and openpyxl, the ledger
export page; every staff role reads them, inside their entities; signed-out visitors sign in."""
import csv
import datetime
import io
import re
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import FileResponse, StreamingHttpResponse
from django.test import Client
from openpyxl import load_workbook

from config import correlation
from ledger import services as ledger
from tests.portal import report_history as h
from tests.portal.web.conftest import client_for

pytestmark = pytest.mark.django_db

AS_OF = "2026-11-30"


@pytest.fixture
def run(django_capture_on_commit_callbacks):
    def call(fn, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(**kwargs)
    return call


@pytest.fixture
def receivables(entity, integration, finance, controller, auditor, run):
    """Three customers with invoices in different buckets at AS_OF (gamma paid 10 of 20 with 45: 35 unapplied), and
    a manual journal on the receivable account."""
    for customer_id, name in (("cus_alpha", "Alpha GmbH"), ("cus_beta", "Beta & Sons"), ("cus_gamma", "Gamma plc")):
        h.customer(integration, customer_id, name=name)
    h.invoice(integration, "inv_a1", "cus_alpha", "100.00", issued="2026-11-01", due="2026-12-01")  # current
    h.invoice(integration, "inv_a2", "cus_alpha", "50.00", issued="2026-09-01", due="2026-10-01")  # 60: 31-60
    h.invoice(integration, "inv_b1", "cus_beta", "300.00", issued="2026-07-01", due="2026-07-31")  # 122: 90+
    h.invoice(integration, "inv_g1", "cus_gamma", "20.00", issued="2026-11-01", due="2026-11-15")  # 15: 1-30, 10 of it paid
    h.payment(integration, "pay_g1", "cus_gamma", "45.00", on="2026-11-20", allocations=[("inv_g1", "10.00")])
    h.manual_journal(run, controller, entity=entity, on=datetime.date(2026, 11, 25),
                     lines=[("1200", "9.99", "", ""), ("4000", "", "9.99", "")])
    return entity


def _html(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def _customers(html: str) -> list[str]:
    return re.findall(r'<tr data-customer="([^"]+)"', html)


def _body(response) -> bytes:
    if isinstance(response, (StreamingHttpResponse, FileResponse)):
        return b"".join(response.streaming_content)
    return response.content


def test_ar_aging_page_totals_tie_out_and_customers(receivables):
    html = _html(client_for("fiona-ops").get("/reports/ar-aging/", {"entity": "US01", "as_of": AS_OF}))
    assert "<h1>AR aging</h1>" in html and 'aria-current="page"' in html and ">Reports</a>" in html
    assert 'data-figure="total">460.00 USD' in html  # 150 + 300 + 10
    assert 'data-figure="control">469.99 USD' in html
    assert "does not tie" in html and "9.99 on lines without an invoice id" in html
    assert _customers(html) == ["cus_beta", "cus_alpha", "cus_gamma"]  # total, largest first
    assert '<td class="num" data-bucket="90+">300.00</td>' in html
    assert '<label for="f-q">Customer</label>' in html and '<label for="f-bucket">Bucket</label>' in html


def test_ar_aging_sorts_by_any_column_and_filters(receivables):
    fiona = client_for("fiona-ops")
    page = lambda **p: _html(fiona.get("/reports/ar-aging/", {"entity": "US01", "as_of": AS_OF, **p}))  # noqa: E731
    assert _customers(page(sort="total", dir="asc")) == ["cus_gamma", "cus_alpha", "cus_beta"]
    assert _customers(page(sort="name", dir="asc")) == ["cus_alpha", "cus_beta", "cus_gamma"]
    assert _customers(page(sort="customer", dir="desc")) == ["cus_gamma", "cus_beta", "cus_alpha"]
    assert _customers(page(sort="current", dir="desc"))[0] == "cus_alpha"
    html = page(sort="90+", dir="desc")
    assert _customers(html)[0] == "cus_beta" and 'aria-sort="descending"' in html
    assert _customers(page(q="beta")) == ["cus_beta"]
    assert _customers(page(q="GAMMA PLC")) == ["cus_gamma"]
    assert _customers(page(bucket="31-60")) == ["cus_alpha"]
    assert _customers(page(bucket="61-90")) == [] and "No customer has receivables" in page(bucket="61-90")
    assert _customers(page(as_of="2026-10-15")) == ["cus_beta", "cus_alpha"]  # inv_a1, inv_g1 not issued yet


def test_drill_down_to_a_customers_invoices_and_their_trace(receivables):
    fiona = client_for("fiona-ops")
    html = _html(fiona.get("/reports/ar-aging/", {"entity": "US01", "as_of": AS_OF}))
    drill = re.search(r'<th scope="row"><a href="([^"]+)">cus_alpha</a>', html).group(1).replace("&amp;", "&")
    detail = _html(fiona.get("/reports/ar-aging/" + drill))
    assert "Alpha GmbH" in detail
    assert re.findall(r'<tr data-invoice="([^"]+)"', detail) == ["inv_a2", "inv_a1"]
    trace = re.search(r'<a href="(/trace/invoice/billing-prod/inv_a2/)">inv_a2</a>', detail).group(1)
    assert _html(fiona.get(trace))  # the invoice's trace page opens
    statement = re.search(r'<a href="(/reports/statement/\?[^"]+)">Statement<span class="sr-only"> of cus_alpha',
                          html).group(1).replace("&amp;", "&")
    assert "Opening balance" in _html(fiona.get(statement))


def test_ar_aging_downloads_csv_and_xlsx(receivables):
    fiona = client_for("fiona-ops")
    params = {"entity": "US01", "as_of": AS_OF}
    response = fiona.get("/reports/ar-aging/", {**params, "download": "csv"})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == 'attachment; filename="ar-aging-US01-2026-11-30.csv"'
    rows = list(csv.DictReader(io.StringIO(_body(response).decode())))
    assert [(r["customer_id"], r["current"], r["31-60"], r["90+"], r["total"]) for r in rows] == [
        ("cus_beta", "0.00", "0.00", "300.00", "300.00"), ("cus_alpha", "100.00", "50.00", "0.00", "150.00"),
        ("cus_gamma", "0.00", "0.00", "0.00", "10.00")]
    invoices = list(csv.DictReader(io.StringIO(_body(fiona.get("/reports/ar-aging/", {
        **params, "download": "csv", "view": "items", "bucket": "90+"})).decode())))
    assert [(r["invoice_id"], r["days_past_due"], r["bucket"], r["open_amount"]) for r in invoices] == [
        ("inv_b1", "122", "90+", "300.00")]

    response = fiona.get("/reports/ar-aging/", {**params, "download": "xlsx", "view": "items"})
    assert response["Content-Type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    workbook = load_workbook(io.BytesIO(_body(response)), read_only=True)
    assert workbook.sheetnames == ["Summary", "Invoices"]
    summary = {row[0]: row[1] for row in workbook["Summary"].iter_rows(values_only=True)}
    assert summary["total"] == pytest.approx(460) and summary["ties_out"] == "no"
    assert summary["difference"] == pytest.approx(9.99)
    assert summary["ar_control_balance (1200)"] == pytest.approx(469.99)
    sheet = list(workbook["Invoices"].iter_rows(values_only=True))
    assert sheet[0][:3] == ("source_system", "invoice_id", "number")
    by_invoice = {row[1]: row for row in sheet[1:]}
    assert set(by_invoice) == {"inv_a1", "inv_a2", "inv_b1", "inv_g1"}
    assert by_invoice["inv_a2"][6] == datetime.datetime(2026, 10, 1) and by_invoice["inv_a2"][7] == 60
    assert Decimal(str(by_invoice["inv_b1"][10])) == Decimal("300")


def test_unapplied_cash_page_and_download(receivables):
    aude = client_for("aude-auditor")
    html = _html(aude.get("/reports/unapplied-cash/", {"entity": "US01", "as_of": AS_OF}))
    assert "<h1>Unapplied cash</h1>" in html and 'data-figure="total">35.00 USD' in html and "ties out" in html
    assert _customers(html) == ["cus_gamma"]
    drill = re.search(r'<th scope="row"><a href="([^"]+)">cus_gamma</a>', html).group(1).replace("&amp;", "&")
    assert re.findall(r'<tr data-payment="([^"]+)"', _html(aude.get("/reports/unapplied-cash/" + drill))) == ["pay_g1"]
    workbook = load_workbook(io.BytesIO(_body(aude.get("/reports/unapplied-cash/", {
        "entity": "US01", "as_of": AS_OF, "download": "xlsx"}))), read_only=True)
    assert workbook.sheetnames == ["Summary", "Customers"]
    rows = list(workbook["Customers"].iter_rows(values_only=True))
    assert rows[0][1] == "customer_id" and rows[1][1] == "cus_gamma" and rows[1][-1] == pytest.approx(35)
    payments = list(csv.DictReader(io.StringIO(_body(aude.get("/reports/unapplied-cash/", {
        "entity": "US01", "as_of": AS_OF, "download": "csv", "view": "items"})).decode())))
    assert [(p["payment_id"], p["received_on"], p["days_since"], p["unapplied_amount"]) for p in payments] == [
        ("pay_g1", "2026-11-20", "10", "35.00")]


def test_statement_page_search_lines_and_downloads(receivables):
    fiona = client_for("fiona-ops")
    found = _html(fiona.get("/reports/statement/", {"q": "gamma"}))
    assert "cus_gamma" in found and "Gamma plc" in found
    html = _html(fiona.get("/reports/statement/", {"customer_id": "cus_gamma", "from": "2026-11-01", "to": AS_OF}))
    assert re.findall(r'<tr data-line="([^"]+)"', html) == ["opening", "invoice", "payment", "closing"]
    assert '<a href="/trace/invoice/billing-prod/inv_g1/">' in html and "/trace/journal/" in html
    assert "-25.00" in html  # the cash held for the customer after paying 45 on a 20 invoice
    rows = list(csv.reader(io.StringIO(_body(fiona.get("/reports/statement/", {
        "customer_id": "cus_gamma", "from": "2026-11-01", "to": AS_OF, "download": "csv"})).decode())))
    assert rows[0][:2] == ["date", "type"] and [r[1] for r in rows[1:]] == [
        "opening balance", "invoice", "payment", "closing balance"]
    assert rows[-1][-1] == "-25.00"
    workbook = load_workbook(io.BytesIO(_body(fiona.get("/reports/statement/", {
        "customer_id": "cus_gamma", "from": "2026-11-01", "to": AS_OF, "download": "xlsx"}))), read_only=True)
    assert [row[1] for row in workbook["Statement"].iter_rows(values_only=True)][1:] == [
        "opening balance", "invoice", "payment", "closing balance"]
    missing = fiona.get("/reports/statement/", {"customer_id": "cus_nobody"})
    assert missing.status_code == 404 and "No such customer in your entities." in missing.content.decode()


def test_ledger_export_page_downloads(receivables):
    aude = client_for("aude-auditor")
    html = _html(aude.get("/reports/ledger-export/"))
    assert '<label for="le-entity">Entity</label>' in html and 'value="beancount"' in html
    response = aude.get("/reports/ledger-export/", {"entity": "US01", "from": "2026-11-01", "to": AS_OF,
                                                    "format": "beancount"})
    text = _body(response).decode()
    assert response["Content-Disposition"] == 'attachment; filename="ledger-US01-2026-11-01-2026-11-30.beancount"'
    assert "open Assets:1200-Accounts-Receivable USD" in text and "balance Assets:1200-Accounts-Receivable" in text
    bad = aude.get("/reports/ledger-export/", {"entity": "US01", "from": "2026-12-01", "to": "2026-11-01",
                                               "format": "csv"})
    assert bad.status_code == 400 and "The period ends before it starts." in bad.content.decode()


def test_pages_keep_to_the_readers_entities_and_sign_in(receivables):
    with correlation.bound(None), transaction.atomic():
        ledger.entity_setup(code="GB01", currency="GBP", name="Tieout UK", actor="test")
        ledger.entity_access_set(user=get_user_model().objects.get(username="fiona-ops"), entity_codes=["GB01"],
                                 actor="test")
    fiona = client_for("fiona-ops")
    refused = fiona.get("/reports/ar-aging/", {"entity": "US01"})
    assert refused.status_code == 404 and "Choose one of your entities." in refused.content.decode()
    html = _html(fiona.get("/reports/ar-aging/"))  # her first entity
    assert '<option value="GB01" selected>' in html and "US01" not in html and _customers(html) == []
    assert fiona.get("/reports/statement/", {"customer_id": "cus_alpha"}).status_code == 404
    anonymous = Client().get("/reports/ar-aging/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")
