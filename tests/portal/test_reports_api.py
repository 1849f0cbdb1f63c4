"""The report endpoints as callers meet them: customer statements with a running balance (invoices, payments
whole whether allocated or not, credit notes, refunds, write-offs; applications of unapplied cash leave no line),
who may read the reports (every staff role, inside their entities; source systems not at all), and the answers
to bad or missing parameters (problem+json with a stable code)."""
import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from config import correlation
from ledger import services as ledger
from tests.portal import report_history as h

pytestmark = pytest.mark.django_db

STATEMENT = "/api/v1/customers/billing-prod/{}/statement"


@pytest.fixture
def statement_history(entity, integration, controller):
    h.customer(integration, "cus_st", name="Statement Inc")
    h.customer(integration, "cus_else")
    h.invoice(integration, "inv_st1", "cus_st", "100.00", tax="7.25", issued="2026-10-20", due="2026-11-19")
    h.invoice(integration, "inv_st2", "cus_st", "200.00", issued="2026-11-03", due="2026-12-03")
    h.invoice(integration, "inv_else", "cus_else", "999.00", issued="2026-11-03", due="2026-12-03")
    h.payment(integration, "pay_st1", "cus_st", "150.00", on="2026-11-05", allocations=[("inv_st1", "107.25")])
    h.applied(integration, "pay_st1", [("inv_st2", "40.00")], on="2026-11-08")
    h.credit_note(integration, "inv_st2", "20.00", on="2026-11-10")
    h.refund(integration, "pay_st1", "2.75", on="2026-11-12")  # the last of the unapplied cash
    h.write_off(integration, controller, "inv_st2", "15.00", on="2026-11-15")
    h.refund(integration, "pay_st1", "7.25", on="2026-11-18", invoice_id="inv_st1")
    return entity


def _statement(api, customer_id="cus_st", **params):
    response = api.get(STATEMENT.format(customer_id), **params)
    assert response.status_code == 200, response.content
    return response.json()


def test_statement_lines_and_running_balance(statement_history, finance):
    body = _statement(finance, **{"from": "2026-11-01", "to": "2026-11-30"})
    assert {k: body[k] for k in ("source_system", "customer_id", "name", "entity", "currency", "from", "to")} == {
        "source_system": "billing-prod", "customer_id": "cus_st", "name": "Statement Inc", "entity": "US01",
        "currency": "USD", "from": "2026-11-01", "to": "2026-11-30"}
    assert body["opening_balance"] == "107.25"  # inv_st1, issued in October
    lines = [(line["date"], line["type"], line["document"], line["debit"], line["credit"], line["balance"])
             for line in body["lines"]]
    assert lines == [
        ("2026-11-03", "invoice", "inv_st2", "200.00", "0.00", "307.25"),
        ("2026-11-05", "payment", "pay_st1", "0.00", "150.00", "157.25"),  # 107.25 allocated + 42.75 unapplied
        ("2026-11-10", "credit note", body["lines"][2]["document"], "0.00", "20.00", "137.25"),
        ("2026-11-12", "refund", body["lines"][3]["document"], "2.75", "0.00", "140.00"),
        ("2026-11-15", "write-off", body["lines"][4]["document"], "0.00", "15.00", "125.00"),
        ("2026-11-18", "refund", body["lines"][5]["document"], "7.25", "0.00", "132.25"),
    ]  # the application of the 8th moves cash from unapplied to the invoice: no line
    assert body["lines"][0]["number"] and body["lines"][0]["invoice_id"] == "inv_st2"
    assert body["lines"][2]["invoice_id"] == "inv_st2" and body["lines"][1]["invoice_id"] == "inv_st1"
    assert all(line["journal"] and line["erp_document_ref"] for line in body["lines"])
    assert (body["total_debit"], body["total_credit"], body["closing_balance"]) == ("210.00", "185.00", "132.25")
    # The closing balance is what the agings hold for the customer at the end: receivables less unapplied cash.
    ar = finance.get("/api/v1/reports/ar-aging", entity="US01", as_of="2026-11-30").json()
    cash = finance.get("/api/v1/reports/unapplied-cash", entity="US01", as_of="2026-11-30").json()
    owed = {c["id"]: c["total"] for c in ar["customers"]}["cus_st"]
    held = {c["id"]: c["total"] for c in cash["customers"]}.get("cus_st", "0.00")
    assert owed == "132.25" and held == "0.00"


def test_statement_periods_chain_and_default_to_the_current_month(statement_history, auditor):
    october = _statement(auditor, **{"from": "2026-10-01", "to": "2026-10-31"})
    assert (october["opening_balance"], len(october["lines"]), october["closing_balance"]) == ("0.00", 1, "107.25")
    first_half = _statement(auditor, **{"from": "2026-11-01", "to": "2026-11-09"})
    second_half = _statement(auditor, **{"from": "2026-11-10", "to": "2026-11-30"})
    assert first_half["opening_balance"] == october["closing_balance"]
    assert second_half["opening_balance"] == first_half["closing_balance"] == "157.25"
    assert second_half["closing_balance"] == "132.25"
    default = _statement(auditor)
    today = timezone.localdate()
    assert (default["from"], default["to"]) == (today.replace(day=1).isoformat(), today.isoformat())


@pytest.mark.parametrize("api_name", ["finance", "controller", "auditor", "admin_api"])
def test_every_staff_role_reads_the_reports(statement_history, request, api_name):
    api = request.getfixturevalue(api_name)
    for path, params in (("/api/v1/reports/ar-aging", {"entity": "US01"}),
                         ("/api/v1/reports/unapplied-cash", {"entity": "US01"}),
                         (STATEMENT.format("cus_st"), {}),
                         ("/api/v1/ledger/export", {"entity": "US01"})):
        assert api.get(path, **params).status_code == 200, (path, api_name)


def test_source_systems_may_not_read_the_reports(statement_history, integration):
    for path, params in (("/api/v1/reports/ar-aging", {"entity": "US01"}),
                         ("/api/v1/reports/unapplied-cash", {"entity": "US01"}),
                         (STATEMENT.format("cus_st"), {}), ("/api/v1/ledger/export", {"entity": "US01"})):
        response = integration.get(path, **params)
        assert response.status_code == 403 and response["Content-Type"] == "application/problem+json"


def test_other_entities_are_unknown(statement_history, finance):
    with correlation.bound(None), transaction.atomic():
        ledger.entity_setup(code="GB01", currency="GBP", name="Tieout UK", actor="test")
        ledger.entity_access_set(user=get_user_model().objects.get(username="fiona-ops"), entity_codes=["GB01"],
                                 actor="test")
    for path, params in (("/api/v1/reports/ar-aging", {"entity": "US01"}),
                         ("/api/v1/reports/unapplied-cash", {"entity": "US01"}),
                         ("/api/v1/reports/ar-aging", {"entity": "NOPE"}),
                         (STATEMENT.format("cus_st"), {}), (STATEMENT.format("cus_nobody"), {}),
                         ("/api/v1/ledger/export", {"entity": "US01"})):
        response = finance.get(path, **params)
        assert response.status_code == 404, (path, params)
        assert response.json()["code"] == "not_found"
    gb = finance.get("/api/v1/reports/ar-aging", entity="GB01").json()
    assert (gb["currency"], gb["total"], gb["customers"]) == ("GBP", "0.00", [])


@pytest.mark.parametrize("path,params,field", [
    ("/api/v1/reports/ar-aging", {}, "entity"),
    ("/api/v1/reports/ar-aging", {"entity": "US01", "as_of": "30/11/2026"}, "as_of"),
    ("/api/v1/reports/unapplied-cash", {"entity": "US01", "as_of": "0001-01-01"}, "as_of"),
    (STATEMENT.format("cus_st"), {"from": "2026-11-30", "to": "2026-11-01"}, "from"),
    (STATEMENT.format("cus_st"), {"to": "yesterday"}, "to"),
    ("/api/v1/ledger/export", {"entity": "US01", "format": "xml"}, "format"),
])
def test_bad_parameters_are_problems_with_a_code(statement_history, finance, path, params, field):
    response = finance.get(path, **params)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "invalid_request" and body["errors"][0]["field"] == field


def test_the_reports_are_in_the_openapi_schema(finance):
    schema = finance.get("/api/v1/schema", format="json").json()
    for path in ("/api/v1/reports/ar-aging", "/api/v1/reports/unapplied-cash",
                 "/api/v1/customers/{source_system}/{customer_id}/statement", "/api/v1/ledger/export"):
        assert "get" in schema["paths"][path], path
    aging = schema["components"]["schemas"]["ArAgingReport"]["properties"]
    assert set(aging) >= {"entity", "as_of", "currency", "buckets", "total", "ar_control_balance", "ties_out",
                          "difference", "customers"}
    assert list(schema["components"]["schemas"]["AgingBucketsReport"]["properties"]) == [
        "current", "1-30", "31-60", "61-90", "90+"]
    assert list(schema["components"]["schemas"]["CustomerStatement"]["properties"])[5:7] == ["from", "to"]
