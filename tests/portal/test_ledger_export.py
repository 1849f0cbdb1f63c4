"""The ledger export (GET /api/v1/ledger/export and `manage.py export_ledger`): the Beancount file passes
Beancount's own checker (`beancount.loader` and the `bean-check` script) and the balances Beancount computes
(beancount.core.realization) are the trial balance at the period's end, and the period's movements the trial
balance's difference over the period; a tampered file fails the checker; the CSV has every posted line of the
period and nothing else, with the journal's metadata."""
import csv
import datetime
import io
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from beancount import loader
from beancount.core import data, realization
from django.core.management import call_command

from audit.models import AuditEntry
from ledger import selectors
from ledger.models import JournalLine
from portal import ledger_export
from tests.portal import report_history as h

pytestmark = pytest.mark.django_db

BEAN_CHECK = Path(sys.executable).parent / "bean-check"
EXPORT = "/api/v1/ledger/export"
PERIOD = {"from": "2026-11-01", "to": "2026-11-30"}


@pytest.fixture
def run(django_capture_on_commit_callbacks):
    def call(fn, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(**kwargs)
    return call


@pytest.fixture
def books(entity, integration, finance, controller, run):
    """October and November: invoices with tax, payments (one partly unapplied), a refund, a credit note, an
    approved write-off, a manual journal with quotes in its description, and a December invoice."""
    h.customer(integration, "cus_x", name='Quote "Q" Ltd')
    h.invoice(integration, "inv_oct", "cus_x", "100.00", tax="7.25", issued="2026-10-05", due="2026-11-04")
    h.payment(integration, "pay_oct", "cus_x", "50.00", on="2026-10-20", allocations=[("inv_oct", "50.00")])
    h.invoice(integration, "inv_nov", "cus_x", "300.00", tax="21.75", issued="2026-11-02", due="2026-12-02")
    h.payment(integration, "pay_nov", "cus_x", "400.00", on="2026-11-10",
              allocations=[("inv_oct", "57.25"), ("inv_nov", "300.00")])
    h.refund(integration, "pay_nov", "12.00", on="2026-11-12")
    h.credit_note(integration, "inv_nov", "10.00", on="2026-11-14")
    h.write_off(integration, controller, "inv_nov", "5.00", on="2026-11-16")
    h.manual_journal(run, controller, entity=entity, on=datetime.date(2026, 11, 30),
                     lines=[("6100", "33.33", "", 'fees "accrued"'), ("2300", "", "33.33", "")],
                     description='Accrual \\ "November" fees')
    h.invoice(integration, "inv_dec", "cus_x", "999.00", issued="2026-12-01", due="2026-12-31")
    return entity


def _export(api, fmt: str, **period) -> str:
    response = api.get(EXPORT, entity="US01", format=fmt, **(period or PERIOD))
    assert response.status_code == 200, response.content
    assert response.streaming
    return b"".join(response.streaming_content).decode()


def _balances(entries, accounts) -> dict:
    root = realization.realize(entries)
    out = {}
    for name in accounts:
        account = realization.get(root, name)
        units = account.balance.get_currency_units("USD") if account is not None else None
        out[name] = units.number if units else Decimal("0")
    return out


def test_beancount_file_passes_bean_check_and_balances_are_the_trial_balance(books, finance, tmp_path):
    text = _export(finance, "beancount")
    path = tmp_path / "US01.beancount"
    path.write_text(text)
    entries, errors, options = loader.load_file(str(path))
    assert errors == [], [e.message for e in errors]
    assert options["operating_currency"] == ["USD"]
    result = subprocess.run([str(BEAN_CHECK), str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

    accounts = {a.code: ledger_export.account_name(a.code, a.name, a.type) for a in selectors.accounts_of(books)}
    assert accounts["1200"] == "Assets:1200-Accounts-Receivable"
    assert accounts["2300"] == "Liabilities:2300-Unapplied-Cash"
    assert accounts["4900"] == "Income:4900-Sales-Returns-And-Allowances"
    assert accounts["6200"] == "Expenses:6200-Bad-Debt-Expense"
    opened = {e.account for e in entries if isinstance(e, data.Open)}
    assert opened == set(accounts.values())

    # Everything Beancount sums (opening balances and the month) is the trial balance at the month's end.
    closing = selectors.trial_balance(entity=books, as_of=datetime.date(2026, 11, 30))
    computed = _balances(entries, accounts.values())
    assert {code: computed[name] for code, name in accounts.items()} == {
        row["code"]: row["balance"] for row in closing["accounts"]}
    assert computed[accounts["1200"]] == Decimal("6.75")  # inv_nov: 321.75 - 300 paid - 10 credited - 5 written off
    # The month alone (without the opening transaction) is the trial balance's movement over the month.
    month = [e for e in entries if not (isinstance(e, data.Transaction) and "opening" in e.tags)]
    moved = _balances(month, accounts.values())
    opening = {row["code"]: row["balance"] for row in
               selectors.trial_balance(entity=books, as_of=datetime.date(2026, 10, 31))["accounts"]}
    assert {code: moved[name] for code, name in accounts.items()} == {
        row["code"]: row["balance"] - opening.get(row["code"], Decimal("0")) for row in closing["accounts"]}

    journals = [e for e in entries if isinstance(e, data.Transaction) and "opening" not in e.tags]
    assert len(journals) == 6  # inv_nov, pay_nov, refund, credit note, write-off, manual; not October, not December
    manual = next(e for e in journals if e.meta["kind"] == "manual")
    assert manual.narration == 'Accrual \\ "November" fees'
    assert manual.meta["erp_ref"].startswith("JE-US01-2026-")
    invoice = next(e for e in journals if e.meta["kind"] == "invoice")
    assert invoice.meta["document"] == "invoice:billing-prod:inv_nov" and invoice.meta["event"]
    assert {p.meta.get("invoice") for p in invoice.postings} == {"inv_nov"}


def test_a_tampered_beancount_file_fails_the_checker(books, finance, tmp_path):
    text = _export(finance, "beancount")
    path = tmp_path / "tampered.beancount"
    path.write_text(text.replace("-21.75 USD", "-21.76 USD", 1))
    _entries, errors, _options = loader.load_file(str(path))
    assert errors  # the invoice's transaction no longer balances (and the tax account's assertion fails)
    assert subprocess.run([str(BEAN_CHECK), str(path)], capture_output=True, timeout=120).returncode != 0


def test_csv_export_has_every_posted_line_of_the_period(books, auditor):
    rows = list(csv.DictReader(io.StringIO(_export(auditor, "csv"))))
    assert list(rows[0]) == ledger_export.CSV_COLUMNS
    posted = JournalLine.objects.filter(journal__entity=books, journal__status="posted",
                                        journal__accounting_date__range=("2026-11-01", "2026-11-30"))
    assert len(rows) == posted.count() > 0
    assert {r["accounting_date"][:7] for r in rows} == {"2026-11"}
    assert sum(Decimal(r["debit"]) for r in rows) == sum(Decimal(r["credit"]) for r in rows)
    tax = [r for r in rows if r["account"] == "2200" and r["invoice_id"] == "inv_nov" and r["kind"] == "invoice"]
    assert len(tax) == 1 and tax[0]["credit"] == "21.75" and tax[0]["jurisdiction"] == "US-CA"
    assert tax[0]["currency"] == "USD" and tax[0]["erp_document_ref"] and tax[0]["event_id"]
    manual = [r for r in rows if r["kind"] == "manual"]
    assert [(r["account"], r["debit"], r["credit"], r["memo"]) for r in manual] == [
        ("6100", "33.33", "0.00", 'fees "accrued"'), ("2300", "0.00", "33.33", "")]


def test_management_command_writes_the_file(books, tmp_path):
    out = tmp_path / "nov.beancount"
    stdout = io.StringIO()
    call_command("export_ledger", "--entity", "US01", "--from", "2026-11-01", "--to", "2026-11-30", "--format",
                 "beancount", str(out), stdout=stdout)
    assert stdout.getvalue().strip().splitlines()[-1].startswith(f"wrote {out}: US01 2026-11-01..2026-11-30")
    _entries, errors, _options = loader.load_file(str(out))
    assert errors == []
    csv_out = tmp_path / "nov.csv"
    call_command("export_ledger", "--entity", "US01", "--from", "2026-11-01", "--to", "2026-11-30", str(csv_out),
                 stdout=io.StringIO())
    assert csv_out.read_text().splitlines()[0] == ",".join(ledger_export.CSV_COLUMNS)
    entries = AuditEntry.objects.filter(action="ledger.exported", object_id="US01").order_by("id")
    assert [(e.after["format"], e.after["via"], e.after["from"]) for e in entries] == [
        ("beancount", "command", "2026-11-01"), ("csv", "command", "2026-11-01")]


def test_every_export_is_audited_with_who_and_what(books, auditor):
    _export(auditor, "csv")
    [entry] = AuditEntry.objects.filter(action="ledger.exported")
    assert entry.actor == "aude-auditor" and entry.object_type == "entity" and entry.object_id == "US01"
    assert entry.after == {"from": "2026-11-01", "to": "2026-11-30", "format": "csv", "via": "api"}
