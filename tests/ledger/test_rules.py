"""POSTING_RULES.md end to end: events sent through the API, journals read back through the API.

For every rule the exact journal lines (account, debit, credit, customer, invoice, jurisdiction) are
checked, together with the accounting date, the reversal link, the built-in connector's gapless document
numbers in posting order, the trial balance (as_of included), and the invoice's billing open amount
against its receivable balance in the ledger after each step.
"""
from decimal import Decimal

import pytest

from billing_sync.models import Event
from ledger import services as ledger
from ledger.models import Account, Journal, JournalLine
from tests import factories as f
from tests.helpers import send

pytestmark = pytest.mark.django_db

SS = f.SOURCE
CUS = "cus_rules"


# --------------------------------------------------------------------------------------------- helpers
def journals_of(reader, event: dict) -> list[dict]:
    """The event's journals through GET /api/v1/journals?event=, oldest first."""
    response = reader.get("/api/v1/journals", event=event["id"])
    assert response.status_code == 200
    by_id = {j["id"]: j for j in response.json()["results"]}
    assert set(by_id) == set(event["journal_ids"])
    return [by_id[i] for i in event["journal_ids"]]


def only_journal(reader, event: dict) -> dict:
    journals = journals_of(reader, event)
    assert len(journals) == 1, journals
    return journals[0]


def lines(journal: dict) -> list[tuple]:
    return sorted(((ln["account"], ln["debit"], ln["credit"], ln["customer_id"], ln["invoice_id"],
                    ln["jurisdiction"]) for ln in journal["lines"]), key=repr)


def expect(*rows) -> list[tuple]:
    return sorted(rows, key=repr)


def assert_balanced(journal: dict) -> None:
    assert sum(Decimal(ln["debit"]) for ln in journal["lines"]) == sum(Decimal(ln["credit"]) for ln in journal["lines"])


def invoice_view(reader, invoice_id) -> dict:
    response = reader.get(f"/api/v1/invoices/{SS}/{invoice_id}")
    assert response.status_code == 200
    return response.json()


def assert_open(reader, invoice_id, amount: str) -> dict:
    body = invoice_view(reader, invoice_id)
    assert body["open_amount"] == amount
    assert body["ledger_open_amount"] == amount
    return body


def trial_balance(reader, **params) -> dict:
    response = reader.get("/api/v1/ledger/trial-balance", entity="US01", **params)
    assert response.status_code == 200
    return response.json()


def pending_approval_for(reader, event: dict) -> dict:
    listed = reader.get("/api/v1/approvals", status="pending").json()["results"]
    mine = [a for a in listed if a["event"] == event["id"]]
    assert len(mine) == 1, listed
    return mine[0]


@pytest.fixture
def customer(entity, integration):
    send(integration, f.customer(CUS))
    return CUS


def multi_jurisdiction_invoice(invoice_id, *, customer_id, revenue_account="4100", **kw) -> dict:
    """Two lines: one on the default revenue account with two taxes, one on `revenue_account` with one."""
    payload = f.invoice(invoice_id, customer_id=customer_id, lines=[("100.00", "0"), ("50.00", "0")], **kw)
    data = payload["data"]
    data["lines"][0]["taxes"] = [{"jurisdiction": "US-CA", "rate": "0.06", "amount": "6.00"},
                                 {"jurisdiction": "US-CA-SF", "rate": "0.0125", "amount": "1.25"}]
    data["lines"][1]["revenue_account"] = revenue_account
    data["lines"][1]["taxes"] = [{"jurisdiction": "US-NY", "rate": "0.04", "amount": "2.00"}]
    data["tax_total"] = "9.25"
    data["total"] = "159.25"
    return payload


# --------------------------------------------------------------------------------------------- invoices
def test_invoice_issued_debits_receivable_and_credits_each_line_and_tax(entity, customer, integration, auditor):
    Account.objects.create(entity=entity, code="4100", name="Services revenue", type=Account.Type.INCOME)
    event = send(integration, multi_jurisdiction_invoice("inv_multi", customer_id=CUS, issue_date="2026-11-03"))
    assert event["status"] == "posted"
    journal = only_journal(auditor, event)
    assert lines(journal) == expect(
        ("1200", "159.25", "0.00", CUS, "inv_multi", None),
        ("4000", "0.00", "100.00", CUS, "inv_multi", None),
        ("4100", "0.00", "50.00", CUS, "inv_multi", None),
        ("2200", "0.00", "6.00", CUS, "inv_multi", "US-CA"),
        ("2200", "0.00", "1.25", CUS, "inv_multi", "US-CA-SF"),
        ("2200", "0.00", "2.00", CUS, "inv_multi", "US-NY"),
    )
    assert_balanced(journal)
    # The accounting date is the issue date, not the day the event occurred (2026-11-01).
    assert journal["accounting_date"] == "2026-11-03"
    assert journal["status"] == "posted"
    assert journal["reverses"] is None
    assert journal["erp_document_ref"] == "JE-US01-2026-000001"
    assert journal["posted_at"]
    assert journal["event"] == event["id"]
    assert_open(auditor, "inv_multi", "159.25")


def test_invoice_line_revenue_account_4000_explicitly_is_the_default_account(entity, customer, integration, auditor):
    event = send(integration, f.invoice("inv_4000", customer_id=CUS,
                                       lines=[("10.00", "0", "4000"), ("5.00", "0.50")]))
    journal = only_journal(auditor, event)
    assert lines(journal) == expect(
        ("1200", "15.50", "0.00", CUS, "inv_4000", None),
        ("4000", "0.00", "10.00", CUS, "inv_4000", None),
        ("4000", "0.00", "5.00", CUS, "inv_4000", None),
        ("2200", "0.00", "0.50", CUS, "inv_4000", "US-CA"),
    )


def test_remapped_revenue_role_is_used_for_lines_without_revenue_account(entity, customer, integration, auditor):
    Account.objects.create(entity=entity, code="4100", name="Services revenue", type=Account.Type.INCOME)
    ledger.account_mapping_set(entity=entity, role="revenue", account_code="4100", actor="test")
    event = send(integration, f.invoice("inv_map", customer_id=CUS, lines=[("20.00", "0"), ("30.00", "0", "4000")]))
    assert lines(only_journal(auditor, event)) == expect(
        ("1200", "50.00", "0.00", CUS, "inv_map", None),
        ("4100", "0.00", "20.00", CUS, "inv_map", None),
        ("4000", "0.00", "30.00", CUS, "inv_map", None),
    )


def test_invoice_amended_reverses_the_current_journal_and_books_the_new_version(entity, customer, integration,
                                                                               auditor):
    issued = send(integration, f.invoice("inv_am", customer_id=CUS, lines=[("100.00", "7.25")],
                                         issue_date="2026-11-02"))
    original = only_journal(auditor, issued)
    amended = send(integration, f.invoice("inv_am", customer_id=CUS, lines=[("200.00", "14.50"), ("10.00", "0")],
                                          version=2, type_="invoice.amended", issue_date="2026-11-02",
                                          occurred_at="2026-11-10T08:00:00Z"))
    assert amended["status"] == "posted"
    reversal, new = journals_of(auditor, amended)
    assert reversal["reverses"] == original["id"]
    assert lines(reversal) == expect(
        ("1200", "0.00", "107.25", CUS, "inv_am", None),
        ("4000", "100.00", "0.00", CUS, "inv_am", None),
        ("2200", "7.25", "0.00", CUS, "inv_am", "US-CA"),
    )
    # The reversal is dated when the amendment occurred; the new version on its issue date.
    assert reversal["accounting_date"] == "2026-11-10"
    assert new["reverses"] is None
    assert new["accounting_date"] == "2026-11-02"
    assert lines(new) == expect(
        ("1200", "224.50", "0.00", CUS, "inv_am", None),
        ("4000", "0.00", "200.00", CUS, "inv_am", None),
        ("4000", "0.00", "10.00", CUS, "inv_am", None),
        ("2200", "0.00", "14.50", CUS, "inv_am", "US-CA"),
    )
    assert [reversal["erp_document_ref"], new["erp_document_ref"]] == ["JE-US01-2026-000002", "JE-US01-2026-000003"]
    # The original journal never changes.
    again = auditor.get(f"/api/v1/journals/{original['id']}").json()
    assert again == original
    body = assert_open(auditor, "inv_am", "224.50")
    assert body["version"] == 2 and body["total"] == "224.50"


def test_second_amendment_reverses_the_first_amendments_journal(entity, customer, integration, auditor):
    send(integration, f.invoice("inv_am2", customer_id=CUS, lines=[("100.00", "0")]))
    first = send(integration, f.invoice("inv_am2", customer_id=CUS, lines=[("120.00", "0")], version=2,
                                        type_="invoice.amended"))
    second = send(integration, f.invoice("inv_am2", customer_id=CUS, lines=[("90.00", "0")], version=3,
                                         type_="invoice.amended"))
    current_after_first = journals_of(auditor, first)[1]
    reversal, new = journals_of(auditor, second)
    assert reversal["reverses"] == current_after_first["id"]
    assert lines(reversal) == expect(("1200", "0.00", "120.00", CUS, "inv_am2", None),
                                     ("4000", "120.00", "0.00", CUS, "inv_am2", None))
    assert lines(new) == expect(("1200", "90.00", "0.00", CUS, "inv_am2", None),
                                ("4000", "0.00", "90.00", CUS, "inv_am2", None))
    assert_open(auditor, "inv_am2", "90.00")


def test_invoice_voided_reverses_the_current_journal_and_open_amount_is_zero(entity, customer, integration, auditor):
    issued = send(integration, f.invoice("inv_void", customer_id=CUS, lines=[("100.00", "7.25")]))
    original = only_journal(auditor, issued)
    voided = send(integration, f.invoice_voided("inv_void", occurred_at="2026-11-12T15:00:00Z"))
    assert voided["status"] == "posted"
    reversal = only_journal(auditor, voided)
    assert reversal["reverses"] == original["id"]
    assert reversal["accounting_date"] == "2026-11-12"
    assert lines(reversal) == expect(
        ("1200", "0.00", "107.25", CUS, "inv_void", None),
        ("4000", "100.00", "0.00", CUS, "inv_void", None),
        ("2200", "7.25", "0.00", CUS, "inv_void", "US-CA"),
    )
    assert reversal["erp_document_ref"] == "JE-US01-2026-000002"
    assert auditor.get(f"/api/v1/journals/{original['id']}").json() == original
    body = assert_open(auditor, "inv_void", "0.00")
    assert body["status"] == "voided"


# --------------------------------------------------------------------------------------------- payments
def test_payment_received_with_fee_and_partial_allocation(entity, customer, integration, auditor):
    send(integration, f.invoice("inv_p1", customer_id=CUS, lines=[("100.00", "7.25")]))
    send(integration, f.invoice("inv_p2", customer_id=CUS, lines=[("50.00", "0")]))
    event = send(integration, f.payment("pay_1", customer_id=CUS, amount="200.00", fee="3.10",
                                        allocations=[("inv_p1", "107.25"), ("inv_p2", "20.00")],
                                        received_at="2026-11-05T12:00:00Z", occurred_at="2026-11-07T09:00:00Z"))
    assert event["status"] == "posted"
    journal = only_journal(auditor, event)
    assert lines(journal) == expect(
        ("1010", "196.90", "0.00", CUS, None, None),
        ("6100", "3.10", "0.00", CUS, None, None),
        ("1200", "0.00", "107.25", CUS, "inv_p1", None),
        ("1200", "0.00", "20.00", CUS, "inv_p2", None),
        ("2300", "0.00", "72.75", CUS, None, None),
    )
    unapplied = [ln for ln in journal["lines"] if ln["account"] == "2300"]
    assert unapplied[0]["payment_id"] == "pay_1"
    assert journal["accounting_date"] == "2026-11-05"  # received_at, not occurred_at
    assert_open(auditor, "inv_p1", "0.00")
    assert_open(auditor, "inv_p2", "30.00")


def test_payment_received_without_fee_or_allocations_is_all_unapplied_cash(entity, customer, integration, auditor):
    event = send(integration, f.payment("pay_u", customer_id=CUS, amount="80.00"))
    journal = only_journal(auditor, event)
    assert lines(journal) == expect(("1010", "80.00", "0.00", CUS, None, None),
                                    ("2300", "0.00", "80.00", CUS, None, None))


def test_payment_applied_moves_unapplied_cash_to_the_invoices(entity, customer, integration, auditor):
    send(integration, f.invoice("inv_a1", customer_id=CUS, lines=[("100.00", "0")]))
    send(integration, f.invoice("inv_a2", customer_id=CUS, lines=[("40.00", "0")]))
    send(integration, f.payment("pay_a", customer_id=CUS, amount="150.00"))
    event = send(integration, f.payment_applied("pay_a", [("inv_a1", "60.00"), ("inv_a2", "40.00")],
                                                occurred_at="2026-11-15T10:00:00Z"))
    assert event["status"] == "posted"
    journal = only_journal(auditor, event)
    assert lines(journal) == expect(
        ("2300", "60.00", "0.00", CUS, None, None),
        ("1200", "0.00", "60.00", CUS, "inv_a1", None),
        ("2300", "40.00", "0.00", CUS, None, None),
        ("1200", "0.00", "40.00", CUS, "inv_a2", None),
    )
    assert {ln["payment_id"] for ln in journal["lines"]} == {"pay_a"}
    assert journal["accounting_date"] == "2026-11-15"  # occurred_at
    assert_open(auditor, "inv_a1", "40.00")
    assert_open(auditor, "inv_a2", "0.00")
    tb = {a["code"]: a for a in trial_balance(auditor)["accounts"]}
    assert tb["2300"]["balance"] == "-50.00"  # 150 received, 100 applied


def test_payment_refunded_with_invoice_reopens_the_receivable(entity, customer, integration, auditor):
    send(integration, f.invoice("inv_r", customer_id=CUS, lines=[("100.00", "0")]))
    send(integration, f.payment("pay_r", customer_id=CUS, amount="100.00", allocations=[("inv_r", "100.00")]))
    assert_open(auditor, "inv_r", "0.00")
    event = send(integration, f.refund("pay_r", "30.00", invoice_id="inv_r", occurred_at="2026-11-18T10:00:00Z"))
    assert event["status"] == "posted"
    journal = only_journal(auditor, event)
    assert lines(journal) == expect(("1200", "30.00", "0.00", CUS, "inv_r", None),
                                    ("1010", "0.00", "30.00", CUS, None, None))
    assert journal["accounting_date"] == "2026-11-18"
    body = assert_open(auditor, "inv_r", "30.00")
    assert body["refunded_total"] == "30.00"


def test_payment_refunded_without_invoice_comes_out_of_unapplied_cash(entity, customer, integration, auditor):
    send(integration, f.payment("pay_ru", customer_id=CUS, amount="100.00", fee="2.00"))
    event = send(integration, f.refund("pay_ru", "25.00", occurred_at="2026-11-19T10:00:00Z"))
    journal = only_journal(auditor, event)
    assert lines(journal) == expect(("2300", "25.00", "0.00", CUS, None, None),
                                    ("1010", "0.00", "25.00", CUS, None, None))
    assert journal["lines"][0]["payment_id"] == "pay_ru"
    assert journal["accounting_date"] == "2026-11-19"
    tb = {a["code"]: a for a in trial_balance(auditor)["accounts"]}
    assert tb["2300"]["balance"] == "-75.00"
    assert tb["1010"]["balance"] == "73.00"  # 98 cleared, 25 refunded
    assert tb["6100"]["balance"] == "2.00"


# --------------------------------------------------------------------------------------------- credits, write-offs
def test_credit_note_below_threshold_posts_at_once_without_approval(entity, customer, integration, auditor):
    send(integration, f.invoice("inv_cn", customer_id=CUS, lines=[("1000.00", "72.50")]))
    event = send(integration, f.credit_note("inv_cn", "900.00", tax="99.99", occurred_at="2026-11-20T10:00:00Z"))
    assert event["status"] == "posted"
    assert auditor.get("/api/v1/approvals").json()["count"] == 0
    journal = only_journal(auditor, event)
    assert lines(journal) == expect(
        ("4900", "900.00", "0.00", CUS, "inv_cn", None),
        ("2200", "99.99", "0.00", CUS, "inv_cn", "US-CA"),
        ("1200", "0.00", "999.99", CUS, "inv_cn", None),
    )
    assert journal["accounting_date"] == "2026-11-20"
    assert journal["erp_document_ref"] == "JE-US01-2026-000002"
    assert_open(auditor, "inv_cn", "72.51")


def test_credit_note_at_threshold_waits_for_approval(entity, customer, integration, auditor):
    send(integration, f.invoice("inv_cn2", customer_id=CUS, lines=[("2000.00", "0")]))
    event = send(integration, f.credit_note("inv_cn2", "1000.00"))
    assert event["status"] == "pending_approval"
    journal = only_journal(auditor, event)
    assert journal["status"] == "pending_approval"
    assert journal["erp_document_ref"] is None
    assert pending_approval_for(auditor, event)["kind"] == "credit_note"
    assert_open(auditor, "inv_cn2", "2000.00")


def test_credit_note_on_a_paid_invoice_is_booked_or_queued_never_stuck(entity, customer, integration, auditor):
    """POSTING_RULES.md caps a credit note at the invoice total minus earlier credit notes, and the invoice
    table refuses a negative open amount: either way the event must end posted (open amount −50 in billing
    and in the ledger) or in the queue (`over_credit`), never stay `accepted` after a database error."""
    send(integration, f.invoice("inv_paid", customer_id=CUS, lines=[("100.00", "0")]))
    send(integration, f.payment("pay_paid", customer_id=CUS, amount="100.00", allocations=[("inv_paid", "100.00")]))
    event = send(integration, f.credit_note("inv_paid", "50.00"))
    assert event["status"] in ("posted", "exception"), event["status"]
    if event["status"] == "exception":
        assert event["exception"]["code"] == "over_credit"
        assert_open(auditor, "inv_paid", "0.00")
    else:
        assert_open(auditor, "inv_paid", "-50.00")


def test_approving_a_credit_note_after_the_invoice_was_paid_answers_cleanly(entity, customer, integration,
                                                                           controller, auditor):
    """The approval re-checks the document (as for write-offs): a refusal is a 409 problem, never a 500."""
    send(integration, f.invoice("inv_cp", customer_id=CUS, lines=[("2000.00", "0")]))
    event = send(integration, f.credit_note("inv_cp", "1500.00"))
    assert event["status"] == "pending_approval"
    send(integration, f.payment("pay_cp", customer_id=CUS, amount="2000.00", allocations=[("inv_cp", "2000.00")]))
    approval = pending_approval_for(auditor, event)
    controller.client.raise_request_exception = False
    response = controller.post(f"/api/v1/approvals/{approval['id']}/approve", {})
    assert response.status_code in (200, 409), response.status_code
    if response.status_code == 409:
        assert response.json()["code"] == "over_credit"
        assert integration.event(event["id"])["status"] == "pending_approval"
        assert_open(auditor, "inv_cp", "0.00")
    else:
        assert integration.event(event["id"])["status"] == "posted"
        assert_open(auditor, "inv_cp", "-1500.00")


def test_write_off_needs_approval_then_posts_on_the_occurred_at_date(entity, customer, integration, controller,
                                                                     auditor):
    send(integration, f.invoice("inv_wo", customer_id=CUS, lines=[("100.00", "7.25")]))
    event = send(integration, f.write_off("inv_wo", "7.25", occurred_at="2026-11-21T10:00:00Z"))
    assert event["status"] == "pending_approval"
    pending = only_journal(auditor, event)
    assert pending["status"] == "pending_approval"
    assert pending["erp_document_ref"] is None
    assert_open(auditor, "inv_wo", "107.25")  # nothing booked before approval, in billing or in the ledger
    approval = pending_approval_for(auditor, event)
    assert approval["kind"] == "write_off" and approval["amount"] == "7.25"

    response = controller.post(f"/api/v1/approvals/{approval['id']}/approve", {"comment": "uncollectible"})
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "approved"
    assert integration.event(event["id"])["status"] == "posted"
    journal = auditor.get(f"/api/v1/journals/{pending['id']}").json()
    assert journal["status"] == "posted"
    assert journal["erp_document_ref"] == "JE-US01-2026-000002"
    assert lines(journal) == expect(("6200", "7.25", "0.00", CUS, "inv_wo", None),
                                    ("1200", "0.00", "7.25", CUS, "inv_wo", None))
    assert journal["accounting_date"] == "2026-11-21"  # occurred_at, not the approval date
    assert_open(auditor, "inv_wo", "100.00")


# --------------------------------------------------------------------------------------------- numbers
def test_document_numbers_are_gapless_in_posting_order(entity, customer, integration, controller, auditor):
    e1 = send(integration, f.invoice("inv_n1", customer_id=CUS, lines=[("100.00", "0")]))
    e2 = send(integration, f.invoice("inv_n2", customer_id=CUS, lines=[("50.00", "0")]))
    wo = send(integration, f.write_off("inv_n2", "5.00"))  # waits: no number yet
    e3 = send(integration, f.payment("pay_n", customer_id=CUS, amount="10.00", allocations=[("inv_n1", "10.00")]))
    approval = pending_approval_for(auditor, wo)
    assert controller.post(f"/api/v1/approvals/{approval['id']}/approve", {}).status_code == 200
    e5 = send(integration, f.invoice("inv_n1", customer_id=CUS, lines=[("120.00", "0")], version=2,
                                     type_="invoice.amended"))
    refs = [j["erp_document_ref"] for e in (e1, e2, e3) for j in journals_of(auditor, e)]
    refs += [only_journal(auditor, integration.event(wo["id"]))["erp_document_ref"]]
    refs += [j["erp_document_ref"] for j in journals_of(auditor, e5)]
    assert refs == [f"JE-US01-2026-{n:06d}" for n in range(1, 7)]
    assert Journal.objects.filter(entity=entity).exclude(status="posted").count() == 0
    assert all(j.posted_at for j in Journal.objects.all())
    # The year comes from the accounting date and every year has its own sequence.
    e6 = send(integration, f.invoice("inv_n2027", customer_id=CUS, lines=[("1.00", "0")], issue_date="2027-01-04",
                                     due_date="2027-02-04"))
    assert only_journal(auditor, e6)["erp_document_ref"] == "JE-US01-2027-000001"
    e7 = send(integration, f.invoice("inv_n3", customer_id=CUS, lines=[("1.00", "0")]))
    assert only_journal(auditor, e7)["erp_document_ref"] == "JE-US01-2026-000007"


def test_journal_list_filters_by_event_status_and_entity(entity, customer, integration, auditor):
    e1 = send(integration, f.invoice("inv_f1", customer_id=CUS, lines=[("10.00", "0")]))
    send(integration, f.invoice("inv_f2", customer_id=CUS, lines=[("20.00", "0")]))
    wo = send(integration, f.write_off("inv_f2", "1.00"))
    assert [j["id"] for j in auditor.get("/api/v1/journals", event=e1["id"]).json()["results"]] == e1["journal_ids"]
    pending = auditor.get("/api/v1/journals", status="pending_approval", entity="US01").json()["results"]
    assert [j["id"] for j in pending] == wo["journal_ids"]
    assert auditor.get("/api/v1/journals", status="posted", entity="US01").json()["count"] == 2
    assert auditor.get("/api/v1/journals", entity="XX99").json()["count"] == 0


# --------------------------------------------------------------------------------------------- trial balance
def test_trial_balance_balances_per_account_and_honours_as_of(entity, customer, integration, controller, auditor):
    send(integration, f.invoice("inv_tb", customer_id=CUS, lines=[("100.00", "7.25")], issue_date="2026-11-01"))
    send(integration, f.payment("pay_tb", customer_id=CUS, amount="120.00", fee="1.50",
                                allocations=[("inv_tb", "50.00")], received_at="2026-11-05T12:00:00Z"))
    send(integration, f.credit_note("inv_tb", "10.00", tax="0.73", occurred_at="2026-11-10T10:00:00Z"))
    wo = send(integration, f.write_off("inv_tb", "5.00", occurred_at="2026-11-12T10:00:00Z"))  # pending: not in TB

    tb = trial_balance(auditor)
    assert tb["entity"] == "US01" and tb["currency"] == "USD"
    accounts = {a["code"]: (a["debit"], a["credit"], a["balance"]) for a in tb["accounts"]}
    assert accounts == {
        "1010": ("118.50", "0.00", "118.50"),
        "1200": ("107.25", "60.73", "46.52"),
        "2200": ("0.73", "7.25", "-6.52"),
        "2300": ("0.00", "70.00", "-70.00"),
        "4000": ("0.00", "100.00", "-100.00"),
        "4900": ("10.00", "0.00", "10.00"),
        "6100": ("1.50", "0.00", "1.50"),
        "6200": ("0.00", "0.00", "0.00"),
    }
    assert tb["total_debit"] == tb["total_credit"] == "237.98"
    assert {a["code"]: a["name"] for a in tb["accounts"]}["1200"] == "Accounts receivable"

    early = trial_balance(auditor, as_of="2026-11-04")
    assert early["as_of"] == "2026-11-04"
    early_accounts = {a["code"]: a["balance"] for a in early["accounts"]}
    assert early_accounts["1200"] == "107.25"
    assert early_accounts["1010"] == "0.00"
    assert early["total_debit"] == early["total_credit"] == "107.25"
    assert trial_balance(auditor, as_of="2026-10-31")["total_debit"] == "0.00"

    approval = pending_approval_for(auditor, wo)
    assert controller.post(f"/api/v1/approvals/{approval['id']}/approve", {}).status_code == 200
    after = trial_balance(auditor)
    after_accounts = {a["code"]: a["balance"] for a in after["accounts"]}
    assert after_accounts["6200"] == "5.00"
    assert after_accounts["1200"] == "41.52"
    assert after["total_debit"] == after["total_credit"] == "242.98"
    assert trial_balance(auditor, as_of="2026-11-11")["total_debit"] == "237.98"


def test_trial_balance_requires_a_known_entity(entity, auditor):
    assert auditor.get("/api/v1/ledger/trial-balance").status_code == 400
    assert auditor.get("/api/v1/ledger/trial-balance", entity="ZZ99").status_code == 404
    assert auditor.get("/api/v1/ledger/trial-balance", entity="US01", as_of="11/04/2026").status_code == 400


# --------------------------------------------------------------------------------------------- open amount
def test_open_amount_matches_the_ledger_after_every_step(entity, customer, integration, controller, auditor):
    """open = total − applied − credit notes (net + tax) − write-offs + refunds naming the invoice."""
    send(integration, f.invoice("inv_oa", customer_id=CUS, lines=[("200.00", "14.50")]))
    assert_open(auditor, "inv_oa", "214.50")
    send(integration, f.payment("pay_oa", customer_id=CUS, amount="150.00", allocations=[("inv_oa", "100.00")]))
    assert_open(auditor, "inv_oa", "114.50")
    send(integration, f.payment_applied("pay_oa", [("inv_oa", "30.00")]))
    assert_open(auditor, "inv_oa", "84.50")
    send(integration, f.credit_note("inv_oa", "20.00", tax="1.45"))
    assert_open(auditor, "inv_oa", "63.05")
    wo = send(integration, f.write_off("inv_oa", "3.05"))
    assert_open(auditor, "inv_oa", "63.05")
    approval = pending_approval_for(auditor, wo)
    assert controller.post(f"/api/v1/approvals/{approval['id']}/approve", {}).status_code == 200
    assert_open(auditor, "inv_oa", "60.00")
    send(integration, f.refund("pay_oa", "10.00", invoice_id="inv_oa"))
    assert_open(auditor, "inv_oa", "70.00")
    send(integration, f.refund("pay_oa", "5.00"))  # from unapplied cash: the invoice is untouched
    body = assert_open(auditor, "inv_oa", "70.00")
    assert (body["total"], body["applied_total"], body["credited_total"], body["written_off_total"],
            body["refunded_total"]) == ("214.50", "130.00", "21.45", "3.05", "10.00")
    assert (Decimal(body["total"]) - Decimal(body["applied_total"]) - Decimal(body["credited_total"])
            - Decimal(body["written_off_total"]) + Decimal(body["refunded_total"])) == Decimal(body["open_amount"])
    # Every journal reached the ERP and the whole ledger balances.
    assert not Journal.objects.exclude(status="posted").exists()
    assert not Event.objects.exclude(status="posted").exclude(type="customer.upserted").exists()
    tb = trial_balance(auditor)
    assert tb["total_debit"] == tb["total_credit"]
    assert {a["code"]: a["balance"] for a in tb["accounts"]}["1200"] == "70.00"


def test_amendment_keeps_open_amount_in_line_with_the_ledger(entity, customer, integration, auditor):
    send(integration, f.invoice("inv_oa2", customer_id=CUS, lines=[("100.00", "0")]))
    send(integration, f.payment("pay_oa2", customer_id=CUS, amount="40.00", allocations=[("inv_oa2", "40.00")]))
    send(integration, f.invoice("inv_oa2", customer_id=CUS, lines=[("60.00", "0")], version=2,
                                type_="invoice.amended"))
    assert_open(auditor, "inv_oa2", "20.00")
    receivable = JournalLine.objects.filter(account__code="1200", invoice_id="inv_oa2", journal__status="posted")
    assert sum(ln.debit - ln.credit for ln in receivable) == Decimal("20.00")
