"""The inbound event schema (API.md), checked by hand-written validators for speed and precise paths:
`validate_event(payload)` returns field errors (`{"field": "data.lines[0].amount", "message": ...}`), empty
when well-formed. Sums are checked exactly in Decimal (lines to `subtotal`, taxes to `tax_total`, their sum to
`total`, allocations within the payment); unknown fields are ignored so sources can add some; rules needing
the database (does the invoice exist, is the period open) are not checked here."""
import datetime
from decimal import Decimal

from config.money import ZERO, parse_money

SCHEMA_VERSIONS = {"1"}
EVENT_TYPES = {
    "customer.upserted", "invoice.issued", "invoice.amended", "invoice.voided", "payment.received",
    "payment.applied", "payment.refunded", "credit_note.issued", "write_off.requested",
}
_MISSING = object()


class _Checker:
    def __init__(self):
        self.errors: list[dict] = []

    def error(self, field: str, message: str) -> None:
        self.errors.append({"field": field, "message": message})

    def get(self, obj: dict, key: str, path: str, *, required: bool = True):
        value = obj.get(key, _MISSING)
        if value is _MISSING or value is None:
            if required:
                self.error(f"{path}{key}", "This field is required.")
            return _MISSING
        return value

    def string(self, obj, key, path, *, required=True, max_length=200, allow_empty=False):
        value = self.get(obj, key, path, required=required)
        if value is _MISSING:
            return None
        if not isinstance(value, str):
            self.error(f"{path}{key}", "Must be a string.")
            return None
        if not allow_empty and not value.strip():
            self.error(f"{path}{key}", "Must not be blank.")
            return None
        if len(value) > max_length:
            self.error(f"{path}{key}", f"Must be at most {max_length} characters.")
            return None
        return value

    def integer(self, obj, key, path, *, required=True, minimum=1):
        value = self.get(obj, key, path, required=required)
        if value is _MISSING:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(f"{path}{key}", "Must be an integer.")
            return None
        if value < minimum:
            self.error(f"{path}{key}", f"Must be at least {minimum}.")
            return None
        return value

    def currency(self, obj, key, path):
        value = self.string(obj, key, path, max_length=3)
        if value is None:
            return None
        if len(value) != 3 or not value.isascii() or not value.isalpha() or not value.isupper():
            self.error(f"{path}{key}", "Must be an ISO 4217 code in upper case, such as USD.")
            return None
        return value

    def money(self, obj, key, path, currency, *, required=True, positive=False, allow_negative=False):
        value = self.get(obj, key, path, required=required)
        if value is _MISSING:
            return None
        try:
            amount = parse_money(value, currency)
        except ValueError as exc:
            self.error(f"{path}{key}", f"Money {exc}.")
            return None
        if positive and amount <= ZERO:
            self.error(f"{path}{key}", "Must be greater than 0.")
            return None
        if not allow_negative and amount < ZERO:
            self.error(f"{path}{key}", "Must not be negative.")
            return None
        return amount

    def rate(self, obj, key, path):
        value = self.get(obj, key, path)
        if value is _MISSING:
            return None
        try:
            rate = parse_money(value, None)
        except ValueError as exc:
            self.error(f"{path}{key}", f"Rate {exc}.")
            return None
        if rate < ZERO:
            self.error(f"{path}{key}", "Must not be negative.")
        return rate

    def date(self, obj, key, path):
        value = self.string(obj, key, path, max_length=10)
        if value is None:
            return None
        try:
            if len(value) != 10:
                raise ValueError
            return datetime.date.fromisoformat(value)
        except ValueError:
            self.error(f"{path}{key}", "Must be a date in YYYY-MM-DD form.")
            return None

    def timestamp(self, obj, key, path):
        value = self.string(obj, key, path, max_length=40)
        if value is None:
            return None
        try:
            parsed = datetime.datetime.fromisoformat(value)
        except ValueError:
            self.error(f"{path}{key}", "Must be an RFC 3339 timestamp with offset.")
            return None
        if parsed.tzinfo is None or "T" not in value.upper():
            self.error(f"{path}{key}", "Must be an RFC 3339 timestamp with offset.")
            return None
        return parsed

    def items(self, obj, key, path, *, required=True, allow_empty=False, max_items=1000):
        value = self.get(obj, key, path, required=required)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            self.error(f"{path}{key}", "Must be a list.")
            return []
        if not value and not allow_empty:
            self.error(f"{path}{key}", "Must not be empty.")
        if len(value) > max_items:
            self.error(f"{path}{key}", f"Must have at most {max_items} items.")
            return []
        out = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                self.error(f"{path}{key}[{index}]", "Must be an object.")
            else:
                out.append((f"{path}{key}[{index}].", item))
        return out


def _customer(c: _Checker, d: dict, p: str):
    c.string(d, "customer_id", p)
    c.string(d, "name", p, max_length=300)
    c.string(d, "email", p, required=False, max_length=300, allow_empty=True)
    country = c.string(d, "country", p, required=False, max_length=2, allow_empty=True)
    if country and (len(country) != 2 or not country.isalpha()):
        c.error(f"{p}country", "Must be an ISO 3166-1 alpha-2 code.")
    c.integer(d, "version", p)


def _invoice(c: _Checker, d: dict, p: str):
    c.string(d, "invoice_id", p)
    c.string(d, "number", p, max_length=100)
    c.string(d, "customer_id", p)
    currency = c.currency(d, "currency", p)
    issue = c.date(d, "issue_date", p)
    due = c.date(d, "due_date", p)
    if issue and due and due < issue:
        c.error(f"{p}due_date", "Must not be before issue_date.")
    c.integer(d, "version", p)
    line_sum = tax_sum = ZERO
    sums_ok = True
    seen = set()
    for lp, line in c.items(d, "lines", p):
        line_id = c.string(line, "line_id", lp)
        if line_id is not None:
            if line_id in seen:
                c.error(f"{lp}line_id", "Duplicate line_id.")
            seen.add(line_id)
        c.string(line, "description", lp, max_length=500, allow_empty=True, required=False)
        amount = c.money(line, "amount", lp, currency)
        if amount is None:
            sums_ok = False
        else:
            line_sum += amount
        c.string(line, "revenue_account", lp, required=False, max_length=30)
        for tp, tax in c.items(line, "taxes", lp, required=False, allow_empty=True):
            c.string(tax, "jurisdiction", tp, max_length=60)
            c.rate(tax, "rate", tp)
            tax_amount = c.money(tax, "amount", tp, currency)
            if tax_amount is None:
                sums_ok = False
            else:
                tax_sum += tax_amount
    subtotal = c.money(d, "subtotal", p, currency)
    tax_total = c.money(d, "tax_total", p, currency)
    total = c.money(d, "total", p, currency)
    if currency is None:
        return
    if sums_ok and subtotal is not None and line_sum != subtotal:
        c.error(f"{p}subtotal", f"Lines sum to {line_sum}, not {subtotal}.")
    if sums_ok and tax_total is not None and tax_sum != tax_total:
        c.error(f"{p}tax_total", f"Taxes sum to {tax_sum}, not {tax_total}.")
    if subtotal is not None and tax_total is not None and total is not None and subtotal + tax_total != total:
        c.error(f"{p}total", f"subtotal + tax_total is {subtotal + tax_total}, not {total}.")


def _allocations(c: _Checker, d: dict, p: str, currency, *, required=True) -> Decimal | None:
    total = ZERO
    ok = True
    seen = set()
    for ap, alloc in c.items(d, "allocations", p, required=required, allow_empty=not required):
        invoice_id = c.string(alloc, "invoice_id", ap)
        if invoice_id is not None:
            if invoice_id in seen:
                c.error(f"{ap}invoice_id", "Allocate to each invoice once per event.")
            seen.add(invoice_id)
        amount = c.money(alloc, "amount", ap, currency, positive=True)
        if amount is None:
            ok = False
        else:
            total += amount
    return total if ok else None


def _payment_received(c: _Checker, d: dict, p: str):
    c.string(d, "payment_id", p)
    c.string(d, "customer_id", p)
    currency = c.currency(d, "currency", p)
    amount = c.money(d, "amount", p, currency, positive=True)
    fee = c.money(d, "fee", p, currency, required=False)
    c.timestamp(d, "received_at", p)
    c.string(d, "method", p, max_length=50)
    allocated = _allocations(c, d, p, currency, required=False)
    if amount is not None and fee is not None and fee > amount:
        c.error(f"{p}fee", "Must not exceed amount.")
    if amount is not None and allocated is not None and allocated > amount:
        c.error(f"{p}allocations", f"Allocations total {allocated}, more than the payment's {amount}.")


def _payment_applied(c: _Checker, d: dict, p: str):
    c.string(d, "payment_id", p)
    _allocations(c, d, p, None)


def _payment_refunded(c: _Checker, d: dict, p: str):
    c.string(d, "refund_id", p)
    c.string(d, "payment_id", p)
    currency = c.currency(d, "currency", p)
    c.money(d, "amount", p, currency, positive=True)
    c.string(d, "invoice_id", p, required=False)


def _credit_note(c: _Checker, d: dict, p: str):
    c.string(d, "credit_note_id", p)
    c.string(d, "invoice_id", p)
    currency = c.currency(d, "currency", p)
    c.money(d, "amount", p, currency, positive=True)
    for tp, tax in c.items(d, "taxes", p, allow_empty=True):
        c.string(tax, "jurisdiction", tp, max_length=60)
        c.money(tax, "amount", tp, currency)
    c.string(d, "reason", p, max_length=500)


def _write_off(c: _Checker, d: dict, p: str):
    c.string(d, "write_off_id", p)
    c.string(d, "invoice_id", p)
    currency = c.currency(d, "currency", p)
    c.money(d, "amount", p, currency, positive=True)
    c.string(d, "reason", p, max_length=500)


def _voided(c: _Checker, d: dict, p: str):
    c.string(d, "invoice_id", p)
    c.string(d, "reason", p, max_length=500)


DATA_VALIDATORS = {
    "customer.upserted": _customer,
    "invoice.issued": _invoice,
    "invoice.amended": _invoice,
    "invoice.voided": _voided,
    "payment.received": _payment_received,
    "payment.applied": _payment_applied,
    "payment.refunded": _payment_refunded,
    "credit_note.issued": _credit_note,
    "write_off.requested": _write_off,
}


def validate_event(payload) -> list[dict]:
    c = _Checker()
    if not isinstance(payload, dict):
        c.error("non_field_errors", "The event must be a JSON object.")
        return c.errors
    version = c.string(payload, "schema_version", "", max_length=10)
    if version is not None and version not in SCHEMA_VERSIONS:
        c.error("schema_version", f"Unsupported schema version; supported: {', '.join(sorted(SCHEMA_VERSIONS))}.")
    c.string(payload, "source_system", "", max_length=100)
    c.string(payload, "event_id", "", max_length=200)
    event_type = c.string(payload, "type", "", max_length=40)
    if event_type is not None and event_type not in EVENT_TYPES:
        c.error("type", f"Unknown event type {event_type!r}.")
        event_type = None
    c.timestamp(payload, "occurred_at", "")
    entity = c.string(payload, "entity", "", max_length=20)
    if entity is not None and not entity.replace("_", "").replace("-", "").isalnum():
        c.error("entity", "Must be an entity code (letters, digits, - and _).")
    c.string(payload, "correlation_id", "", required=False, max_length=128)
    data = c.get(payload, "data", "")
    if data is not _MISSING:
        if not isinstance(data, dict):
            c.error("data", "Must be an object.")
        elif event_type is not None:
            DATA_VALIDATORS[event_type](c, data, "data.")
    return c.errors
