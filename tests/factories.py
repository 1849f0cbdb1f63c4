"""Test data builders: event payloads as API.md defines them, with consistent amounts.

Every builder returns a plain dict (the JSON a source system would send); ids default to fresh unique
values so that tests never collide, and amounts are decimal strings.
"""
import itertools
import uuid
from decimal import Decimal

_counter = itertools.count(1)
SOURCE = "billing-prod"


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def envelope(type_: str, data: dict, *, entity="US01", event_id=None, source_system=SOURCE,
             occurred_at="2026-11-01T10:00:00Z", correlation_id=None) -> dict:
    body = {"schema_version": "1", "source_system": source_system, "event_id": event_id or uid("evt"),
            "type": type_, "occurred_at": occurred_at, "entity": entity, "data": data}
    if correlation_id:
        body["correlation_id"] = correlation_id
    return body


def customer(customer_id=None, *, version=1, name="Acme Corp", **kw) -> dict:
    return envelope("customer.upserted", {"customer_id": customer_id or uid("cus"), "name": name,
                                          "email": "ap@acme.test", "country": "US", "version": version}, **kw)


def money(value) -> str:
    return str(Decimal(value).quantize(Decimal("0.01")))


def invoice(invoice_id=None, *, customer_id, lines=None, version=1, type_="invoice.issued", currency="USD",
            issue_date="2026-11-01", due_date="2026-11-30", number=None, **kw) -> dict:
    """`lines` is a list of (amount, tax) or (amount, tax, revenue_account) tuples of strings."""
    lines = lines if lines is not None else [("100.00", "7.25")]
    out_lines = []
    subtotal = tax_total = Decimal("0")
    for index, spec in enumerate(lines):
        amount, tax = Decimal(spec[0]), Decimal(spec[1])
        line = {"line_id": f"li_{index}", "description": f"Line {index}", "amount": money(amount),
                "taxes": [{"jurisdiction": "US-CA", "rate": "0.0725", "amount": money(tax)}] if tax else []}
        if len(spec) > 2 and spec[2]:
            line["revenue_account"] = spec[2]
        out_lines.append(line)
        subtotal += amount
        tax_total += tax
    invoice_id = invoice_id or uid("inv")
    data = {"invoice_id": invoice_id, "number": number or f"INV-{next(_counter):05d}", "customer_id": customer_id,
            "currency": currency, "issue_date": issue_date, "due_date": due_date, "lines": out_lines,
            "subtotal": money(subtotal), "tax_total": money(tax_total), "total": money(subtotal + tax_total),
            "version": version}
    return envelope(type_, data, **kw)


def invoice_voided(invoice_id, *, reason="customer cancelled", **kw) -> dict:
    return envelope("invoice.voided", {"invoice_id": invoice_id, "reason": reason}, **kw)


def payment(payment_id=None, *, customer_id, amount, allocations=(), fee=None, currency="USD",
            received_at="2026-11-05T12:00:00Z", **kw) -> dict:
    data = {"payment_id": payment_id or uid("pay"), "customer_id": customer_id, "currency": currency,
            "amount": money(amount), "received_at": received_at, "method": "card",
            "allocations": [{"invoice_id": i, "amount": money(a)} for i, a in allocations]}
    if fee is not None:
        data["fee"] = money(fee)
    return envelope("payment.received", data, **kw)


def payment_applied(payment_id, allocations, **kw) -> dict:
    return envelope("payment.applied", {"payment_id": payment_id,
                                        "allocations": [{"invoice_id": i, "amount": money(a)} for i, a in allocations]},
                    **kw)


def refund(payment_id, amount, *, invoice_id=None, refund_id=None, currency="USD", **kw) -> dict:
    data = {"refund_id": refund_id or uid("re"), "payment_id": payment_id, "amount": money(amount),
            "currency": currency}
    if invoice_id:
        data["invoice_id"] = invoice_id
    return envelope("payment.refunded", data, **kw)


def credit_note(invoice_id, amount, *, tax="0", credit_note_id=None, currency="USD", **kw) -> dict:
    taxes = [{"jurisdiction": "US-CA", "amount": money(tax)}] if Decimal(tax) else []
    return envelope("credit_note.issued", {"credit_note_id": credit_note_id or uid("cn"), "invoice_id": invoice_id,
                                           "currency": currency, "amount": money(amount), "taxes": taxes,
                                           "reason": "service credit"}, **kw)


def write_off(invoice_id, amount, *, write_off_id=None, currency="USD", **kw) -> dict:
    return envelope("write_off.requested", {"write_off_id": write_off_id or uid("wo"), "invoice_id": invoice_id,
                                            "currency": currency, "amount": money(amount), "reason": "uncollectible"},
                    **kw)
