"""Reconciliation against each vendor's stand-in (issue #12's acceptance): the engine
(`billing_sync.services.reconciliation_run`) reads the ERP back through the real connector of ERPNext, Odoo (both
APIs) and NetSuite. A small billing history goes through the API, so its journals are posted for real into the
stand-in; a full run finds nothing; then the ERP is changed as a person would (the stand-in's helpers): a
document's amount edited, a document cancelled (voided), deleted, a manual entry on the receivable account, a
duplicate of a journal's document, a posting date moved. Each gives exactly one break of its code, with its
expected and actual values and objects, and its exception in the queue; after the fix finance would make (the
document restored, the manual entry reversed, the duplicate deleted, the lost or cancelled journal re-posted
through the break's repost action, which looks up before sending) a later run resolves the break and its
exception ("resolved by run N"). Incremental runs read only what the ERP changed since the last range run.

The built-in ERP is our own records (its documents are our posted journals, immutable in the database): an ERP
document edited, cancelled, deleted or duplicated, or an entry booked in the ERP without Tieout, cannot happen
there (a change to a posted journal is the billing ↔ ledger side's `journal_amount_mismatch`, tested in
test_reconciliation.py), and it posts every journal as it is booked, batch mode or not. What can happen is
tested: a clean history matches in full and incremental runs.

How the engine meets each connector's read-back is tested too: the ERP's own account names mapped back to our
codes, small pages (every document read once, every request counted in the run), a read-back that keeps failing
(the run fails and opens nothing), a month only the ERP moved in, batch documents, and Odoo's unnumbered drafts.
"""
import datetime
from dataclasses import dataclass
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.contrib.auth import get_user_model
from django.db import transaction

from billing_sync import services
from billing_sync.models import ReconciliationBreak, ReconciliationMark, ReconciliationRun
from exceptions_queue import services as queue
from exceptions_queue.models import ExceptionRecord
from ledger import services as ledger
from ledger.connectors import netsuite
from ledger.models import ErpBatch, Journal
from tests import factories as f
from tests.billing_sync.test_reconciliation import assert_resolved_by
from tests.fixtures import erpnext_configure
from tests.helpers import send
from tests.standins.erpnext import ErpNextStandin
from tests.standins.netsuite import NetSuiteStandin
from tests.standins.odoo import ACCOUNTS as ODOO_ACCOUNTS
from tests.standins.odoo import OdooStandin

pytestmark = pytest.mark.django_db
NOV = (datetime.date(2026, 11, 1), datetime.date(2026, 11, 30))
SS = f.SOURCE
# A bank account the ERP has and Tieout does not map: the other side of a manual entry on the receivable.
BANK = "1000"
VENDORS = ["erpnext", "odoo-json2", "odoo-jsonrpc", "netsuite"]


# ------------------------------------------------------------------------------------------------ the vendors
@dataclass
class Vendor:
    """One vendor's stand-in and the changes a person makes in its books, by our ERP document reference."""

    name: str
    server: object
    names: dict  # our account code -> the ERP's name, where the ERP's chart has its own

    def account(self, code: str):
        """The ERP's name of our account (Odoo's stand-in helpers take its account codes)."""
        erp_name = self.names.get(code, code)
        if self.name.startswith("odoo") and erp_name.startswith("id:"):
            return next(c for c, i in self.server.accounts.items() if i == int(erp_name[3:]))
        return erp_name

    # -------------------------------------------------------------- documents
    def native(self, ref: str):
        """The stand-in's key of a document: ERPNext name, Odoo move id, NetSuite tranId."""
        if self.name.startswith("odoo"):
            return next(m["id"] for m in self.server.moves.values() if m["name"] == ref)
        return ref

    def edit_amount(self, ref: str, delta: str) -> None:
        self.server.edit_amount(self.native(ref), delta)

    def cancel(self, ref: str) -> None:
        if self.name == "netsuite":
            self.server.void(ref)
        else:
            self.server.cancel(self.native(ref))

    def delete(self, ref: str) -> None:
        self.server.delete(self.native(ref))

    def set_date(self, ref: str, day: str) -> None:
        if self.name == "erpnext":
            self.server.set_posting_date(ref, day)
        else:
            self.server.set_date(self.native(ref), day)

    def duplicate(self, ref: str) -> str:
        """A second posted document copying `ref` (our reference with it); its ERP reference."""
        copy = self.server.duplicate(self.native(ref))
        if self.name.startswith("odoo"):
            return self.server.moves[copy]["name"]
        return copy["tranId"] if self.name == "netsuite" else copy

    def manual_entry(self, *, debit: str, credit: str, amount: str, day: str) -> None:
        """An entry a person books in the ERP, without our reference (`debit` and `credit`: our account codes, or
        accounts only the ERP has)."""
        debit, credit = self.account(debit), self.account(credit)
        if self.name == "erpnext":
            self.server.add_manual_entry(account=debit, against=credit, amount=amount, posting_date=day)
        elif self.name == "netsuite":
            self.server.add_manual_entry(account=debit, against=credit, amount=amount, tran_date=day)
        else:
            self.server.add_manual_entry(account=debit, against=credit, amount=amount, date=day)

    def live_documents(self, journal: Journal) -> list[str]:
        """The ERP references of the documents (not cancelled) carrying the journal's reference."""
        ours = str(journal.pk)
        if self.name == "erpnext":
            return sorted(e["name"] for e in self.server.by_cheque(ours))
        if self.name.startswith("odoo"):
            return sorted(m["name"] for m in self.server.by_ref(ours) if m["state"] != "cancel")
        return sorted(r["tranId"] for r in self.server.transactions() if not r.get("voided") and (
            r.get("externalId") == ours or str(r.get("memo", "")).startswith(f"Tieout journal {ours}")))

    def clock_off_by(self, seconds: float) -> None:
        """The stand-in stamps what changes from now on `seconds` off our clock. Odoo and NetSuite keep whole
        seconds: a change in the second a run started is read again by the next incremental run, harmless but
        not what a test counting documents wants."""
        offset = datetime.timedelta(seconds=seconds)
        self.server.clock = lambda: datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + offset


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(autouse=True)
def _fresh_netsuite_tokens():
    netsuite.forget_tokens()
    yield
    netsuite.forget_tokens()


# Our account codes under the ERP's own names, as a real chart has them (`Account.erp_account`): ERPNext names,
# Odoo codes (or `id:<n>`, an Odoo account by id), NetSuite internal ids.
ERP_NAMES = {
    "erpnext": {"1010": "Payment Clearing - TU", "1200": "Debtors - TU", "2200": "Sales Tax - TU",
                "2300": "Unapplied Cash - TU", "4000": "Sales - TU", "4900": "Sales Returns - TU",
                "6100": "Payment Fees - TU", "6200": "Bad Debts - TU"},
    "odoo": {"1010": "101000", "1200": "121000", "2200": "251000", "2300": "id:23", "4000": "id:40"},
    "netsuite": {"1010": "217", "1200": "118", "2200": "306", "2300": "307", "4000": "54"},
}
ODOO_NAMED = {"101000": 11, "121000": 12, "251000": 22, "2300": 23, "400000": 40, "4900": 49, "6100": 61, "6200": 62}


def start_vendor(name: str, entity, erp_standin, monkeypatch, ec_key, *, erp_names: bool | dict = False,
                 posting_mode: str | None = None, **settings) -> Vendor:
    """Start `name`'s stand-in and point `entity` at it (committed, as an operator's configuration is); with
    `erp_names`, the ERP's chart names our accounts its own way (`ERP_NAMES`, and a dict's names over them)."""
    timeouts = {"read_timeout": 2, "connect_timeout": 1}
    names = {**ERP_NAMES[name.split("-")[0]], **(erp_names if isinstance(erp_names, dict) else {})} \
        if erp_names else {}
    with transaction.atomic():
        for code, erp_name in names.items():
            ledger.account_set_erp_name(entity=entity, account_code=code, erp_account=erp_name, actor="test")
        if name == "erpnext":
            server = erp_standin(ErpNextStandin, env={"TEST_ERPNEXT_TOKEN": "key:secret"}, slow_seconds=1.0,
                                 **({"accounts": set(names.values())} if names else {}))
            erpnext_configure(entity, server, posting_mode=posting_mode, **timeouts, **settings)
        elif name.startswith("odoo"):
            server = erp_standin(OdooStandin, env={"TEST_ODOO_KEY": "odoo-key"}, slow_seconds=1.0,
                                 accounts={**(ODOO_NAMED if names else ODOO_ACCOUNTS), BANK: 10})
            ledger.entity_configure_erp(entity=entity, connector="odoo", actor="test", posting_mode=posting_mode,
                                        erp_settings={
                "url": server.url, "database": "tieout", "api": name.split("-")[1], "token_env": "TEST_ODOO_KEY",
                "username": "integration@tieout.test", **timeouts, **settings})
        else:
            pem = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode()
            monkeypatch.setenv("TEST_NS_CLIENT_ID", "ns-client-id")
            monkeypatch.setenv("TEST_NS_PRIVATE_KEY", pem)
            server = erp_standin(NetSuiteStandin, public_key=ec_key.public_key(), slow_seconds=1.0,
                                 **({"accounts": [names.get(code, code) for code in ODOO_ACCOUNTS]} if names else {}))
            ledger.entity_configure_erp(entity=entity, connector="netsuite", actor="test", posting_mode=posting_mode,
                                        erp_settings={
                "url": server.url, "account_id": "1234567_SB1", "subsidiary": "1", "auth": "oauth2",
                "client_id_env": "TEST_NS_CLIENT_ID", "certificate_id": "ns-cert-1",
                "private_key_env": "TEST_NS_PRIVATE_KEY", **timeouts, **settings})
    return Vendor(name, server, names)


@pytest.fixture(params=VENDORS)
def vendor(request, entity, erp_standin, monkeypatch, ec_key) -> Vendor:
    return start_vendor(request.param, entity, erp_standin, monkeypatch, ec_key)


def post_history(integration, *, posted: bool = True):
    """Customer cus_1; inv_1 and inv_2 (107.25 each, 1 November); pay_1 50.00 on inv_1 and pay_2 50.00
    unapplied (5 November): four journals, posted into the ERP as the events are processed."""
    send(integration, f.customer("cus_1"))
    send(integration, f.invoice("inv_1", customer_id="cus_1"))
    send(integration, f.invoice("inv_2", customer_id="cus_1"))
    send(integration, f.payment("pay_1", customer_id="cus_1", amount="50.00", allocations=[("inv_1", "50.00")]))
    send(integration, f.payment("pay_2", customer_id="cus_1", amount="50.00"))
    if posted:  # (in batch mode they wait for their batch)
        assert list(Journal.objects.values_list("status", flat=True).distinct()) == ["posted"]


@pytest.fixture
def books(vendor, entity, integration):
    """The history posted into the vendor's ERP, and a first full run that finds it all matched."""
    post_history(integration)
    first = run(entity)
    assert first.breaks == {} and ReconciliationBreak.objects.count() == 0
    assert first.erp_documents == 4  # whole November: the four journals' documents
    return entity


# ------------------------------------------------------------------------------------------------ helpers
def run(entity, *, full=True, **kwargs) -> ReconciliationRun:
    result = services.reconciliation_run(entity=entity, date_from=NOV[0], date_to=NOV[1], full=full, actor="test",
                                         **kwargs)
    assert result.status == "finished", result.error
    return result


def journal_of(kind, document_id) -> Journal:
    return Journal.objects.get(kind=kind, document_id=document_id)


def mark(subject) -> str:
    row = ReconciliationMark.objects.filter(subject=subject).first()
    return row.status if row else "unreconciled"


def the_break(code) -> ReconciliationBreak:
    """The one open break, of `code`, with its exception open in the queue (process reconciliation)."""
    [brk] = ReconciliationBreak.objects.filter(status="open")
    assert brk.code == code
    exc = ExceptionRecord.objects.get(pk=brk.exception_id)
    assert (exc.process, exc.code, exc.status, exc.entity_code) == ("reconciliation", code, "open", "US01")
    return brk


def repost(brk, capture):
    """The break's repost action, as finance ops would press it; the queued run executes on commit."""
    fiona = get_user_model().objects.get(username="fiona-ops")
    with capture(execute=True):
        subject_run = services.reconciliation_break_repost(break_id=brk.pk, actor=fiona)
    subject_run.refresh_from_db()
    assert subject_run.status == "finished", subject_run.error
    return subject_run


# ------------------------------------------------------------------------------------------------ the cases
def test_a_clean_history_matches(books, vendor):
    later = run(books)
    assert later.breaks == {} and later.resolved == 0
    assert later.erp_requests > 0 and later.erp_documents == 4
    for journal in Journal.objects.all():
        assert mark(f"journal:{journal.pk}") == "matched"
        assert vendor.live_documents(journal) == [journal.erp_document_ref]
    assert mark(f"invoice:{SS}:inv_1") == "matched" and mark(f"payment:{SS}:pay_2") == "matched"


def test_an_amount_edited_in_the_erp(books, vendor):
    journal = journal_of("payment", "pay_2")
    ref = journal.erp_document_ref
    vendor.edit_amount(ref, "-10.00")
    first = run(books)
    assert first.breaks == {"erp_amount_mismatch": 1}
    brk = the_break("erp_amount_mismatch")
    assert (brk.journal_id, brk.erp_document_ref, brk.document, brk.account, brk.period) == (
        journal.pk, ref, f"payment:{SS}:pay_2", "1010", "2026-11")
    assert brk.expected == {"side": "ledger", "lines": {"1010": {"debit": "50.00", "credit": "0.00"},
                                                         "2300": {"debit": "0.00", "credit": "50.00"}}}
    assert brk.actual == {"side": "erp", "lines": {"1010": {"debit": "40.00", "credit": "0.00"},
                                                    "2300": {"debit": "0.00", "credit": "40.00"}}}
    assert brk.exception.amount == Decimal("20.00")
    assert mark(f"journal:{journal.pk}") == "break" and mark(f"payment:{SS}:pay_2") == "break"
    vendor.edit_amount(ref, "10.00")  # restored in the ERP
    later = run(books)
    assert later.breaks == {}
    assert_resolved_by(brk, later)
    assert mark(f"journal:{journal.pk}") == "matched"


def test_a_document_cancelled_in_the_erp(books, vendor, finance, django_capture_on_commit_callbacks):
    journal = journal_of("payment", "pay_1")
    ref = journal.erp_document_ref
    vendor.cancel(ref)
    assert run(books).breaks == {"erp_document_cancelled": 1}
    brk = the_break("erp_document_cancelled")
    assert (brk.journal_id, brk.erp_document_ref, brk.document, brk.period) == (
        journal.pk, ref, f"payment:{SS}:pay_1", "2026-11")
    assert brk.expected == {"side": "ledger", "erp_document_ref": ref, "status": "posted"}
    assert brk.actual == {"side": "erp", "erp_document_ref": ref, "status": "cancelled"}
    # Re-posted through the break: the look-up finds no live document, so the journal is sent once more.
    subject_run = repost(brk, django_capture_on_commit_callbacks)
    [new_ref] = vendor.live_documents(journal)
    assert new_ref != ref and ledger.effective_erp_ref(journal) == new_ref
    assert_resolved_by(brk, subject_run)
    # Again: the look-up finds the live document and only links it; a full run finds nothing.
    assert ledger.journal_repost(journal_id=journal.pk, actor="test").already_existed
    assert vendor.live_documents(journal) == [new_ref]
    assert run(books).breaks == {}


def test_a_document_deleted_in_the_erp(books, vendor, finance, django_capture_on_commit_callbacks):
    journal = journal_of("invoice", "inv_1")
    ref = journal.erp_document_ref
    vendor.delete(ref)
    first = run(books)
    assert first.breaks == {"missing_in_erp": 1}
    brk = the_break("missing_in_erp")
    assert (brk.journal_id, brk.erp_document_ref, brk.document, brk.period) == (
        journal.pk, ref, f"invoice:{SS}:inv_1", "2026-11")
    assert brk.expected == {"side": "ledger", "erp_document_ref": ref, "status": "posted"}
    assert brk.actual == {"side": "erp", "erp_document_ref": None}
    assert mark(f"invoice:{SS}:inv_1") == "break"
    subject_run = repost(brk, django_capture_on_commit_callbacks)
    [new_ref] = vendor.live_documents(journal)
    assert ledger.effective_erp_ref(journal) == new_ref
    assert_resolved_by(brk, subject_run)
    assert ledger.journal_repost(journal_id=journal.pk, actor="test").already_existed
    assert vendor.live_documents(journal) == [new_ref]
    later = run(books)
    assert later.breaks == {}
    assert mark(f"invoice:{SS}:inv_1") == "matched"


def test_a_manual_entry_on_the_receivable_account(books, vendor):
    vendor.manual_entry(debit="1200", credit=BANK, amount="100.00", day="2026-11-15")
    first = run(books)
    assert first.breaks == {"erp_balance_mismatch": 1}
    brk = the_break("erp_balance_mismatch")
    assert (brk.account, brk.period, brk.journal_id, brk.erp_document_ref, brk.document) == (
        "1200", "2026-11", None, "", "")
    # The ledger: Dr 2 x 107.25, Cr 50.00 (pay_1); the ERP 100.00 more on the debit side, all unexplained.
    assert brk.expected == {"side": "ledger", "debit": "214.50", "credit": "50.00"}
    assert brk.actual == {"side": "erp", "debit": "314.50", "credit": "50.00", "unexplained": "100.00"}
    assert brk.exception.amount == Decimal("100.00")
    # Incremental runs do not compare balances: they leave it open.
    assert run(books, full=False).resolved == 0 and brk.status == "open"
    vendor.manual_entry(debit=BANK, credit="1200", amount="100.00", day="2026-11-16")  # reversed in the ERP
    later = run(books)
    assert later.breaks == {}
    assert_resolved_by(brk, later)


def test_a_duplicate_document_for_one_journal(books, vendor):
    journal = journal_of("invoice", "inv_2")
    dup = vendor.duplicate(journal.erp_document_ref)
    first = run(books)
    assert first.breaks == {"unexpected_in_erp": 1}
    brk = the_break("unexpected_in_erp")
    assert (brk.journal_id, brk.erp_document_ref, brk.document, brk.period) == (
        journal.pk, dup, f"invoice:{SS}:inv_2", "2026-11")
    assert brk.expected == {"side": "ledger", "our_ref": str(journal.pk), "erp_document_ref": journal.erp_document_ref}
    assert brk.actual == {"side": "erp", "erp_document_ref": dup, "our_ref": str(journal.pk),
                          "posting_date": "2026-11-01"}
    assert mark(f"journal:{journal.pk}") == "break"
    vendor.delete(dup)
    later = run(books)
    assert later.breaks == {}
    assert_resolved_by(brk, later)
    assert mark(f"journal:{journal.pk}") == "matched"


@pytest.mark.parametrize("day", ["2026-11-03", "2026-10-31"])
def test_a_posting_date_moved_in_the_erp(books, vendor, day):
    """Within the month, and out of it (the listing no longer returns it: looked up by reference)."""
    journal = journal_of("invoice", "inv_2")
    ref = journal.erp_document_ref
    vendor.set_date(ref, day)
    assert run(books).breaks == {"erp_date_mismatch": 1}
    brk = the_break("erp_date_mismatch")
    assert (brk.journal_id, brk.erp_document_ref, brk.period) == (journal.pk, ref, "2026-11")
    assert brk.expected == {"side": "ledger", "posting_date": "2026-11-01"}
    assert brk.actual == {"side": "erp", "posting_date": day}
    vendor.set_date(ref, "2026-11-01")
    later = run(books)
    assert later.breaks == {}
    assert_resolved_by(brk, later)


def test_incremental_runs_read_what_the_erp_changed(vendor, entity, integration):
    vendor.clock_off_by(-10)  # the history is stamped well before the full run's second
    post_history(integration)
    full = run(entity)
    assert full.breaks == {} and full.erp_documents == 4
    vendor.clock_off_by(2)  # and the edit after it
    journal = journal_of("payment", "pay_2")
    vendor.edit_amount(journal.erp_document_ref, "5.00")
    incremental = run(entity, full=False)
    assert incremental.erp_modified_since == full.started_at
    assert incremental.erp_documents == 1  # only the edited document
    assert incremental.breaks == {"erp_amount_mismatch": 1}
    brk = the_break("erp_amount_mismatch")
    assert brk.journal_id == journal.pk
    vendor.edit_amount(journal.erp_document_ref, "-5.00")
    again = run(entity, full=False)
    assert again.erp_modified_since == incremental.started_at
    assert again.breaks == {} and again.erp_documents >= 1
    assert_resolved_by(brk, again)
    # A journal posted after the last run is checked by the next incremental run.
    send(integration, f.invoice("inv_3", customer_id="cus_1"))
    new = journal_of("invoice", "inv_3")
    assert new.status == "posted"
    last = run(entity, full=False)
    assert last.erp_modified_since == again.started_at and last.breaks == {}
    assert ReconciliationMark.objects.get(subject=f"journal:{new.pk}").run_id == last.pk
    assert mark(f"journal:{new.pk}") == "matched"


# ------------------------------------------------------------------------------------------------ how it reads
@pytest.mark.parametrize("name", VENDORS)
def test_the_erps_own_account_names_map_back_to_our_codes(name, entity, integration, erp_standin, monkeypatch,
                                                          ec_key):
    """The ERP's chart names our accounts its own way: documents and movements come back in our codes."""
    vendor = start_vendor(name, entity, erp_standin, monkeypatch, ec_key, erp_names=True)
    post_history(integration)
    assert run(entity).breaks == {}
    journal = journal_of("payment", "pay_2")
    vendor.edit_amount(journal.erp_document_ref, "-10.00")
    vendor.manual_entry(debit="1200", credit=BANK, amount="100.00", day="2026-11-15")
    found = run(entity)
    assert found.breaks == {"erp_amount_mismatch": 1, "erp_balance_mismatch": 1}
    edited = ReconciliationBreak.objects.get(code="erp_amount_mismatch")
    assert (edited.journal_id, edited.account) == (journal.pk, "1010")
    assert set(edited.actual["lines"]) == {"1010", "2300"}
    balance = ReconciliationBreak.objects.get(code="erp_balance_mismatch")
    assert (balance.account, balance.period, balance.actual["unexplained"]) == ("1200", "2026-11", "100.00")


@pytest.mark.parametrize("name", VENDORS)
def test_two_of_our_accounts_in_one_erp_account(name, entity, integration, erp_standin, monkeypatch, ec_key):
    """Sales returns (4900) booked to the ERP's revenue account, as a chart without a returns account does: the
    ERP's lines and movements come back as the lower code (4000), and ours are compared as the ERP holds them."""
    shared = {"erpnext": "Sales - TU", "odoo": "id:40", "netsuite": "54"}[name.split("-")[0]]
    vendor = start_vendor(name, entity, erp_standin, monkeypatch, ec_key, erp_names={"4900": shared})
    post_history(integration)
    send(integration, f.credit_note("inv_1", "10.00", credit_note_id="cn_1"))
    note = journal_of("credit_note", "cn_1")
    assert note.status == "posted" and {line.account.code for line in note.lines.all()} == {"1200", "4900"}
    assert run(entity).breaks == {}
    # A difference on the shared account still shows, under the lower code.
    vendor.manual_entry(debit="4900", credit=BANK, amount="5.00", day="2026-11-20")
    assert run(entity).breaks == {"erp_balance_mismatch": 1}
    assert the_break("erp_balance_mismatch").account == "4000"


@pytest.mark.parametrize("name", VENDORS)
def test_small_pages_read_every_document_once_and_every_request_is_counted(name, entity, integration, erp_standin,
                                                                          monkeypatch, ec_key):
    vendor = start_vendor(name, entity, erp_standin, monkeypatch, ec_key, page_size=2)
    post_history(integration)
    dup = vendor.duplicate(journal_of("invoice", "inv_1").erp_document_ref)
    before = len(vendor.server.requests)
    found = run(entity)
    assert found.breaks == {"unexpected_in_erp": 1}
    assert ReconciliationBreak.objects.get().erp_document_ref == dup
    assert found.erp_documents == 5  # four journals' documents and the duplicate, each read once
    # Every request the run made reached the ERP, and the run counted each: pages, look-ups and movements.
    assert found.erp_requests == len(vendor.server.requests) - before > 3


@pytest.mark.parametrize("name", VENDORS)
def test_a_read_back_that_keeps_failing_fails_the_run_and_opens_nothing(name, entity, integration, erp_standin,
                                                                       monkeypatch, ec_key, settings):
    vendor = start_vendor(name, entity, erp_standin, monkeypatch, ec_key)
    post_history(integration)
    vendor.delete(journal_of("invoice", "inv_1").erp_document_ref)  # a break it would find
    settings.TIEOUT_READBACK_MAX_ATTEMPTS = 3
    vendor.server.read_faults.add("error_503", 3)
    before = len(vendor.server.requests)
    result = services.reconciliation_run(entity=entity, date_from=NOV[0], date_to=NOV[1], full=True, actor="test")
    assert result.status == "failed"
    assert result.error.startswith("TransientError:") and "gave up after 3 attempts" in result.error
    assert result.erp_requests == len(vendor.server.requests) - before >= 3
    assert ReconciliationBreak.objects.count() == 0 and ReconciliationMark.objects.count() == 0
    assert not ExceptionRecord.objects.filter(process="reconciliation").exists()
    # The ERP answers again: the next run finds the break.
    assert run(entity).breaks == {"missing_in_erp": 1}


@pytest.mark.parametrize("name", VENDORS)
def test_a_month_the_ledger_did_not_move_in(name, entity, integration, erp_standin, monkeypatch, ec_key):
    """A range of two months, October empty on both sides (the ERP leaves empty months out): nothing; then a
    manual entry on the receivable account in October: the ledger's side is zero."""
    vendor = start_vendor(name, entity, erp_standin, monkeypatch, ec_key)
    post_history(integration)
    october = (datetime.date(2026, 10, 1), NOV[1])
    first = services.reconciliation_run(entity=entity, date_from=october[0], date_to=october[1], full=True,
                                        actor="test")
    assert first.status == "finished" and first.breaks == {}
    vendor.manual_entry(debit=BANK, credit="1200", amount="30.00", day="2026-10-20")
    found = services.reconciliation_run(entity=entity, date_from=october[0], date_to=october[1], full=True,
                                        actor="test")
    assert found.breaks == {"erp_balance_mismatch": 1}
    brk = the_break("erp_balance_mismatch")
    assert (brk.account, brk.period) == ("1200", "2026-10")
    assert brk.expected == {"side": "ledger", "debit": "0.00", "credit": "0.00"}
    assert brk.actual == {"side": "erp", "debit": "0.00", "credit": "30.00", "unexplained": "-30.00"}
    vendor.manual_entry(debit="1200", credit=BANK, amount="30.00", day="2026-10-21")
    later = services.reconciliation_run(entity=entity, date_from=october[0], date_to=october[1], full=True,
                                        actor="test")
    assert later.breaks == {}
    assert_resolved_by(brk, later)


@pytest.mark.parametrize("name", VENDORS)
def test_batch_documents(name, entity, integration, erp_standin, monkeypatch, ec_key, finance,
                         django_capture_on_commit_callbacks):
    """Posted in batches (one ERP document a day): each batch document against its netted lines; an edit of
    one is a break of the batch document, marking every journal in it; restored, it is resolved."""
    vendor = start_vendor(name, entity, erp_standin, monkeypatch, ec_key, posting_mode="batch")
    post_history(integration, posted=False)
    with django_capture_on_commit_callbacks(execute=True):
        ledger.erp_batches_sweep(window_seconds=0)
    assert set(Journal.objects.values_list("status", flat=True)) == {"posted"}
    batch = ErpBatch.objects.get(accounting_date=datetime.date(2026, 11, 5))
    assert ErpBatch.objects.filter(status="posted").count() == 2
    clean = run(entity)
    assert clean.breaks == {} and clean.erp_documents == 2
    payments = list(Journal.objects.filter(erp_batch=batch))
    assert len(payments) == 2 and all(mark(f"journal:{j.pk}") == "matched" for j in payments)
    vendor.edit_amount(batch.erp_document_ref, "-10.00")
    assert run(entity).breaks == {"erp_amount_mismatch": 1}
    brk = the_break("erp_amount_mismatch")
    assert (brk.journal_id, brk.erp_document_ref, brk.account, brk.period) == (
        None, batch.erp_document_ref, "1010", "2026-11")
    assert brk.expected["lines"]["1010"] == {"debit": "100.00", "credit": "0.00"}
    assert brk.actual["lines"]["1010"] == {"debit": "90.00", "credit": "0.00"}
    assert all(mark(f"journal:{j.pk}") == "break" for j in payments)
    assert mark(f"payment:{SS}:pay_1") == "break"
    fiona = get_user_model().objects.get(username="fiona-ops")
    with pytest.raises(Exception) as refused:
        services.reconciliation_break_repost(break_id=brk.pk, actor=fiona)
    assert refused.value.code == "break_action_not_applicable"
    vendor.edit_amount(batch.erp_document_ref, "10.00")
    later = run(entity)
    assert later.breaks == {}
    assert_resolved_by(brk, later)
    assert all(mark(f"journal:{j.pk}") == "matched" for j in payments)


def test_an_odoo_draft_carrying_our_reference_counts_once_posted(entity, integration, erp_standin, monkeypatch,
                                                                ec_key):
    """Odoo numbers a move when it posts it: a draft copy a person made (`/`, read back as `id:<n>`) is not a
    posted document of ours, so no break; posted, it is a second document for the journal under its number."""
    vendor = start_vendor("odoo-json2", entity, erp_standin, monkeypatch, ec_key)
    post_history(integration)
    journal = journal_of("invoice", "inv_1")
    odoo = vendor.server
    source = odoo.moves[vendor.native(journal.erp_document_ref)]
    draft = odoo.add_move(ref=str(journal.pk), state="draft", date=source["date"],
                          lines=[{k: v for k, v in line.items() if k != "id"} for line in source["line_ids"]])
    assert run(entity).breaks == {}
    with odoo._state:
        odoo.run("account.move", "action_post", [draft], {})
    number = odoo.moves[draft]["name"]
    assert number.startswith("MISC/2026/11/")
    assert run(entity).breaks == {"unexpected_in_erp": 1}
    brk = the_break("unexpected_in_erp")
    assert (brk.journal_id, brk.erp_document_ref) == (journal.pk, number)
    odoo.delete(draft)
    assert_resolved_by(brk, run(entity))


@pytest.mark.parametrize("name", ["odoo-json2", "odoo-jsonrpc"])
def test_an_odoo_move_reset_to_draft_is_posted_again_by_the_repost(name, entity, integration, erp_standin, monkeypatch,
                                                                  ec_key, finance, django_capture_on_commit_callbacks):
    """Reset to draft in Odoo (how a person starts changing a posted move) is not posted: the break says `draft`;
    the repost action's look-up finds the draft carrying our reference and posts it (the same move, the same
    number), and the run that follows resolves the break."""
    vendor = start_vendor(name, entity, erp_standin, monkeypatch, ec_key)
    post_history(integration)
    journal = journal_of("payment", "pay_1")
    ref = journal.erp_document_ref
    vendor.server.reset_to_draft(vendor.native(ref))
    assert run(entity).breaks == {"erp_document_cancelled": 1}
    brk = the_break("erp_document_cancelled")
    assert brk.actual == {"side": "erp", "erp_document_ref": ref, "status": "draft"}
    moves = len(vendor.server.moves)
    subject_run = repost(brk, django_capture_on_commit_callbacks)
    assert len(vendor.server.moves) == moves and vendor.live_documents(journal) == [ref]
    assert ledger.effective_erp_ref(journal) == ref
    assert_resolved_by(brk, subject_run)


# ------------------------------------------------------------------------------------------------ built-in
def test_builtin_a_clean_history_matches_in_full_and_incremental_runs(entity, integration):
    """The built-in ERP is our own records: what it holds is what we posted, so a full run matches everything,
    balances included, and an incremental one reads only what was posted since the last run."""
    post_history(integration)
    full = run(entity)
    assert full.breaks == {} and full.erp_documents == 4 and full.erp_requests > 0
    assert all(mark(f"journal:{j.pk}") == "matched" for j in Journal.objects.all())
    assert mark(f"invoice:{SS}:inv_1") == "matched"
    assert run(entity, full=False).erp_documents == 0
    send(integration, f.invoice("inv_3", customer_id="cus_1"))
    incremental = run(entity, full=False)
    assert incremental.breaks == {} and incremental.erp_documents == 1
    assert mark(f"journal:{journal_of('invoice', 'inv_3').pk}") == "matched"



def test_builtin_reads_our_own_codes_whatever_erp_names_say(entity, integration):
    """ERP names left on the accounts (from an ERP the entity posted to before) mean nothing to the built-in ERP,
    which reads our codes: two accounts sharing a name are not folded together there."""
    with transaction.atomic():
        ledger.account_set_erp_name(entity=entity, account_code="4900", erp_account="4000", actor="test")
    post_history(integration)
    send(integration, f.credit_note("inv_1", "10.00", credit_note_id="cn_1"))
    assert journal_of("credit_note", "cn_1").status == "posted"
    assert run(entity).breaks == {}


# ------------------------------------------------------------------------------------------------ the break's actions
def rerun(brk, capture):
    """The queue's retry of the break's exception: a run for the break's object, executed on commit."""
    fiona = get_user_model().objects.get(username="fiona-ops")
    with capture(execute=True):
        queue.exception_retry(exception_id=brk.exception_id, actor=fiona)
    subject_run = ReconciliationRun.objects.exclude(subject="").latest("started_at")
    assert subject_run.status == "finished", subject_run.error
    return subject_run


@pytest.mark.parametrize("case", ["amount", "manual", "duplicate", "date"])
def test_a_run_for_the_breaks_object_resolves_it_once_fixed(books, vendor, case, finance,
                                                            django_capture_on_commit_callbacks):
    """Retry from the exception queue re-runs the reconciliation for the break's object only (its journal, the
    account and month, or the ERP document): still broken it stays open, fixed it is resolved."""
    capture = django_capture_on_commit_callbacks
    journal = journal_of("invoice", "inv_2")
    ref = journal.erp_document_ref
    if case == "amount":
        vendor.edit_amount(ref, "1.00")
    elif case == "manual":
        vendor.manual_entry(debit="1200", credit=BANK, amount="100.00", day="2026-11-15")
    elif case == "duplicate":
        dup = vendor.duplicate(ref)
    else:
        vendor.set_date(ref, "2026-11-02")
    [code] = run(books).breaks
    brk = the_break(code)
    still = rerun(brk, capture)
    assert still.subject == services.break_subject(brk) and still.erp_requests > 0
    brk.refresh_from_db()
    assert brk.status == "open" and brk.last_seen_run_id == still.pk
    if case == "amount":
        vendor.edit_amount(ref, "-1.00")
    elif case == "manual":
        vendor.manual_entry(debit=BANK, credit="1200", amount="100.00", day="2026-11-16")
    elif case == "duplicate":
        vendor.delete(dup)
    else:
        vendor.set_date(ref, "2026-11-01")
    assert_resolved_by(brk, rerun(brk, capture))


def test_a_cancelled_document_restored_as_a_copy_is_linked_by_the_repost(books, vendor, finance,
                                                                         django_capture_on_commit_callbacks):
    """Finance restores a cancelled document the vendor's way, as a new document carrying our reference (ERPNext's
    Amend, NetSuite's Make Copy, a duplicate in Odoo): the cancelled one and the copy are two breaks; the repost
    action's look-up finds the copy and links it (nothing sent), and the run that follows resolves both."""
    journal = journal_of("payment", "pay_1")
    ref = journal.erp_document_ref
    copy = vendor.duplicate(ref)  # (copied first: NetSuite voids a document's amounts to zero)
    vendor.cancel(ref)
    found = run(books)
    assert found.breaks == {"erp_document_cancelled": 1, "unexpected_in_erp": 1}
    cancelled = ReconciliationBreak.objects.get(code="erp_document_cancelled")
    assert ReconciliationBreak.objects.get(code="unexpected_in_erp").erp_document_ref == copy
    documents = vendor.live_documents(journal)
    subject_run = repost(cancelled, django_capture_on_commit_callbacks)
    assert vendor.live_documents(journal) == documents == [copy]  # linked, not sent again
    assert ledger.effective_erp_ref(journal) == copy
    assert ReconciliationBreak.objects.filter(status="open").count() == 0
    assert_resolved_by(cancelled, subject_run)
    assert run(books).breaks == {}
