"""The exception queue in a real browser (system Chromium): a finance-ops user filters the queue, assigns,
comments on and resolves an exception; and retries a journal the ERP (an ERPNext stand-in) first refused,
then sees it posted. Keyboard use, a narrow screen and an axe-core accessibility check are covered too.
"""
import re

import pytest

from exceptions_queue.models import ExceptionRecord
from ledger.models import Journal
from tests import factories as f
from tests.helpers import send
from tests.portal.web.conftest import assert_accessible, login, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def queue(web_users, integration):
    """An over-applied payment (over_application) and an invoice for an unknown customer, sent as events."""
    send(integration, f.customer("cus_b"))
    send(integration, f.invoice("inv_b", customer_id="cus_b", lines=[("100.00", "7.25")]))
    over = send(integration, f.payment("pay_b", customer_id="cus_b", amount="200.00",
                                       allocations=[("inv_b", "150.00")]))["id"]
    send(integration, f.invoice("inv_u", customer_id="cus_unknown", lines=[("20.00", "0")]))
    return ExceptionRecord.objects.get(event_id=over)


def test_finance_ops_assigns_comments_and_resolves(page, queue, live_server):
    login(page, "fiona-ops", next_path="/exceptions/")
    assert page.get_by_role("heading", name="Exceptions").is_visible()
    table = page.get_by_role("table")
    assert table.get_by_role("columnheader", name="Source object").is_visible()
    assert table.locator("tbody tr").count() == 2
    assert_accessible(page)
    shot(page, "exceptions-list")

    page.get_by_label("Code").select_option("over_application")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_load_state()
    assert "code=over_application" in page.url
    assert page.locator("tbody tr").count() == 1
    row = page.locator(f'tr[data-exception="{queue.pk}"]')
    assert row.locator("code").first.inner_text() == "over_application"
    assert re.search(r"\d+m / SLA 24h", row.locator(".badge.age-ok").inner_text())
    shot(page, "exceptions-filtered")

    page.get_by_label("Search source ids").fill("pay_b")
    page.get_by_label("Search source ids").press("Enter")  # the keyboard submits the filter form
    page.wait_for_load_state()
    assert page.locator("tbody tr").count() == 1

    row.get_by_role("link", name=re.compile("^Open")).click()
    page.wait_for_load_state()
    assert page.url.endswith(f"/exceptions/{queue.pk}/")
    page.get_by_role("button", name="Assign to me").click()
    page.wait_for_load_state()
    assert page.get_by_role("status").inner_text().strip() == "Assigned to you."
    assert page.locator("#exception-owner").inner_text() == "fiona-ops"

    page.get_by_label("Comment", exact=True).fill("Billing will amend the invoice to 150.00")
    page.get_by_role("button", name="Comment", exact=True).click()
    page.wait_for_load_state()
    assert "Billing will amend the invoice to 150.00" in page.locator("#comments").inner_text()
    assert_accessible(page)
    shot(page, "exception-detail")

    page.get_by_label("Resolution").fill("Amended in billing; payment re-sent as a new event")
    page.get_by_role("button", name="Resolve").click()
    page.wait_for_load_state()
    assert page.get_by_role("status").inner_text().strip() == "Resolved."
    assert page.locator("#exception-status").inner_text() == "resolved"
    assert page.locator("#exception-owner").inner_text() == "fiona-ops"
    assert "Amended in billing" in page.locator("#exception-resolution").inner_text()
    assert "Billing will amend the invoice to 150.00" in page.locator("#comments").inner_text()
    assert page.get_by_role("button", name="Retry").count() == 0
    assert "exception.resolved" in page.locator("#audit-entries").inner_text()
    shot(page, "exception-resolved")

    queue.refresh_from_db()
    assert (queue.status, queue.owner.username, queue.comments.count()) == ("resolved", "fiona-ops", 1)


def test_finance_ops_retries_a_posting_failure_after_the_erp_recovers(page, web_users, erp_us01, integration,
                                                                      live_server):
    erp_us01.fail_validation = "Posting date is in a locked period"  # 417: a permanent refusal
    send(integration, f.customer("cus_e"))
    event_id = send(integration, f.invoice("inv_e", customer_id="cus_e", lines=[("80.00", "0")]))["id"]
    exc = ExceptionRecord.objects.get(event_id=event_id)
    journal = Journal.objects.get(event_id=event_id)
    assert (exc.code, journal.status, erp_us01.entries) == ("posting_failed", "failed", {})

    login(page, "fiona-ops", next_path="/exceptions/?code=posting_failed")
    row = page.locator(f'tr[data-exception="{exc.pk}"]')
    assert "inv_e" in row.inner_text()
    row.get_by_role("link", name=re.compile("^Open")).click()
    page.wait_for_load_state()
    journal_item = page.locator(f'li[data-journal="{journal.pk}"]')
    assert journal_item.locator(".journal-status").inner_text() == "failed"
    assert "locked period" in journal_item.inner_text()  # the ERP's message on the attempt
    assert page.get_by_role("button", name="Replay").count() == 0  # replaying would book it twice

    erp_us01.fail_validation = None  # the ERP recovers
    page.get_by_role("button", name="Retry").click()
    page.wait_for_load_state()
    assert page.get_by_role("status").inner_text().strip() == "Retried: the exception is resolved."
    assert page.locator("#exception-status").inner_text() == "resolved"
    journal_item = page.locator(f'li[data-journal="{journal.pk}"]')
    assert journal_item.locator(".journal-status").inner_text() == "posted"
    journal.refresh_from_db()
    assert journal.status == "posted" and journal.erp_document_ref in journal_item.inner_text()
    assert len(erp_us01.entries) == 1
    shot(page, "exception-posting-retried")


def test_narrow_screen_and_auditor_view(new_page, queue):
    page = new_page(width=390, height=800)
    login(page, "aude-auditor", next_path="/exceptions/")
    assert page.locator("tbody tr").count() == 2
    assert page.get_by_role("button", name="Assign to me").count() == 0
    assert page.get_by_role("button", name="Retry selected").count() == 0
    # The page itself never scrolls sideways; the table scrolls inside its wrapper.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.locator(f'tr[data-exception="{queue.pk}"]').get_by_role("link", name=re.compile("^Open")).click()
    page.wait_for_load_state()
    assert page.locator("form[method=post] button[name=action]").count() == 0
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    assert_accessible(page)
