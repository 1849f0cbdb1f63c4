"""Receivables and cash reports as the API and the pages show them: AR aging and unapplied-cash aging as of a
date, a customer's statement, each as one body (money as the API's decimal strings, dates ISO 8601) and as the
rows of its CSV and XLSX downloads. The figures come from `billing_sync.selectors` (which joins the ledger's
open items to the billing documents) and are only shaped here; entity scope is the reader's
(`visible_entity`); they change nothing."""
from __future__ import annotations

import datetime
import json

from django.utils import timezone

from billing_sync import selectors as billing
from config import roles
from config.money import fmt
from ledger import selectors as ledger

BUCKETS = billing.BUCKET_NAMES


def visible_entity(user, code: str):
    """The entity `code` if `user` may see it, else None (unknown and hidden look alike)."""
    entity = ledger.entity_for_code(code) if code else None
    if entity is None or not roles.may_see_entity(user, entity.code):
        return None
    return entity


class AmbiguousEntity(Exception):
    """The customer has documents in several of the reader's entities: the statement needs one named."""

    def __init__(self, codes):
        super().__init__(codes)
        self.codes = codes


def statement_target(user, source_system: str, customer_id: str, entity_code: str = ""):
    """(customer, entity) of the statement a reader asks for, or None when the customer is unknown or
    outside their entities. The entity is the customer's (the one it names, else where its documents are);
    `entity_code` picks one when there are several (AmbiguousEntity when it is needed and missing)."""
    customer = billing.customer_by_identity(source_system, customer_id)
    if customer is None:
        return None
    codes = billing.customer_entity_codes(customer)
    if entity_code:
        codes = [entity_code] if entity_code in codes or not codes else []
    codes = [code for code in codes if roles.may_see_entity(user, code)]
    if len(codes) > 1:
        raise AmbiguousEntity(codes)
    entity = ledger.entity_for_code(codes[0]) if codes else None
    return (customer, entity) if entity else None


def _buckets(buckets: dict) -> dict:
    # The agings round their amounts to the currency's minor units in SQL: `str` writes them as `fmt` would.
    return {name: str(buckets[name]) for name in BUCKETS}


def _with_customers(head: dict, report: dict) -> bytes:
    """The body as JSON: `head` (compact, as the API's renderer writes it) with `customers` last, the array
    PostgreSQL wrote (`as_json`) put in as it is: the Python side never handles the customers one by one."""
    text = json.dumps(head, ensure_ascii=False, separators=(",", ":"))
    return f'{text[:-1]},"customers":[{report["customers_json"]}]}}'.encode()


def ar_aging_json(report: dict) -> bytes:
    """GET /api/v1/reports/ar-aging: the body of `billing.ar_aging(..., as_json=True)`, as JSON."""
    currency = report["entity"].currency
    return _with_customers({
        "entity": report["entity"].code, "as_of": report["as_of"].isoformat(), "currency": currency,
        "account": report["account"].code,
        "buckets": _buckets(report["buckets"]), "total": str(report["total"]),
        "ar_control_balance": fmt(report["ar_control"], currency), "ties_out": report["difference"] == 0,
        "difference": fmt(report["difference"], currency),
        "difference_detail": {"without_invoice": fmt(report["without_invoice"], currency),
                              "unknown_invoices": fmt(report["unknown_invoices"], currency)},
    }, report)


def unapplied_cash_json(report: dict) -> bytes:
    """GET /api/v1/reports/unapplied-cash: the body of `billing.unapplied_cash_aging(..., as_json=True)`."""
    currency = report["entity"].currency
    return _with_customers({
        "entity": report["entity"].code, "as_of": report["as_of"].isoformat(), "currency": currency,
        "account": report["account"].code,
        "buckets": _buckets(report["buckets"]), "total": str(report["total"]),
        "unapplied_cash_balance": fmt(report["unapplied_cash_balance"], currency),
        "ties_out": report["difference"] == 0, "difference": fmt(report["difference"], currency),
        "difference_detail": {"without_payment": fmt(report["without_payment"], currency),
                              "unknown_payments": fmt(report["unknown_payments"], currency)},
    }, report)


def statement_body(statement: dict) -> dict:
    """GET /api/v1/customers/{source_system}/{customer_id}/statement as the API answers it."""
    currency = statement["entity"].currency
    customer = statement["customer"]
    return {
        "source_system": customer.source_system, "customer_id": customer.customer_id, "name": customer.name,
        "entity": statement["entity"].code, "currency": currency,
        "from": statement["date_from"].isoformat(), "to": statement["date_to"].isoformat(),
        "opening_balance": fmt(statement["opening_balance"], currency),
        "lines": [{"date": line["date"].isoformat(), "type": line["type"], "document_type": line["document_type"],
                   "document": line["document"], "number": line["number"] or None, "invoice_id": line["invoice_id"],
                   "journal": str(line["journal"]), "erp_document_ref": line["erp_document_ref"] or None,
                   "debit": fmt(line["debit"], currency), "credit": fmt(line["credit"], currency),
                   "balance": fmt(line["balance"], currency)} for line in statement["lines"]],
        "total_debit": fmt(statement["total_debit"], currency),
        "total_credit": fmt(statement["total_credit"], currency),
        "closing_balance": fmt(statement["closing_balance"], currency),
    }


# --------------------------------------------------------------------------------------------- filters
def filter_customers(rows: list[dict], *, query: str = "", bucket: str = "") -> list[dict]:
    """The customers whose id or name contains `query` (any case) and, with `bucket`, who have an amount in it."""
    needle = query.strip().lower()
    out = []
    for row in rows:
        if needle and needle not in row["customer_id"].lower() and needle not in row["name"].lower():
            continue
        if bucket and not row["buckets"][bucket]:
            continue
        out.append(row)
    return out


SORT_KEYS = ("customer", "name", *BUCKETS, "total")


def sort_customers(rows: list[dict], key: str, descending: bool) -> list[dict]:
    """`rows` sorted by a column of the page (SORT_KEYS); ties by customer id."""
    if key == "customer":
        return sorted(rows, key=lambda r: (r["customer_id"], r["source_system"]), reverse=descending)
    if key == "name":
        return sorted(rows, key=lambda r: (r["name"].lower(), r["customer_id"]), reverse=descending)
    value = (lambda r: r["total"]) if key == "total" else (lambda r: r["buckets"][key])
    ordered = sorted(rows, key=lambda r: r["customer_id"])
    return sorted(ordered, key=value, reverse=descending)


# --------------------------------------------------------------------------------------------- downloads
# Each download is a header and rows of plain values (Decimal money, dates): the CSV writes them as text
# (money at the currency's digits, as the API does), the XLSX as numbers and dates a spreadsheet computes with.
CUSTOMER_HEADER = ["source_system", "customer_id", "name", *BUCKETS, "total"]


def customer_rows(rows: list[dict]):
    for row in rows:
        yield [row["source_system"], row["customer_id"], row["name"], *(row["buckets"][b] for b in BUCKETS),
               row["total"]]


INVOICE_HEADER = ["source_system", "invoice_id", "number", "customer_id", "customer_name", "issue_date", "due_date",
                  "days_past_due", "bucket", "total", "open_amount"]


def invoice_rows(invoices, *, bucket: str = "", query: str = ""):
    needle = query.strip().lower()
    for inv in invoices:
        if bucket and inv["bucket"] != bucket:
            continue
        if needle and needle not in inv["customer_id"].lower() and needle not in inv["customer_name"].lower():
            continue
        yield [inv["source_system"], inv["invoice_id"], inv["number"], inv["customer_id"], inv["customer_name"],
               inv["issue_date"], inv["due_date"], inv["days_past_due"], inv["bucket"], inv["total"],
               inv["open_amount"]]


PAYMENT_HEADER = ["source_system", "payment_id", "customer_id", "customer_name", "received_on", "days_since",
                  "bucket", "amount", "unapplied_amount"]


def payment_rows(payments, *, bucket: str = "", query: str = ""):
    needle = query.strip().lower()
    for pay in payments:
        if bucket and pay["bucket"] != bucket:
            continue
        if needle and needle not in pay["customer_id"].lower() and needle not in pay["customer_name"].lower():
            continue
        yield [pay["source_system"], pay["payment_id"], pay["customer_id"], pay["customer_name"], pay["received_on"],
               pay["days_since"], pay["bucket"], pay["amount"], pay["unapplied_amount"]]


STATEMENT_HEADER = ["date", "type", "document_type", "document", "number", "invoice_id", "journal",
                    "erp_document_ref", "debit", "credit", "balance"]


def statement_rows(statement: dict):
    yield [statement["date_from"], "opening balance", "", "", "", "", "", "", None, None, statement["opening_balance"]]
    for line in statement["lines"]:
        yield [line["date"], line["type"], line["document_type"], line["document"], line["number"],
               line["invoice_id"] or "", str(line["journal"]), line["erp_document_ref"], line["debit"], line["credit"],
               line["balance"]]
    yield [statement["date_to"], "closing balance", "", "", "", "", "", "", statement["total_debit"],
           statement["total_credit"], statement["closing_balance"]]


def today() -> datetime.date:
    """The report date when none is asked for: today in the portal's time zone."""
    return timezone.localdate()
