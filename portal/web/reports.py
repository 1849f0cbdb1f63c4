"""Web pages of the receivables and cash reports: AR aging and unapplied cash by customer as of a date (filter by
entity, date, customer and bucket; sort by any column; drill down to a customer's invoices or payments and from
an invoice to its trace), a customer's statement, and the ledger export; each report downloads as CSV
(streamed) or XLSX (write-only workbook). Every staff role reads them, inside their entities (an entity they
may not see is answered as unknown); nothing here writes. Figures come from `billing_sync.selectors` through
`portal.selectors.reports`, the same as the API's."""
from __future__ import annotations

import datetime
from urllib.parse import urlencode

from django.shortcuts import render
from django.urls import path, reverse

from billing_sync import selectors as billing_selectors
from config.errors import TieoutError
from ledger import selectors as ledger_selectors
from portal import exports, ledger_export
from portal.selectors import reports
from portal.web.access import READERS, page

PAGE_SIZE = 100
BUCKET_CHOICES = [("", "Any")] + [(name, name) for name in reports.BUCKETS]


def _date(value: str, default: datetime.date) -> tuple[datetime.date, str]:
    """(date, error): the form's date, or the default and a message when it is not one."""
    value = (value or "").strip()
    if not value:
        return default, ""
    try:
        parsed = datetime.date.fromisoformat(value)
    except ValueError:
        return default, "Enter a date as YYYY-MM-DD."
    if not datetime.date(1900, 1, 1) <= parsed <= datetime.date(9998, 12, 31):
        return default, "Enter a date between 1900 and 9998."
    return parsed, ""


def _common(request) -> dict:
    """Entity, date, search and bucket of an aging page (the user's first entity and today by default)."""
    entities = ledger_selectors.entity_codes_for(request.user)
    code = request.GET.get("entity") or (entities[0] if entities else "")
    entity = reports.visible_entity(request.user, code) if code in entities else None
    as_of, as_of_error = _date(request.GET.get("as_of", ""), reports.today())
    bucket = request.GET.get("bucket", "")
    if bucket not in reports.BUCKETS:
        bucket = ""
    sort = request.GET.get("sort", "total")
    if sort not in reports.SORT_KEYS:
        sort = "total"
    return {"entities": entities, "entity": entity, "entity_code": code, "as_of": as_of, "as_of_error": as_of_error,
            "q": request.GET.get("q", "").strip(), "bucket": bucket, "sort": sort,
            "descending": request.GET.get("dir", "desc" if sort not in ("customer", "name") else "asc") == "desc",
            "customer": request.GET.get("customer", "")}


def _query(params: dict, **changes) -> str:
    merged = {k: v for k, v in {**params, **changes}.items() if v not in (None, "")}
    return "?" + urlencode(merged)


def _base_params(ctx: dict) -> dict:
    return {"entity": ctx["entity_code"], "as_of": ctx["as_of"].isoformat(), "q": ctx["q"], "bucket": ctx["bucket"],
            "sort": ctx["sort"], "dir": "desc" if ctx["descending"] else "asc", "customer": ctx["customer"]}


def _columns(ctx: dict) -> list[dict]:
    """The sortable column headers: each links to its sort (again: the other direction)."""
    params = _base_params(ctx)
    out = []
    for key, label, numeric in (("customer", "Customer", False), ("name", "Name", False),
                                *((b, b, True) for b in reports.BUCKETS), ("total", "Total", True)):
        active = ctx["sort"] == key
        direction = ("asc" if ctx["descending"] else "desc") if active else ("desc" if numeric else "asc")
        out.append({"key": key, "label": label, "numeric": numeric, "url": _query(params, sort=key, dir=direction),
                    "sorted": ("descending" if ctx["descending"] else "ascending") if active else ""})
    return out


def _pages(request, rows: list, ctx: dict) -> tuple[list, dict]:
    try:
        number = max(1, int(request.GET.get("page", "1")))
    except ValueError:
        number = 1
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    number = min(number, pages)
    params = {**_base_params(ctx)}
    return rows[(number - 1) * PAGE_SIZE: number * PAGE_SIZE], {
        "number": number, "pages": pages, "count": len(rows),
        "prev": _query(params, page=number - 1) if number > 1 else None,
        "next": _query(params, page=number + 1) if number < pages else None}


def _selected_customer(rows: list[dict], key: str) -> dict | None:
    if not key:
        return None
    return next((row for row in rows if str(row["pk"]) == key), None)


def _aging_page(request, *, kind: str):
    ctx = _common(request)
    template = f"reports/{kind}.html"
    ctx["bucket_choices"] = BUCKET_CHOICES
    ctx["noun"], ctx["item_noun"] = ("receivables", "invoices") if kind == "ar_aging" else ("unapplied cash", "payments")
    if ctx["entity"] is None:
        ctx["error"] = "Choose one of your entities." if ctx["entities"] else "You have no entity to report on."
        return render(request, template, ctx, status=404 if ctx["entity_code"] else 200)
    entity, as_of = ctx["entity"], ctx["as_of"]
    try:
        report = (billing_selectors.ar_aging(entity=entity, as_of=as_of) if kind == "ar_aging"
                  else billing_selectors.unapplied_cash_aging(entity=entity, as_of=as_of))
    except TieoutError as error:
        ctx["error"] = f"{error.code}: {error.detail}"
        return render(request, template, ctx, status=422)
    customers = reports.sort_customers(reports.filter_customers(report["customers"], query=ctx["q"],
                                                                bucket=ctx["bucket"]),
                                       ctx["sort"], ctx["descending"])
    selected = _selected_customer(report["customers"], ctx["customer"])
    download = request.GET.get("download", "")
    if download in ("csv", "xlsx"):
        return _aging_download(request, kind, report, customers, selected, ctx, download)
    rows, pagination = _pages(request, customers, ctx)
    params = _base_params(ctx)
    for row in rows:
        row["cells"] = [row["buckets"][name] for name in reports.BUCKETS]
        row["drill"] = _query(params, customer=row["pk"])
        row["statement"] = reverse("web-report-statement") + "?" + urlencode({
            "source_system": row["source_system"], "customer_id": row["customer_id"], "entity": entity.code,
            "to": as_of.isoformat()})
    ctx.update({"report": report, "currency": entity.currency, "rows": rows, "pagination": pagination,
                "bucket_totals": [(name, report["buckets"][name]) for name in reports.BUCKETS],
                "control": report["ar_control"] if kind == "ar_aging" else report["unapplied_cash_balance"],
                "difference_parts": ([("without an invoice id", report["without_invoice"]),
                                      ("naming invoices billing does not know", report["unknown_invoices"])]
                                     if kind == "ar_aging" else
                                     [("without a payment id", report["without_payment"]),
                                      ("naming payments billing does not know", report["unknown_payments"])]),
                "columns": _columns(ctx), "selected": selected, "filtered": bool(ctx["q"] or ctx["bucket"]),
                "clear": _query({"entity": entity.code, "as_of": as_of.isoformat()}),
                "downloads": {fmt: {view: _query(params, download=fmt, view=view)
                                    for view in ("customers", "items")} for fmt in ("csv", "xlsx")}})
    if selected is not None:
        items = (billing_selectors.ar_aging_invoices if kind == "ar_aging" else billing_selectors.unapplied_cash_payments)(
            entity=entity, as_of=as_of, customer_pk=selected["pk"])
        ctx["items"] = [item for item in items if not ctx["bucket"] or item["bucket"] == ctx["bucket"]]
        ctx["back"] = _query(params, customer="")
    return render(request, template, ctx)


def _aging_download(request, kind, report, customers, selected, ctx, fmt):
    entity, as_of, currency = ctx["entity"], ctx["as_of"], ctx["entity"].currency
    view = request.GET.get("view", "customers")
    name = "ar-aging" if kind == "ar_aging" else "unapplied-cash"
    customer_pk = selected["pk"] if selected else None
    if view == "items":
        if kind == "ar_aging":
            header = reports.INVOICE_HEADER
            rows = reports.invoice_rows(billing_selectors.ar_aging_invoices(entity=entity, as_of=as_of,
                                                                           customer_pk=customer_pk),
                                        bucket=ctx["bucket"], query=ctx["q"])
        else:
            header = reports.PAYMENT_HEADER
            rows = reports.payment_rows(billing_selectors.unapplied_cash_payments(entity=entity, as_of=as_of,
                                                                                 customer_pk=customer_pk),
                                        bucket=ctx["bucket"], query=ctx["q"])
        title = "Invoices" if kind == "ar_aging" else "Payments"
    else:
        header, rows, title = reports.CUSTOMER_HEADER, reports.customer_rows(customers), "Customers"
    filename = f"{name}-{entity.code}-{as_of.isoformat()}{'-' + view if view == 'items' else ''}.{fmt}"
    if fmt == "csv":
        return exports.csv_response(filename, header, rows, currency=currency)
    return exports.xlsx_response(filename, [("Summary", ["figure", "value"], _summary(kind, report)),
                                            (title, header, rows)], currency=currency)


def _summary(kind: str, report: dict):
    yield ["entity", report["entity"].code]
    yield ["as_of", report["as_of"]]
    yield ["currency", report["entity"].currency]
    for name in reports.BUCKETS:
        yield [name, report["buckets"][name]]
    yield ["total", report["total"]]
    if kind == "ar_aging":
        yield [f"ar_control_balance ({report['account'].code})", report["ar_control"]]
    else:
        yield [f"unapplied_cash_balance ({report['account'].code})", report["unapplied_cash_balance"]]
    yield ["ties_out", "yes" if report["difference"] == 0 else "no"]
    yield ["difference", report["difference"]]


@page(read=READERS)
def ar_aging(request):
    return _aging_page(request, kind="ar_aging")


@page(read=READERS)
def unapplied_cash(request):
    return _aging_page(request, kind="unapplied_cash")


@page(read=READERS)
def statement(request):
    entities = ledger_selectors.entity_codes_for(request.user)
    # NUL can be in no stored text (PostgreSQL refuses it in a query, too): dropped from what was typed.
    values = {key: request.GET.get(key, "").replace("\x00", "").strip()
              for key in ("source_system", "customer_id", "entity", "from", "to", "q")}
    ctx = {"values": values, "entities": entities, "errors": {}}
    if values["q"]:
        ctx["matches"] = [{"customer": c, "url": _query({"source_system": c.source_system,
                                                        "customer_id": c.customer_id})}
                          for c in billing_selectors.customers_search(request.user, values["q"])]
    if not values["customer_id"]:
        return render(request, "reports/statement.html", ctx)
    date_to, error_to = _date(values["to"], reports.today())
    date_from, error_from = _date(values["from"], date_to.replace(day=1))
    if error_to:
        ctx["errors"]["to"] = error_to
    if error_from:
        ctx["errors"]["from"] = error_from
    if not ctx["errors"] and date_from > date_to:
        ctx["errors"]["from"] = "The period ends before it starts."
    source_system = values["source_system"] or billing_selectors.customer_source_system(values["customer_id"])
    target = None
    try:
        target = reports.statement_target(request.user, source_system, values["customer_id"], values["entity"])
    except reports.AmbiguousEntity as ambiguous:
        ctx["errors"]["entity"] = f"This customer has documents in {', '.join(ambiguous.codes)}: choose one."
    if ctx["errors"]:
        return render(request, "reports/statement.html", ctx, status=400)
    if target is None:
        ctx["errors"]["customer_id"] = "No such customer in your entities."
        return render(request, "reports/statement.html", ctx, status=404)
    customer, entity = target
    try:
        result = billing_selectors.customer_statement(customer=customer, entity=entity, date_from=date_from,
                                                      date_to=date_to)
    except TieoutError as error:
        ctx["errors"]["entity"] = f"{error.code}: {error.detail}"
        return render(request, "reports/statement.html", ctx, status=422)
    download = request.GET.get("download", "")
    filename = f"statement-{entity.code}-{customer.customer_id}-{date_from}-{date_to}.{download}"
    if download == "csv":
        return exports.csv_response(filename, reports.STATEMENT_HEADER, reports.statement_rows(result),
                                    currency=entity.currency)
    if download == "xlsx":
        return exports.xlsx_response(filename, [("Statement", reports.STATEMENT_HEADER,
                                                 reports.statement_rows(result))], currency=entity.currency)
    params = {"source_system": customer.source_system, "customer_id": customer.customer_id, "entity": entity.code,
              "from": date_from.isoformat(), "to": date_to.isoformat()}
    ctx.update({"statement": result, "customer": customer, "entity": entity, "currency": entity.currency,
                "date_from": date_from, "date_to": date_to,
                "downloads": {fmt: _query(params, download=fmt) for fmt in ("csv", "xlsx")}})
    return render(request, "reports/statement.html", ctx)


@page(read=READERS)
def ledger_export_page(request):
    entities = ledger_selectors.entity_codes_for(request.user)
    today = reports.today()
    values = {"entity": request.GET.get("entity") or (entities[0] if entities else ""),
              "from": request.GET.get("from") or today.replace(day=1).isoformat(),
              "to": request.GET.get("to") or today.isoformat(), "format": request.GET.get("format", "")}
    ctx = {"values": values, "entities": entities, "errors": {}, "formats": ledger_export.FORMATS}
    if not values["format"]:
        return render(request, "reports/ledger_export.html", ctx)
    entity = reports.visible_entity(request.user, values["entity"]) if values["entity"] in entities else None
    if entity is None:
        ctx["errors"]["entity"] = "Choose one of your entities."
    date_from, error_from = _date(values["from"], today)
    date_to, error_to = _date(values["to"], today)
    if error_from:
        ctx["errors"]["from"] = error_from
    if error_to:
        ctx["errors"]["to"] = error_to
    if not ctx["errors"] and date_from > date_to:
        ctx["errors"]["to"] = "The period ends before it starts."
    if values["format"] not in ledger_export.FORMATS:
        ctx["errors"]["format"] = "Choose CSV or Beancount."
    if ctx["errors"]:
        return render(request, "reports/ledger_export.html", ctx, status=400)
    ledger_export.record_export(entity, date_from, date_to, values["format"], actor=request.user, via="page")
    return exports.stream_response(ledger_export.chunks(entity, date_from, date_to, values["format"]),
                                   ledger_export.filename(entity, date_from, date_to, values["format"]),
                                   ledger_export.content_type(values["format"]))


@page(read=READERS)
def index(request):
    return render(request, "reports/index.html", {})


urlpatterns = [
    path("", index, name="web-reports"),
    path("ar-aging/", ar_aging, name="web-report-ar-aging"),
    path("unapplied-cash/", unapplied_cash, name="web-report-unapplied-cash"),
    path("statement/", statement, name="web-report-statement"),
    path("ledger-export/", ledger_export_page, name="web-report-ledger-export"),
]
