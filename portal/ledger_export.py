"""Ledger export for analysts and auditors: an entity's posted journals for a period, as CSV (one row per line)
or as a Beancount file (plain-text double-entry accounting, checked by Beancount's own `bean-check`). Both
are generators of text chunks over `ledger.selectors.posted_lines` (one snapshot, read in chunks, so a busy
month streams in flat memory); the API, the page and `manage.py export_ledger` write them out. The Beancount
file opens every account of the entity on the first day of the period, named by type and
code (`Assets:1200-Accounts-Receivable`: asset -> Assets, liability -> Liabilities, equity -> Equity,
income and contra-income -> Income, expense -> Expenses), books the balances that journals dated before
the period left as one opening transaction on that day, then one transaction per posted journal (metadata:
journal id, ERP reference, event, kind, document; each line's invoice, payment, customer, jurisdiction and
memo on its posting), in the entity's currency, debits positive and credits negative. It ends with a
`balance` assertion per account on the day after the period: the trial balance as of the last day, which
Beancount checks against its own sums of the file."""
from __future__ import annotations

import csv
import datetime
import io
import re
import unicodedata
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal

from django.db import transaction

from audit import services as audit
from config.money import quantum
from ledger import selectors

FORMATS = ("csv", "beancount")
ROOTS = {"asset": "Assets", "liability": "Liabilities", "equity": "Equity", "income": "Income",
         "contra_income": "Income", "expense": "Expenses"}
CSV_COLUMNS = [*selectors.EXPORT_LINE_COLUMNS, "currency"]
_CHUNK_LINES = 500


def filename(entity, date_from: datetime.date, date_to: datetime.date, fmt_name: str) -> str:
    extension = "csv" if fmt_name == "csv" else "beancount"
    return f"ledger-{entity.code}-{date_from.isoformat()}-{date_to.isoformat()}.{extension}"


def content_type(fmt_name: str) -> str:
    return "text/csv; charset=utf-8" if fmt_name == "csv" else "text/plain; charset=utf-8"


def record_export(entity, date_from: datetime.date, date_to: datetime.date, fmt_name: str, *, actor,
                  via: str) -> None:
    """Audit that `actor` exported the entity's ledger for the period (API, page or command: `via`), before the
    first byte goes out: auditors ask who took the books out, and when."""
    with transaction.atomic():
        audit.record(actor=actor, action="ledger.exported", object_type="entity", object_id=entity.code,
                     after={"from": date_from.isoformat(), "to": date_to.isoformat(), "format": fmt_name,
                            "via": via})


def chunks(entity, date_from: datetime.date, date_to: datetime.date, fmt_name: str) -> Iterator[str]:
    if fmt_name == "csv":
        return csv_chunks(entity, date_from, date_to)
    if fmt_name == "beancount":
        return beancount_chunks(entity, date_from, date_to)
    raise ValueError(f"unknown format {fmt_name!r}: one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------------------------- CSV
def _money_text(currency: str):
    """`config.money.fmt` for Decimals with the currency's quantum looked up once (an export has many lines)."""
    step = quantum(currency)
    return lambda amount: str(amount.quantize(step, rounding=ROUND_HALF_UP))


def _cell(value, money) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return money(value)
    return str(value)


def csv_chunks(entity, date_from: datetime.date, date_to: datetime.date) -> Iterator[str]:
    """The period's posted lines as CSV (CSV_COLUMNS), a few hundred lines per chunk."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    currency = entity.currency
    money = _money_text(currency)
    for n, row in enumerate(selectors.posted_lines(entity=entity, date_from=date_from, date_to=date_to), start=1):
        writer.writerow([_cell(value, money) for value in row] + [currency])
        if n % _CHUNK_LINES == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


# --------------------------------------------------------------------------------------------- Beancount
def account_name(code: str, name: str, type_: str) -> str:
    """The Beancount name of an account: `Assets:1200-Accounts-Receivable` (ASCII, one component after the
    root, each word capitalised, starting with a capital or a digit as Beancount requires)."""
    text = unicodedata.normalize("NFKD", f"{code} {name}").encode("ascii", "ignore").decode()
    words = re.findall(r"[A-Za-z0-9]+", text) or ["Account"]
    component = "-".join(word[:1].upper() + word[1:] for word in words)
    if not component[0].isupper() and not component[0].isdigit():
        component = "A" + component
    return f"{ROOTS[type_]}:{component}"


def _string(value) -> str:
    """A Beancount string literal: double-quoted, backslashes and quotes escaped, on one line."""
    text = " ".join(str(value).split())
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _amount(debit, credit, currency: str, money) -> str:
    return f"{money(debit - credit)} {currency}"


def beancount_chunks(entity, date_from: datetime.date, date_to: datetime.date) -> Iterator[str]:
    """The period as a Beancount file (see the module's docstring), a few hundred lines per chunk.

    The opening balances, the journals and the closing balances are read in one snapshot, so a journal
    posted while the file is written cannot make them disagree."""
    with selectors.report_snapshot():
        yield from _beancount(entity, date_from, date_to)


def _beancount(entity, date_from: datetime.date, date_to: datetime.date) -> Iterator[str]:
    currency = entity.currency
    money = _money_text(currency)
    accounts = list(selectors.accounts_of(entity))
    names = {a.code: account_name(a.code, a.name, a.type) for a in accounts}
    opening = selectors.trial_balance(entity=entity, as_of=date_from - datetime.timedelta(days=1))
    closing = selectors.trial_balance(entity=entity, as_of=date_to)
    head = [
        f"; Tieout ledger export: {entity.code} ({entity.name}), posted journals dated {date_from} to {date_to}.",
        f"; Check it with: bean-check {entity.code}.beancount",
        f"option \"title\" {_string(f'{entity.name} ({entity.code}) {date_from} to {date_to}')}",
        f"option \"operating_currency\" \"{currency}\"",
        "",
    ]
    head += [f"{date_from} open {names[a.code]} {currency}" for a in accounts]
    head.append("")
    carried = [row for row in opening["accounts"] if row["balance"]]
    if carried:
        head.append(f"{date_from} * \"Opening balances: posted journals dated before {date_from}\" #opening")
        head += [f"  {names[row['code']]}  {_amount(row['debit'], row['credit'], currency, money)}" for row in carried]
        head.append("")
    yield "\n".join(head) + "\n"

    out: list[str] = []
    current = None
    for (journal_id, on, _posted_at, kind, source_system, document_type, document_id, description, erp_ref,
         event_id, _line_no, code, _name, _type, debit, credit, customer_id, invoice_id, payment_id,
         jurisdiction, memo) in selectors.posted_lines(entity=entity, date_from=date_from, date_to=date_to):
        if journal_id != current:
            if len(out) > _CHUNK_LINES:
                yield "\n".join(out) + "\n"
                out = []
            current = journal_id
            out.append("")
            out.append(f"{on} * {_string(description or kind)}")
            out.append(f"  journal: {_string(journal_id)}")
            if erp_ref:
                out.append(f"  erp_ref: {_string(erp_ref)}")
            if event_id:
                out.append(f"  event: {_string(event_id)}")
            out.append(f"  kind: {_string(kind)}")
            if document_id:
                out.append(f"  document: {_string(f'{document_type}:{source_system}:{document_id}')}")
        out.append(f"  {names[code]}  {_amount(debit, credit, currency, money)}")
        for key, value in (("invoice", invoice_id), ("payment", payment_id), ("customer", customer_id),
                           ("jurisdiction", jurisdiction), ("memo", memo)):
            if value:
                out.append(f"    {key}: {_string(value)}")
    # Beancount checks a balance at the start of its date: the day after the period is its end.
    day_after = date_to + datetime.timedelta(days=1)
    out.append("")
    out += [f"{day_after} balance {names[row['code']]}  {money(row['balance'])} {currency}"
            for row in closing["accounts"]]
    yield "\n".join(out) + "\n"
