"""Billing-sync reads: event resources (batched, no N+1), event lists and payloads, canonical invoices (and the
ones a signed-in person may see), status callbacks, API tokens (never their secret), reconciliation runs,
breaks and the reconciliation status (mark) of journals and documents, what the period close needs of
reconciliation (the latest full run covering a month, the open breaks dated in it); AR and unapplied-cash agings,
their open invoices and payments, customer statements; where an event's or a receipt's bytes went once retention
archived their month (the pack named by `audit.PartitionArchive`)."""
import datetime
import json

import django_filters
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from audit.models import PartitionArchive
from billing_sync.models import (ApiToken, CallbackDelivery, Customer, Event, EventKey, Invoice, ReceiptKey,
                                 ReconciliationBreak, ReconciliationMark, ReconciliationRun)
from billing_sync.services import event_resource
from config import roles
from config.errors import Codes, TieoutError
from config.money import ZERO, fmt, minor_units
from exceptions_queue.selectors import latest_exceptions
from ledger import selectors as ledger_selectors
from ledger.models import Account, AccountMapping, Entity, ItemBalance
from ledger.selectors import journals_for_event_ids, receivable_balance


class EventFilter(django_filters.FilterSet):
    source_system = django_filters.CharFilter()
    event_id = django_filters.CharFilter()
    status = django_filters.CharFilter()
    type = django_filters.CharFilter()
    entity = django_filters.CharFilter(field_name="entity_code")
    received_after = django_filters.IsoDateTimeFilter(field_name="received_at", lookup_expr="gte")
    received_before = django_filters.IsoDateTimeFilter(field_name="received_at", lookup_expr="lt")

    class Meta:
        model = Event
        fields = ["source_system", "event_id", "status", "type", "entity"]


def events_visible_to(user, *, own_only: bool):
    """Source systems see what they sent; staff see the events of the entities they are granted."""
    qs = Event.objects.order_by("-received_at", "id").defer("payload", "response_body")
    return qs.filter(sent_by=user) if own_only else roles.scope(qs, user, "entity_code")


def event_payload(event_id) -> dict:
    """The payload an event arrived with, as stored; `Event.DoesNotExist` when there is no such event."""
    return Event.objects.values_list("payload", flat=True).get(pk=event_id)


def _iso(value) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _archive_pointer(table: str, received_at) -> dict | None:
    """The pack holding `table`'s partition of the month of `received_at`, or None if it was never archived."""
    month = received_at.astimezone(datetime.UTC).date().replace(day=1)
    archive = PartitionArchive.objects.filter(table=table, month=month).first()
    if archive is None:
        return None
    return {"pack": archive.pack_name, "location": archive.location, "sha256": archive.pack_sha256,
            "month": f"{archive.month:%Y-%m}", "partition": archive.partition, "rows": archive.rows,
            "archived_at": _iso(archive.archived_at)}


def event_archive(event_id) -> dict | None:
    """An archived event's identity (kept by its key row) and the pack holding its bytes (pack, location,
    SHA-256, month), or None if there is no such event or its month was never archived."""
    key = EventKey.objects.filter(pk=event_id).values("id", "source_system", "event_id", "received_at").first()
    archive = key and _archive_pointer("billing_sync_event", key["received_at"])
    if not archive:
        return None
    return {"event": {"id": str(key["id"]), "source_system": key["source_system"], "event_id": key["event_id"],
                      "received_at": _iso(key["received_at"])},
            "archive": archive}


def receipt_archive(receipt_id) -> dict | None:
    """The pack holding an archived receipt's bytes (pack, location, SHA-256, month), or None if there is no
    such receipt or its month was never archived."""
    key = ReceiptKey.objects.filter(pk=receipt_id).values("received_at").first()
    return key and _archive_pointer("billing_sync_receipt", key["received_at"])


def event_resources(events) -> list[dict]:
    ids = [e.pk for e in events]
    journals = journals_for_event_ids(ids)
    exceptions = latest_exceptions(ids)
    return [event_resource(event_id=e.pk, source_system=e.source_system, external_id=e.event_id, type_=e.type,
                           entity=e.entity_code, status=e.status, correlation_id=e.correlation_id,
                           received_at=e.received_at, journal_ids=journals.get(e.pk, []),
                           exception=exceptions.get(e.pk)) for e in events]


def invoice_resource(invoice: Invoice) -> dict:
    c = invoice.currency
    return {
        "source_system": invoice.source_system, "invoice_id": invoice.invoice_id, "number": invoice.number,
        "entity": invoice.entity.code, "customer_id": invoice.customer.customer_id, "currency": c,
        "issue_date": invoice.issue_date.isoformat(), "due_date": invoice.due_date.isoformat(),
        "status": invoice.status, "version": invoice.version,
        "subtotal": fmt(invoice.subtotal, c), "tax_total": fmt(invoice.tax_total, c), "total": fmt(invoice.total, c),
        "applied_total": fmt(invoice.applied_total, c), "credited_total": fmt(invoice.credited_total, c),
        "written_off_total": fmt(invoice.written_off_total, c), "refunded_total": fmt(invoice.refunded_total, c),
        "open_amount": fmt(invoice.open_amount, c),
        "ledger_open_amount": fmt(receivable_balance(entity=invoice.entity, source_system=invoice.source_system,
                                                     invoice_id=invoice.invoice_id), c),
        "reconciliation": reconciliation_status(f"invoice:{invoice.source_system}:{invoice.invoice_id}"),
        "lines": [{"line_id": line.line_id, "description": line.description, "amount": fmt(line.amount, c),
                   "revenue_account": line.revenue_account or None, "taxes": line.taxes}
                  for line in invoice.lines.order_by("id")],
    }


def invoice_by_identity(source_system: str, invoice_id: str) -> Invoice | None:
    return (Invoice.objects.select_related("entity", "customer")
            .filter(source_system=source_system, invoice_id=invoice_id).first())


def invoices_for(user):
    """The invoices of `user`'s entities, with their entity and customer."""
    return roles.scope(Invoice.objects.select_related("entity", "customer"), user, "entity__code")


def invoice_for(user, pk) -> Invoice | None:
    """One invoice of `user`'s entities, None when there is no such invoice or it is another entity's."""
    return invoices_for(user).filter(pk=pk).first()


def invoices_search(user, text: str):
    """The invoices of `user`'s entities whose id or number is (or contains) `text`, newest issued first; with
    no text, the open ones."""
    invoices = invoices_for(user)
    if text:
        invoices = invoices.filter(Q(invoice_id=text) | Q(number__iexact=text) | Q(number__icontains=text)
                                   | Q(invoice_id__icontains=text))
    else:
        invoices = invoices.filter(status=Invoice.Status.OPEN)
    return invoices.order_by("-issue_date", "-id")


class CallbackDeliveryFilter(django_filters.FilterSet):
    kind = django_filters.CharFilter()
    status = django_filters.CharFilter()

    class Meta:
        model = CallbackDelivery
        fields = ["kind", "status"]


def callback_deliveries_for_event(event_id):
    """Status callbacks of one event, oldest first (the order they were caused in)."""
    return (CallbackDelivery.objects.filter(event_id=event_id).select_related("source_system")
            .defer("payload").order_by("created_at", "id"))


def callback_delivery_resource(delivery) -> dict:
    def iso(value):
        return value.isoformat().replace("+00:00", "Z") if value else None

    return {"id": str(delivery.pk), "event": str(delivery.event_id), "source_system": delivery.source_system.name,
            "kind": delivery.kind, "status": delivery.status, "attempts": delivery.attempts,
            "last_status_code": delivery.last_status_code, "last_error": delivery.last_error or None,
            "created_at": iso(delivery.created_at), "delivered_at": iso(delivery.delivered_at),
            "next_attempt_at": iso(delivery.next_attempt_at) if delivery.status == "pending" else None,
            "exception": str(delivery.exception_id) if delivery.exception_id else None}


# --------------------------------------------------------------------------------------------- API tokens
class ApiTokenFilter(django_filters.FilterSet):
    user = django_filters.CharFilter(field_name="user__username")
    state = django_filters.ChoiceFilter(choices=[(s, s) for s in ("active", "expired", "revoked")],
                                        method="filter_state")

    class Meta:
        model = ApiToken
        fields = ["user", "state"]

    def filter_state(self, queryset, name, value):
        now = timezone.now()
        if value == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        expired = Q(expires_at__isnull=False, expires_at__lte=now)
        queryset = queryset.filter(revoked_at__isnull=True)
        return queryset.filter(expired) if value == "expired" else queryset.exclude(expired)


def api_tokens():
    """Every API token, newest first, with its user (never the secret: only its SHA-256 is stored)."""
    return ApiToken.objects.select_related("user").defer("key_hash").order_by("-created_at", "-id")


def api_token(token_id) -> ApiToken | None:
    return api_tokens().filter(pk=token_id).first()


def unrevoked_tokens_of(username: str) -> list[ApiToken]:
    """A user's tokens not revoked yet (expired ones included), oldest first."""
    return list(api_tokens().filter(user__username=username, revoked_at__isnull=True).order_by("created_at", "id"))


def token_state(token: ApiToken) -> str:
    if token.revoked_at is not None:
        return "revoked"
    return "expired" if token.is_expired() else "active"


def api_token_resource(token: ApiToken) -> dict:
    def iso(value):
        return value.isoformat().replace("+00:00", "Z") if value else None

    return {"id": token.pk, "user": token.user.get_username(), "name": token.name, "prefix": token.prefix,
            "state": token_state(token), "created_at": iso(token.created_at), "expires_at": iso(token.expires_at),
            "last_used_at": iso(token.last_used_at), "revoked_at": iso(token.revoked_at),
            "source_systems": token.source_systems, "entities": token.entities}


# --------------------------------------------------------------------------------------------- agings
# Age buckets of the AR and unapplied-cash agings, by whole days as of the report date: days past the due
# date for invoices, days since receipt for payments. `current` is not yet due (0 or fewer days: due on
# the report date is current); then 1-30, 31-60, 61-90 and 90+ (91 days and more). (name, first, last)
AGING_BUCKETS = (("current", None, 0), ("1-30", 1, 30), ("31-60", 31, 60), ("61-90", 61, 90), ("90+", 91, None))
BUCKET_NAMES = tuple(name for name, _first, _last in AGING_BUCKETS)


def aging_bucket(days: int) -> str:
    """The bucket of an age in days (AGING_BUCKETS)."""
    for name, first, last in AGING_BUCKETS:
        if (first is None or days >= first) and (last is None or days <= last):
            return name
    raise AssertionError(days)


def _bucket_sums(days: str, amount: str) -> str:
    """SQL: one `sum(amount)` per bucket (the edges of AGING_BUCKETS), in their order, named b0, b1, ..."""
    out = []
    for n, (_name, first, last) in enumerate(AGING_BUCKETS):
        bounds = [f"{days} >= {first}" if first is not None else "", f"{days} <= {last}" if last is not None else ""]
        out.append(f"coalesce(sum({amount}) FILTER (WHERE {' AND '.join(b for b in bounds if b)}), 0) AS b{n}")
    return ", ".join(out)


_BUCKETS = range(len(AGING_BUCKETS))

# The open items of `moves` (the ledger's rows, one per item open at the date: `ledger.selectors.
# item_balances_sql`), each given its customer and age by `document` (a LATERAL look-up by the document's
# key, LIMIT 1 so that the planner keeps it one index probe per open item, never a scan of every invoice
# ever issued), summed per customer and bucket. An item whose document billing does not know lands in the
# customer NULL group: it is left out of the report but its balance still counts in `items` (the account's
# balance split). Every customer's name is looked up the same way (the planner cannot tell how many
# customers the grouping leaves and, guessing a handful, would otherwise join them by looping over the whole
# customer table for each: 35 s over 20,000 customers in the bench).
_AGING_CTES = f"""
    WITH moves AS ({{moves}}),
    aged AS (
        SELECT d.customer, %(as_of)s::date - {{age_from}} AS days, {{sign}}m.amount AS amount, m.amount AS balance
        FROM moves m LEFT JOIN LATERAL ({{document}} LIMIT 1) d ON true
    ),
    per_customer AS (
        SELECT customer, {_bucket_sums("days", "amount")}, coalesce(sum(amount), 0) AS total, sum(balance) AS items
        FROM aged GROUP BY customer
    ),
    named AS (
        SELECT p.*, c.source_system, c.customer_id, c.name,
               p.customer IS NOT NULL AND NOT ({" AND ".join(f"p.b{n} = 0" for n in _BUCKETS)}) AS shown
        FROM per_customer p
        LEFT JOIN LATERAL (SELECT c.source_system, c.customer_id, c.name FROM billing_sync_customer c
                           WHERE c.id = p.customer LIMIT 1) c ON true
    )
"""
# The report's totals (the known customers' buckets and total, rounded to the currency's minor units) and
# the balance every item carries, known or not.
_AGING_TOTALS = ", ".join(
    [f"round(coalesce(sum(b{n}) FILTER (WHERE customer IS NOT NULL), 0), %(digits)s)" for n in _BUCKETS]
    + ["round(coalesce(sum(total) FILTER (WHERE customer IS NOT NULL), 0), %(digits)s)", "coalesce(sum(items), 0)"])
# Rows: the totals first (customer NULL), then the customers with something open, largest total first.
_AGING_ROWS = _AGING_CTES + f"""
    SELECT NULL AS customer, NULL AS source_system, NULL AS customer_id, NULL AS name, {_AGING_TOTALS},
           0 AS o, NULL::numeric AS t
    FROM named
    UNION ALL
    SELECT customer, source_system, customer_id, name, {", ".join(f"round(b{n}, %(digits)s)" for n in _BUCKETS)},
           round(total, %(digits)s), NULL, 1, total
    FROM named WHERE shown
    ORDER BY o, t DESC, customer_id, source_system
"""


def _json_object_sql(fields: list[tuple[str, str | list]]) -> list[str]:
    """The arguments of an SQL `concat` writing one compact JSON object: `fields` are (name, value), a value
    being an SQL expression giving JSON text, `("money", expression)` for an amount rounded to the currency's
    minor units and written as a decimal string, or a list of fields (a nested object)."""
    parts = ["{"]
    for n, (name, value) in enumerate(fields):
        parts.append(("," if n else "") + json.dumps(name) + ":")
        if isinstance(value, list):
            parts += _json_object_sql(value)
        elif isinstance(value, tuple):
            parts += ['"', f"round({value[1]}, %(digits)s)", '"']
        else:
            parts.append(value)
    parts.append("}")
    return parts


def _concat_sql(parts: list[str]) -> str:
    """`concat(...)` of `_json_object_sql`'s parts: its expressions (`to_json(...)`, `round(...)`) as they are,
    the JSON punctuation between them as quoted literals, adjacent ones merged; braces doubled for the
    `str.format` the agings' SQL goes through."""
    merged: list[str] = []
    for part in parts:
        literal = not (part.startswith(("to_json(", "round(")))
        if literal and merged and merged[-1].startswith("'"):
            merged[-1] = merged[-1][:-1] + part + "'"
        else:
            merged.append(f"'{part}'" if literal else part)
    return f"concat({', '.join(merged)})".replace("{", "{{").replace("}", "}}")


_CUSTOMER_JSON = _concat_sql(_json_object_sql([
    ("id", "to_json(customer_id)"), ("source_system", "to_json(source_system)"), ("name", "to_json(name)"),
    ("buckets", [(name, ("money", f"b{n}")) for n, name in enumerate(BUCKET_NAMES)]),
    ("total", ("money", "total"))]))

# JSON: the totals and the customers' list already written as the API's JSON array items (in the order of
# the rows above; money as decimal strings): PostgreSQL writes the tens of thousands of customers of a big
# entity faster than Python would turn rows into dicts and dicts into JSON.
_AGING_JSON = _AGING_CTES + f"""
    SELECT {_AGING_TOTALS},
           coalesce(string_agg({_CUSTOMER_JSON}, ',' ORDER BY total DESC, customer_id, source_system)
                    FILTER (WHERE shown), '')
    FROM named
"""
_INVOICE_OF_ITEM = """SELECT i.customer_id AS customer, i.due_date FROM billing_sync_invoice i
    WHERE i.source_system = m.source_system AND i.invoice_id = m.item_id AND i.entity_id = %(entity_id)s"""
_PAYMENT_OF_ITEM = """SELECT p.customer_id AS customer FROM billing_sync_payment p
    WHERE p.source_system = m.source_system AND p.payment_id = m.item_id AND p.entity_id = %(entity_id)s"""


def _fetch(sql: str, params: dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _aging(*, entity: Entity, role: str, item_type: str, as_of: datetime.date, document: str, age_from: str,
           sign: str, as_json: bool) -> dict:
    """The aging of one subledger (see `ar_aging`): per customer and bucket (as rows, or `as_json`, written
    as the API's JSON), the total, and the control account's balance split into what items carry and the
    other lines, all read in one snapshot."""
    account = _item_account(entity, role)
    params = {**ledger_selectors.item_params(account=account, as_of=as_of), "entity_id": entity.pk,
              "digits": minor_units(entity.currency)}
    parts = {"moves": ledger_selectors.item_balances_sql(account=account, item_type=item_type),
             "document": document, "age_from": age_from, "sign": sign}
    with ledger_selectors.report_snapshot(), connection.cursor() as cursor:
        # The pages the report reads are cached: priced as random disk reads (the default), the journal lines
        # posted after a past date (a few thousand, by journal) would be read by scanning every line of the
        # account (2 million in the bench) instead.
        cursor.execute("SET LOCAL random_page_cost = 1.1")
        rows = _fetch((_AGING_JSON if as_json else _AGING_ROWS).format(**parts), params)
        other = ledger_selectors.item_account_other(account=account, item_type=item_type, as_of=as_of)
    if as_json:
        [(*totals, items, customers_json)] = rows
        customers = {"customers_json": customers_json}
    else:
        (_none, _ss, _cid, _name, *totals, items, _o, _t), *per_customer = rows
        customers = {"customers": [
            {"pk": pk, "source_system": ss, "customer_id": customer_id, "name": name,
             "buckets": dict(zip(BUCKET_NAMES, sums[:-1], strict=True)), "total": sums[-1]}
            for pk, ss, customer_id, name, *sums, _items, _o, _t in per_customer]}
    return {"entity": entity, "as_of": as_of, "account": account, **customers,
            "buckets": dict(zip(BUCKET_NAMES, totals[:-1], strict=True)), "total": totals[-1],
            "control": {"balance": items + other, "items": items, "other": other}}


def ar_aging(*, entity: Entity, as_of: datetime.date, as_json: bool = False) -> dict:
    """Receivables aging of `entity` as of `as_of`: per customer, the open amount of their invoices by days
    past due, against the receivable (AR control) account.

    An invoice's open amount as of the date is its balance on the receivable account in the ledger: the
    lines that carry its id, of posted journals dated on or before the date (what
    `ledger.selectors.receivable_balance` counts, limited to the date). Payments, credit notes and
    write-offs dated after the date do not reduce it; nothing that was not yet posted counts. That makes
    the total comparable with the receivable account's balance at the date (`ar_control`, the trial
    balance's figure): they tie out exactly when every line on the account belongs to an invoice billing
    knows. When they do not, `difference` (control minus total) is split into `without_invoice` (lines on
    the account carrying no invoice id: a manual journal, say) and `unknown_invoices` (lines carrying the
    id of an invoice this entity's billing documents do not have).

    Buckets follow the invoice's due date as it is now (an amendment's new due date ages the whole
    invoice). Figures are Decimals; bucket amounts and totals are at the currency's minor units (rounded in
    SQL, so `str()` writes them as the API does); `customers` sorted by total, largest first. With `as_json`,
    `customers_json` instead: the same customers written as the items of the API's JSON array.
    """
    report = _aging(entity=entity, role=AccountMapping.Role.RECEIVABLE, item_type=ItemBalance.ItemType.INVOICE,
                    as_of=as_of, document=_INVOICE_OF_ITEM, age_from="d.due_date", sign="", as_json=as_json)
    control = report.pop("control")
    return {**report, "ar_control": control["balance"], "difference": control["balance"] - report["total"],
            "without_invoice": control["other"], "unknown_invoices": control["items"] - report["total"]}


def _item_account(entity: Entity, role: str) -> Account:
    """The account `role` is mapped to in `entity`; a report without it cannot be made (422)."""
    account = ledger_selectors.role_account(entity, role)
    if account is None:
        raise TieoutError(f"{entity.code} has no {role} account mapped", code=Codes.NO_ACCOUNT_MAPPING, status=422)
    return account


def unapplied_cash_aging(*, entity: Entity, as_of: datetime.date, as_json: bool = False) -> dict:
    """Unapplied cash of `entity` as of `as_of`: per customer, what their payments still hold unapplied,
    by days since the payment was received, against the unapplied cash account (AccountMapping role
    `unapplied_cash`, 2300 in the default chart).

    A payment's unapplied amount as of the date is its balance on the unapplied cash account in the ledger:
    the lines that carry its payment id (and no invoice id) of posted journals dated on or before the date,
    credit minus debit (the rest left at receipt, less applications and refunds of unapplied cash). Its age
    is counted from its first accounting date (the payment journal's, the date it was received), with the
    buckets of the AR aging: 0 days (received on the date) is `current`. Figures are positive for cash
    held; `unapplied_cash_balance` is the account's credit balance at the date, `difference` the balance
    minus the total, split into `without_payment` (lines on the account naming no payment) and
    `unknown_payments` (lines naming a payment this entity's billing documents do not have). `as_json` as
    in `ar_aging`.
    """
    report = _aging(entity=entity, role=AccountMapping.Role.UNAPPLIED_CASH, item_type=ItemBalance.ItemType.PAYMENT,
                    as_of=as_of, document=_PAYMENT_OF_ITEM, age_from="m.first_date", sign="-", as_json=as_json)
    control = report.pop("control")
    held = -control["balance"]
    return {**report, "unapplied_cash_balance": held, "difference": held - report["total"],
            "without_payment": -control["other"], "unknown_payments": -control["items"] - report["total"]}


# The open items of `ledger.selectors.item_balances_sql` (one row each) with their documents.
_INVOICE_ROWS = """
    WITH open_items AS ({moves})
    SELECT i.source_system, i.invoice_id, i.number, c.customer_id, c.name, i.issue_date, i.due_date,
           %(as_of)s::date - i.due_date AS days, o.amount, i.total
    FROM open_items o
    JOIN billing_sync_invoice i ON i.source_system = o.source_system AND i.invoice_id = o.item_id
                               AND i.entity_id = %(entity_id)s
    JOIN billing_sync_customer c ON c.id = i.customer_id
    {where}
    ORDER BY c.customer_id, i.due_date, i.invoice_id
"""

_PAYMENT_ROWS = """
    WITH open_items AS ({moves})
    SELECT p.source_system, p.payment_id, c.customer_id, c.name, o.first_date,
           %(as_of)s::date - o.first_date AS days, -o.amount, p.amount
    FROM open_items o
    JOIN billing_sync_payment p ON p.source_system = o.source_system AND p.payment_id = o.item_id
                               AND p.entity_id = %(entity_id)s
    JOIN billing_sync_customer c ON c.id = p.customer_id
    {where}
    ORDER BY c.customer_id, o.first_date, p.payment_id
"""


def ar_aging_invoices(*, entity: Entity, as_of: datetime.date, customer_pk: int | None = None):
    """The open invoices behind `ar_aging` (or one customer's), one dict each, by customer and due date:
    open amount as of the date (the ledger's, as in `ar_aging`), days past due and bucket. A generator
    that reads in chunks."""
    account = _item_account(entity, AccountMapping.Role.RECEIVABLE)
    moves = ledger_selectors.item_balances_sql(account=account, item_type=ItemBalance.ItemType.INVOICE)
    params = {**ledger_selectors.item_params(account=account, as_of=as_of), "entity_id": entity.pk,
              "customer": customer_pk}
    where = "WHERE i.customer_id = %(customer)s" if customer_pk is not None else ""
    for ss, invoice_id, number, customer_id, name, issued, due, days, amount, total in ledger_selectors.stream_rows(
            _INVOICE_ROWS.format(moves=moves, where=where), params):
        yield {"source_system": ss, "invoice_id": invoice_id, "number": number, "customer_id": customer_id,
               "customer_name": name, "issue_date": issued, "due_date": due, "days_past_due": days,
               "bucket": aging_bucket(days), "open_amount": amount, "total": total}


def unapplied_cash_payments(*, entity: Entity, as_of: datetime.date, customer_pk: int | None = None):
    """The payments behind `unapplied_cash_aging` (or one customer's), one dict each: unapplied amount as
    of the date, received (first accounting date), days since and bucket. A generator that reads in chunks."""
    account = _item_account(entity, AccountMapping.Role.UNAPPLIED_CASH)
    moves = ledger_selectors.item_balances_sql(account=account, item_type=ItemBalance.ItemType.PAYMENT)
    params = {**ledger_selectors.item_params(account=account, as_of=as_of), "entity_id": entity.pk,
              "customer": customer_pk}
    where = "WHERE p.customer_id = %(customer)s" if customer_pk is not None else ""
    for ss, payment_id, customer_id, name, received, days, amount, total in ledger_selectors.stream_rows(
            _PAYMENT_ROWS.format(moves=moves, where=where), params):
        yield {"source_system": ss, "payment_id": payment_id, "customer_id": customer_id, "customer_name": name,
               "received_on": received, "days_since": days, "bucket": aging_bucket(days),
               "unapplied_amount": amount, "amount": total}


# --------------------------------------------------------------------------------------------- statements
def customer_by_identity(source_system: str, customer_id: str) -> Customer | None:
    return Customer.objects.filter(source_system=source_system, customer_id=customer_id).first()


def customer_source_system(customer_id: str) -> str:
    """The source system of the one customer with this id ("" when none or several have it)."""
    systems = list(Customer.objects.filter(customer_id=customer_id).values_list("source_system", flat=True)[:2])
    return systems[0] if len(systems) == 1 else ""


def customers_search(user, text: str, *, limit: int = 20) -> list[Customer]:
    """Customers of `user`'s entities whose id is `text` or whose id or name contains it, by id."""
    customers = roles.scope(Customer.objects.all(), user, "entity_code")
    return list(customers.filter(Q(customer_id=text) | Q(customer_id__icontains=text) | Q(name__icontains=text))
                .order_by("customer_id", "source_system")[:limit])


def customer_entity_codes(customer: Customer) -> list[str]:
    """The entities a customer has documents in: the one it names, else those of its invoices and payments."""
    if customer.entity_code:
        return [customer.entity_code]
    codes = set(customer.invoices.values_list("entity__code", flat=True).distinct())
    codes |= set(customer.payments.values_list("entity__code", flat=True).distinct())
    return sorted(codes)


STATEMENT_TYPES = {"invoice": "invoice", "invoice_reversal": "invoice reversal", "payment": "payment",
                   "refund": "refund", "credit_note": "credit note", "write_off": "write-off"}


def customer_statement(*, customer: Customer, entity: Entity, date_from: datetime.date,
                       date_to: datetime.date) -> dict:
    """A customer's statement of account in `entity` from `date_from` to `date_to` (both included).

    Read from the ledger, like the agings: every posted journal of the customer's source system that moves
    their balance on the receivable or the unapplied cash account (the lines carrying their customer id),
    one statement line per journal: invoices (and the reversals that amendments and voids post) are
    debits; payments (what they allocated and what they left unapplied alike), credit notes and
    write-offs are credits; refunds are debits. An application of unapplied cash to an invoice moves
    nothing between the customer and us (it nets to zero), so it has no line. `opening_balance` is what
    the journals dated before `date_from` left; each line carries the running `balance`; the closing
    balance is the receivable less the unapplied cash of the customer at `date_to`. Lines are in accounting
    date order (then posting order).
    """
    receivable = _item_account(entity, AccountMapping.Role.RECEIVABLE)
    unapplied = _item_account(entity, AccountMapping.Role.UNAPPLIED_CASH)
    params = {"customer": customer.customer_id, "accounts": [receivable.pk, unapplied.pk],
              "source_system": customer.source_system, "entity": entity.pk, "date_from": date_from,
              "date_to": date_to}
    with ledger_selectors.report_snapshot():
        opening = _fetch("""
            SELECT coalesce(sum(l.debit - l.credit), 0)
            FROM ledger_journalline l JOIN ledger_journal j ON j.id = l.journal_id
            WHERE l.customer_id = %(customer)s AND l.account_id = ANY(%(accounts)s)
              AND j.source_system = %(source_system)s AND j.entity_id = %(entity)s AND j.status = 'posted'
              AND j.accounting_date < %(date_from)s
        """, params)[0][0]
        rows = _fetch("""
            SELECT j.id, j.accounting_date, j.kind, j.document_type, j.document_id, j.erp_document_ref,
                   sum(l.debit - l.credit) AS net,
                   min(l.invoice_id) FILTER (WHERE l.invoice_id <> '') AS first_invoice,
                   max(l.invoice_id) FILTER (WHERE l.invoice_id <> '') AS last_invoice,
                   min(inv.number) AS number
            FROM ledger_journalline l JOIN ledger_journal j ON j.id = l.journal_id
            LEFT JOIN billing_sync_invoice inv ON j.document_type = 'invoice'
                 AND inv.source_system = j.source_system AND inv.invoice_id = j.document_id
            WHERE l.customer_id = %(customer)s AND l.account_id = ANY(%(accounts)s)
              AND j.source_system = %(source_system)s AND j.entity_id = %(entity)s AND j.status = 'posted'
              AND j.accounting_date BETWEEN %(date_from)s AND %(date_to)s
            GROUP BY j.id
            HAVING sum(l.debit - l.credit) <> 0
            ORDER BY j.accounting_date, j.posted_at, j.id
        """, params)
    balance = opening
    lines = []
    total_debit = total_credit = ZERO
    for journal_id, on, kind, doc_type, doc_id, erp_ref, net, first_invoice, last_invoice, number in rows:
        balance += net
        debit, credit = (net, ZERO) if net > 0 else (ZERO, -net)
        total_debit += debit
        total_credit += credit
        lines.append({"date": on, "type": STATEMENT_TYPES.get(kind, kind.replace("_", " ")), "kind": kind,
                      "document_type": doc_type, "document": doc_id, "number": number or "",
                      "invoice_id": first_invoice if first_invoice == last_invoice else None,
                      "journal": journal_id, "erp_document_ref": erp_ref or "",
                      "debit": debit, "credit": credit, "balance": balance})
    return {"customer": customer, "entity": entity, "date_from": date_from, "date_to": date_to,
            "opening_balance": opening, "lines": lines, "total_debit": total_debit, "total_credit": total_credit,
            "closing_balance": balance}


# --------------------------------------------------------------------------------------------- reconciliation
def _iso(value):
    return value.isoformat().replace("+00:00", "Z") if value else None


def reconciliation_runs_for(user):
    """Reconciliation runs of `user`'s entities, newest first."""
    return roles.scope(ReconciliationRun.objects.select_related("entity").order_by("-started_at", "-id"), user,
                       "entity__code")


def reconciliation_run_resource(run: ReconciliationRun) -> dict:
    return {"id": str(run.pk), "entity": run.entity.code, "from": run.date_from.isoformat(),
            "to": run.date_to.isoformat(), "full": run.full, "subject": run.subject or None, "status": run.status,
            "requested_by": run.requested_by, "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
            "erp_modified_since": _iso(run.erp_modified_since), "matched": run.matched, "breaks": run.breaks,
            "resolved": run.resolved, "erp_requests": run.erp_requests, "erp_documents": run.erp_documents,
            "error": run.error or None}


class ReconciliationBreakFilter(django_filters.FilterSet):
    entity = django_filters.CharFilter(field_name="entity__code")
    code = django_filters.ChoiceFilter(choices=ReconciliationBreak.Code.choices)
    status = django_filters.ChoiceFilter(choices=ReconciliationBreak.Status.choices)
    document = django_filters.CharFilter()
    journal = django_filters.UUIDFilter(field_name="journal_id")
    run = django_filters.NumberFilter(field_name="last_seen_run_id")

    class Meta:
        model = ReconciliationBreak
        fields = ["entity", "code", "status", "document", "journal", "run"]


def reconciliation_breaks_for(user):
    """Reconciliation breaks of `user`'s entities, newest first."""
    return roles.scope(ReconciliationBreak.objects.select_related("entity").order_by("-opened_at", "-id"), user,
                       "entity__code")


def reconciliation_break_resource(brk: ReconciliationBreak) -> dict:
    return {"id": str(brk.pk), "code": brk.code, "status": brk.status, "entity": brk.entity.code,
            "account": brk.account or None, "period": brk.period or None,
            "journal": str(brk.journal_id) if brk.journal_id else None,
            "erp_document_ref": brk.erp_document_ref or None, "document": brk.document or None,
            "expected": brk.expected, "actual": brk.actual, "opened_at": _iso(brk.opened_at),
            "resolved_at": _iso(brk.resolved_at), "exception": str(brk.exception_id) if brk.exception_id else None,
            "resolution": brk.resolution or None, "resolved_by": brk.resolved_by or None,
            "accepted_by": brk.accepted_by or None, "opened_by_run": str(brk.opened_by_run_id),
            "last_seen_run": str(brk.last_seen_run_id),
            "resolved_by_run": str(brk.resolved_by_run_id) if brk.resolved_by_run_id else None,
            "adjusting_journal": str(brk.adjusting_journal_id) if brk.adjusting_journal_id else None}


UNRECONCILED = {"status": "unreconciled", "checked_at": None, "run": None}


def reconciliation_statuses(subjects) -> dict[str, dict]:
    """The reconciliation status of journals and documents by subject (`journal:<uuid>`,
    `invoice:<source_system>:<id>`, ...): `{"status": unreconciled | matched | break, "checked_at", "run"}`; a
    subject never checked is unreconciled. `checked_at` and `run` say when the status was last set (a run
    writes a mark only when the status changes)."""
    subjects = list(subjects)
    found = {m.subject: {"status": m.status, "checked_at": _iso(m.checked_at), "run": str(m.run_id)}
             for m in ReconciliationMark.objects.filter(subject__in=subjects)}
    return {subject: found.get(subject, dict(UNRECONCILED)) for subject in subjects}


def reconciliation_status(subject: str) -> dict:
    return reconciliation_statuses([subject])[subject]


def journal_reconciliation_statuses(journal_ids) -> dict:
    """`reconciliation_statuses` by journal id (the ledger's journal resources ask this, installed at start-up)."""
    by_subject = reconciliation_statuses([f"journal:{pk}" for pk in journal_ids])
    return {pk: by_subject[f"journal:{pk}"] for pk in journal_ids}


# ------------------------------------------------------------------------------------ period close
# The latest finished full run (not narrowed to one object) whose range covers each whole month: one index
# probe per month on recon_run_entity_idx (entity, -started_at).
_CLOSE_RUNS_SQL = """
SELECT m.first, r.id, r.started_at, r.finished_at, r.date_from, r.date_to
FROM unnest(%(firsts)s::date[], %(lasts)s::date[]) AS m(first, last)
LEFT JOIN LATERAL (
    SELECT r.id, r.started_at, r.finished_at, r.date_from, r.date_to FROM billing_sync_reconciliationrun r
    WHERE r.entity_id = %(entity)s AND r.full AND r.status = 'finished' AND r.subject = ''
      AND r.date_from <= m.first AND r.date_to >= m.last
    ORDER BY r.started_at DESC LIMIT 1) r ON true
"""

# The entity's open breaks (recon_break_entity_idx) with every date that places one in a month: its period
# (YYYY-MM), its journal's accounting date, and the dates of the document it names (the accounting dates of
# the document's journals, an invoice's issue date, a payment's receipt date). A break with none of these
# (an entity-wide figure) is placed by the range of the run that last saw it.
_CLOSE_BREAKS_SQL = r"""
WITH open AS (
    SELECT b.id, b.code, b.opened_at, b.exception_id, b.period, b.document, b.journal_id, b.account,
           b.erp_document_ref, j.accounting_date AS journal_date, r.date_from AS run_from, r.date_to AS run_to,
           split_part(b.document, ':', 1) AS doc_type, split_part(b.document, ':', 2) AS doc_source,
           substr(b.document, length(split_part(b.document, ':', 1)) + length(split_part(b.document, ':', 2)) + 3)
               AS doc_id
    FROM billing_sync_reconciliationbreak b
    JOIN billing_sync_reconciliationrun r ON r.id = b.last_seen_run_id
    LEFT JOIN ledger_journal j ON j.id = b.journal_id
    WHERE b.entity_id = %(entity)s AND b.status = 'open'
)
SELECT o.id, o.code, o.opened_at, o.exception_id, o.period, o.document, o.journal_id, o.account,
       o.erp_document_ref, o.run_from, o.run_to,
       ARRAY(
           SELECT to_date(o.period || '-01', 'YYYY-MM-DD') WHERE o.period ~ '^\d{4}-\d{2}$'
           UNION SELECT o.journal_date WHERE o.journal_date IS NOT NULL
           UNION SELECT dj.accounting_date FROM ledger_journal dj
                 WHERE o.document <> '' AND dj.source_system = o.doc_source AND dj.document_type = o.doc_type
                   AND dj.document_id = o.doc_id AND dj.entity_id = %(entity)s
           UNION SELECT i.issue_date FROM billing_sync_invoice i
                 WHERE o.doc_type = 'invoice' AND i.source_system = o.doc_source AND i.invoice_id = o.doc_id
           UNION SELECT (p.received_at AT TIME ZONE 'UTC')::date FROM billing_sync_payment p
                 WHERE o.doc_type = 'payment' AND p.source_system = o.doc_source AND p.payment_id = o.doc_id
       ) AS days
FROM open o
ORDER BY o.opened_at, o.id
"""
CLOSE_BREAK_SAMPLE = 20


def _month_bounds(year: int, month: int) -> tuple[datetime.date, datetime.date]:
    first = datetime.date(year, month, 1)
    following = datetime.date(year + month // 12, month % 12 + 1, 1)
    return first, following - datetime.timedelta(days=1)


def reconciliation_close_status(*, entity, months) -> dict:
    """What the close checks need of reconciliation, per month of `months` ((year, month) pairs) of `entity`.

    For each month: `run`, the latest finished full run covering the whole month ({id, started_at,
    finished_at, date_from, date_to}) or None; `open_breaks`, how many open breaks are dated in the month
    (see _CLOSE_BREAKS_SQL for how a break is dated), `by_code` ({code: n}) and `breaks`, the oldest few.
    Read-only; the reconciliation engine owns the tables.
    """
    months = sorted(set(months))
    bounds = {m: _month_bounds(*m) for m in months}
    out = {m: {"run": None, "open_breaks": 0, "by_code": {}, "breaks": []} for m in months}
    if not months:
        return out
    by_first = {first: m for m, (first, _) in bounds.items()}
    with connection.cursor() as cursor:
        cursor.execute(_CLOSE_RUNS_SQL, {"entity": entity.pk, "firsts": [b[0] for b in bounds.values()],
                                         "lasts": [b[1] for b in bounds.values()]})
        for first, run_id, started_at, finished_at, date_from, date_to in cursor.fetchall():
            if run_id is not None:
                out[by_first[first]]["run"] = {"id": run_id, "started_at": started_at, "finished_at": finished_at,
                                               "date_from": date_from, "date_to": date_to}
        cursor.execute(_CLOSE_BREAKS_SQL, {"entity": entity.pk})
        rows = cursor.fetchall()
    for (break_id, code, opened_at, exception_id, period, document, journal_id, account, erp_ref, run_from, run_to,
         days) in rows:
        for m, (first, last) in bounds.items():
            if days:
                inside = any(first <= day <= last for day in days)
            else:  # dated by nothing of its own: the months the run that last saw it covered
                inside = run_from <= last and run_to >= first
            if not inside:
                continue
            status = out[m]
            status["open_breaks"] += 1
            status["by_code"][code] = status["by_code"].get(code, 0) + 1
            if len(status["breaks"]) < CLOSE_BREAK_SAMPLE:
                status["breaks"].append({"id": break_id, "code": code, "opened_at": opened_at,
                                         "exception": exception_id, "period": period, "document": document,
                                         "journal": journal_id, "account": account, "erp_document_ref": erp_ref})
    return out
