"""Approvals and manual adjustments in a real browser (system Chromium): raise, approve, reject, two
approvers, segregation of duties with a forged POST, the manual journal form with its JavaScript row adder,
keyboard use, a narrow screen and an axe-core check of each page.

Invoices and credit notes come in as real events through the API; the live server runs Celery eagerly,
so an approval posts its journal before the page comes back.
"""
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from billing_sync.models import CreditNote, Invoice
from exceptions_queue.models import Approval
from ledger.models import Journal
from tests import factories as f
from tests.portal.web.conftest import assert_accessible, login, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]



def path_of(page) -> str:
    return urlsplit(page.url).path


@pytest.fixture
def invoice(web_users, integration) -> Invoice:
    """A posted invoice of 20,000.00 (18,000.00 + 2,000.00 tax) for Initech."""
    customer = f.customer(name="Initech")
    assert integration.send(customer).status_code == 202
    payload = f.invoice(customer_id=customer["data"]["customer_id"], lines=[("18000.00", "2000.00")],
                        number="INV-INITECH-7")
    assert integration.send(payload).status_code == 202
    return Invoice.objects.get(invoice_id=payload["data"]["invoice_id"])


def raise_write_off_in_ui(page, invoice, amount: str, reason: str, *, screenshot: str | None = None) -> Approval:
    page.goto("/adjustments/")
    page.get_by_label("Invoice id or number").fill(invoice.number)
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=f"Write-off of {invoice.number}").click()
    expect(page.get_by_role("heading", name=f"Raise a write-off on invoice {invoice.number}")).to_be_visible()
    assert page.locator("#open-amount").inner_text() == "20,000.00 USD"
    page.get_by_label("Amount to write off").fill(amount)
    page.get_by_label("Reason").fill(reason)
    if screenshot:
        assert_accessible(page)
        shot(page, screenshot)
    with page.expect_navigation():
        page.get_by_role("button", name="Raise write-off").click()
    approval = Approval.objects.get(document_id__startswith="MAN-WO-", reason=reason)
    assert path_of(page) == f"/approvals/{approval.pk}/"
    return approval


def test_a_controller_approves_a_write_off_that_then_posts(new_page, invoice):
    fiona = login(new_page(), "fiona-ops")
    approval = raise_write_off_in_ui(fiona, invoice, "350.00", "Initech is in liquidation",
                                     screenshot="adjustment-write-off-form")
    expect(fiona.get_by_text("You raised this request; another controller must decide it.")).to_be_visible()
    assert approval.requested_by.username == "fiona-ops"

    carl = login(new_page(), "carl-controller")
    carl.goto("/approvals/")
    row = carl.locator(f"tr[data-approval='{approval.pk}']")
    assert "350.00 USD" in row.inner_text() and "fiona-ops" in row.inner_text() and "0 of 1" in row.inner_text()
    assert_accessible(carl)
    shot(carl, "approvals-inbox")
    row.get_by_role("link", name=approval.document_id).click()
    expect(carl.get_by_role("heading", name=f"Write-off {approval.document_id}")).to_be_visible()
    assert carl.locator("#reason").inner_text() == "Initech is in liquidation"
    assert carl.locator("#invoice-open").inner_text() == "20,000.00"
    assert carl.locator("#journal-status").inner_text() == "pending_approval"
    assert_accessible(carl)
    shot(carl, "approval-detail")

    carl.get_by_label("Comment").fill("Liquidator confirmed no dividend")
    with carl.expect_navigation():
        carl.get_by_role("button", name="Approve").click()
    expect(carl.get_by_text(f"Approved {approval.document_id}: its journal is released to post.")).to_be_visible()
    assert carl.locator("#approval-status").inner_text() == "approved"
    assert carl.locator("#journal-status").inner_text() == "posted"
    assert carl.locator("#journal-erp-ref").inner_text().startswith("JE-US01-")
    assert carl.locator("#invoice-open").inner_text() == "19,650.00"
    assert carl.locator("#invoice-ledger-open").inner_text() == "19,650.00"
    assert "Liquidator confirmed no dividend" in carl.locator("#decisions").inner_text()
    assert carl.get_by_role("button", name="Approve").count() == 0
    shot(carl, "approval-approved")
    assert Journal.objects.get(pk=approval.journal_id).status == Journal.Status.POSTED


def test_a_controller_rejects_a_credit_note_that_then_never_posts(new_page, invoice, integration):
    note = f.credit_note(invoice.invoice_id, "1800.00", tax="200.00")
    assert integration.send(note).status_code == 202
    credit_note_id = note["data"]["credit_note_id"]
    approval = Approval.objects.get(document_id=credit_note_id)
    assert approval.reason == "service credit"  # the event's own reason reaches the approver

    carl = login(new_page(), "carl-controller")
    carl.goto(f"/approvals/{approval.pk}/")
    expect(carl.get_by_role("heading", name=f"Credit note {credit_note_id}")).to_be_visible()
    assert "2,000.00" in carl.locator("#journal").inner_text()
    carl.get_by_label("Comment").fill("Not agreed with the account manager")
    with carl.expect_navigation():
        carl.get_by_role("button", name="Reject").click()
    expect(carl.get_by_text(f"Rejected {credit_note_id}: its journal will never post.")).to_be_visible()
    assert carl.locator("#approval-status").inner_text() == "rejected"
    assert carl.locator("#journal-status").inner_text() == "rejected"
    assert carl.locator("#invoice-open").inner_text() == "20,000.00"
    shot(carl, "approval-rejected")

    journal = Journal.objects.get(pk=approval.journal_id)
    assert journal.status == Journal.Status.REJECTED and journal.erp_document_ref is None
    assert CreditNote.objects.get(credit_note_id=credit_note_id).status == "rejected"
    invoice.refresh_from_db()
    assert invoice.credited_total == 0 and invoice.open_amount == Decimal("20000.00")


def test_a_controller_cannot_approve_their_own_manual_write_off(new_page, invoice):
    carl = login(new_page(), "carl-controller")
    approval = raise_write_off_in_ui(carl, invoice, "45.00", "Bank charges the customer refused")
    expect(carl.get_by_text("You raised this request; another controller must decide it.")).to_be_visible()
    assert carl.get_by_role("button", name="Approve").count() == 0
    assert carl.get_by_role("button", name="Reject").count() == 0
    assert carl.get_by_label("Comment").count() == 0
    shot(carl, "approval-own-request")

    # A forged POST from the same signed-in browser, with a valid CSRF token taken from the page.
    answer = carl.evaluate("""async (url) => {
        const token = document.querySelector("input[name=csrfmiddlewaretoken]").value;
        const body = new URLSearchParams({csrfmiddlewaretoken: token, comment: "forged"});
        const response = await fetch(url, {method: "POST", body, credentials: "same-origin"});
        return {status: response.status, text: await response.text()};
    }""", f"/approvals/{approval.pk}/approve")
    assert answer["status"] == 403
    assert "segregation_of_duties" in answer["text"]
    approval.refresh_from_db()
    assert approval.status == "pending" and not approval.decisions.exists()
    assert Journal.objects.get(pk=approval.journal_id).status == Journal.Status.PENDING_APPROVAL

    # The inbox marks it as theirs.
    carl.goto("/approvals/")
    assert "your request" in carl.locator(f"tr[data-approval='{approval.pk}']").inner_text()


def test_a_two_approver_write_off_needs_a_second_controller(new_page, invoice):
    fiona = login(new_page(), "fiona-ops")
    approval = raise_write_off_in_ui(fiona, invoice, "12500.00", "Customer insolvent; debt sold")
    assert approval.required_approvals == 2

    carl = login(new_page(), "carl-controller")
    carl.goto(f"/approvals/{approval.pk}/")
    assert carl.locator("#approval-progress").inner_text() == "0 of 2 approvals"
    assert "two different controllers must approve it" in carl.locator("main").inner_text()
    carl.get_by_label("Comment").fill("First approval")
    with carl.expect_navigation():
        carl.get_by_role("button", name="Approve").click()
    assert carl.locator("#approval-progress").inner_text() == "1 of 2 approvals"
    assert carl.locator("#approval-status").inner_text() == "pending"
    assert carl.locator("#journal-status").inner_text() == "pending_approval"
    expect(carl.get_by_text("You approved this on")).to_be_visible()
    assert carl.get_by_role("button", name="Approve").count() == 0
    shot(carl, "approval-two-approvers")

    # Cora decides with the keyboard alone: type the comment, Tab to Approve, Enter.
    cora = login(new_page(), "cora-controller")
    cora.goto(f"/approvals/{approval.pk}/")
    cora.get_by_label("Comment").focus()
    cora.keyboard.type("Second approval")
    cora.keyboard.press("Tab")
    assert cora.evaluate("document.activeElement.textContent.trim()") == "Approve"
    with cora.expect_navigation():
        cora.keyboard.press("Enter")
    assert cora.locator("#approval-progress").inner_text() == "2 of 2 approvals"
    assert cora.locator("#approval-status").inner_text() == "approved"
    assert cora.locator("#journal-status").inner_text() == "posted"
    assert [d.user.username for d in Approval.objects.get(pk=approval.pk).decisions.all()] == [
        "carl-controller", "cora-controller"]
    invoice.refresh_from_db()
    assert invoice.written_off_total == Decimal("12500.00")


def test_the_manual_journal_form_adds_lines_and_goes_to_its_approval(new_page, web_users):
    fiona = login(new_page(), "fiona-ops")
    fiona.goto("/adjustments/journal/")
    assert fiona.locator("tr.journal-line").count() == 4
    fiona.get_by_label("Accounting date").fill("2026-11-30")
    fiona.get_by_label("Description").fill("Reclassify October fees")
    fiona.get_by_label("Line 1 account").select_option("6100")
    fiona.get_by_label("Line 1 debit").fill("75.00")
    fiona.get_by_label("Line 2 account").select_option("2300")
    fiona.get_by_label("Line 2 credit").fill("70.00")
    assert fiona.locator("#total-difference").inner_text() == "Difference 5.00"
    fiona.get_by_role("button", name="Add a line").click()  # JavaScript: no round trip
    assert fiona.locator("tr.journal-line").count() == 5
    assert fiona.locator("input[name='lines-TOTAL_FORMS']").input_value() == "5"
    fiona.get_by_label("Line 5 account").select_option("2300")
    fiona.get_by_label("Line 5 credit").fill("5.00")
    fiona.get_by_label("Line 5 memo").fill("rounding from the processor's statement")
    assert fiona.locator("#total-difference").inner_text() == "Balanced"
    assert_accessible(fiona)
    shot(fiona, "manual-journal-form")
    with fiona.expect_navigation():
        fiona.get_by_role("button", name="Submit for approval").click()
    journal = Journal.objects.get(kind="manual")
    assert path_of(fiona) == f"/approvals/{journal.approval.pk}/"
    assert [(ln.account.code, ln.debit, ln.credit) for ln in journal.lines.order_by("line_no")] == [
        ("6100", Decimal("75.00"), 0), ("2300", 0, Decimal("70.00")), ("2300", 0, Decimal("5.00"))]
    expect(fiona.get_by_text("You raised this request; another controller must decide it.")).to_be_visible()


def test_the_manual_journal_form_works_without_javascript_and_shows_errors_inline(browser, live_server, web_users):
    context = browser.new_context(base_url=live_server.url, java_script_enabled=False,
                                  viewport={"width": 1280, "height": 900})
    try:
        page = login(context.new_page(), "fiona-ops")
        page.goto("/adjustments/journal/")
        page.get_by_label("Accounting date").fill("2026-11-30")
        page.get_by_label("Description").fill("Accrual")
        page.get_by_label("Line 1 account").select_option("6100")
        page.get_by_label("Line 1 debit").fill("10.00")
        page.get_by_label("Line 2 account").select_option("2300")
        page.get_by_label("Line 2 credit").fill("9.00")
        with page.expect_navigation():  # the server adds the row
            page.get_by_role("button", name="Add a line").click()
        assert page.locator("tr.journal-line").count() == 5
        assert page.get_by_label("Line 1 debit").input_value() == "10.00"
        with page.expect_navigation():
            page.get_by_role("button", name="Submit for approval").click()
        alert = page.get_by_role("alert").first
        assert "unbalanced_journal" in alert.inner_text() and "differ by 1.00" in alert.inner_text()
        assert not Journal.objects.filter(kind="manual").exists()
    finally:
        context.close()


def test_approval_pages_on_a_narrow_screen(new_page, invoice, integration):
    assert integration.send(f.write_off(invoice.invoice_id, "10.00")).status_code == 202
    approval = Approval.objects.get()
    carl = login(new_page(width=390, height=844), "carl-controller")
    carl.goto(f"/approvals/{approval.pk}/")
    # Nothing but the tables' own scroll areas may be wider than the screen.
    assert carl.evaluate("document.documentElement.scrollWidth") <= 390
    expect(carl.get_by_role("button", name="Approve")).to_be_visible()
    carl.goto("/approvals/")
    assert carl.evaluate("document.documentElement.scrollWidth") <= 390
    assert_accessible(carl)
    for path in (f"/adjustments/invoices/{invoice.pk}/write-off/", f"/adjustments/invoices/{invoice.pk}/credit-memo/",
                 "/adjustments/journal/", f"/adjustments/?q={invoice.number}"):
        carl.goto(path)
        assert carl.evaluate("document.documentElement.scrollWidth") <= 390, path
        assert_accessible(carl)
