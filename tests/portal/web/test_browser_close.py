"""A controller works a reconciliation break from the queue and closes the month, in a real browser (system
Chromium) against the live server, with US01 posting to the ERPNext stand-in.

November's small history (a customer, an invoice, a payment) is posted and a full reconciliation run matches it;
the stand-in then loses the invoice's Journal Entry, so the next full run opens `missing_in_erp` and its exception.
The controller finds the exception in the queue, sees the break, re-posts the journal (looked up by reference
first: the ERP has none, so it is sent again) and the run for it resolves the break; a fresh full run started from
/reconciliation/ covers the month after that posting, and the month's page shows every check passing and closes.
The live server runs Celery eagerly and its on-commit work for real, so each page comes back with the run done.
"""
import datetime
import re

import pytest
from playwright.sync_api import expect

from billing_sync import services as billing_services
from billing_sync.models import ReconciliationBreak, ReconciliationRun
from exceptions_queue.models import ExceptionRecord
from ledger import services as ledger
from ledger.models import Entity, Journal, Period
from tests import factories as f
from tests.helpers import send
from tests.portal.web.conftest import assert_accessible, login, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]
NOV = (datetime.date(2026, 11, 1), datetime.date(2026, 11, 30))


def _full_run(entity):
    run = billing_services.reconciliation_run(entity=entity, date_from=NOV[0], date_to=NOV[1], full=True,
                                              actor="test")
    assert run.status == "finished", run.error
    return run


@pytest.fixture
def lost_invoice(web_users, erp_us01, integration):
    """November posted to the ERPNext stand-in, reconciled, then the invoice's ERP document deleted there and a
    full run that opens `missing_in_erp`: (journal, break)."""
    send(integration, f.customer("cus_close"))
    send(integration, f.invoice("inv_close", customer_id="cus_close", lines=[("250.00", "0")]))
    send(integration, f.payment("pay_close", customer_id="cus_close", amount="250.00",
                                allocations=[("inv_close", "250.00")]))
    assert set(Journal.objects.values_list("status", flat=True)) == {"posted"}
    entity = Entity.objects.get(code="US01")
    assert _full_run(entity).breaks == {}
    journal = Journal.objects.get(kind="invoice", document_id="inv_close")
    erp_us01.delete(journal.erp_document_ref)  # the ERP lost it after acknowledging it
    assert _full_run(entity).breaks == {"missing_in_erp": 1}
    return journal, ReconciliationBreak.objects.get(status="open")


def test_a_controller_works_a_break_from_the_queue_and_closes_the_month(page, lost_invoice, erp_us01):
    journal, brk = lost_invoice
    lost_ref = journal.erp_document_ref
    exc = ExceptionRecord.objects.get(pk=brk.exception_id)
    assert (exc.process, exc.code, exc.status) == ("reconciliation", "missing_in_erp", "open")

    login(page, "carl-controller", next_path="/exceptions/")
    row = page.locator(f'tr[data-exception="{exc.pk}"]')
    expect(row).to_contain_text("missing_in_erp")
    row.get_by_role("link", name=re.compile("^Open")).click()
    page.wait_for_load_state()
    panel = page.locator(f'article[data-break="{brk.pk}"]')
    expect(panel).to_contain_text("missing_in_erp")
    expect(panel).to_contain_text(lost_ref)
    expect(panel.get_by_role("link", name=str(journal.pk))).to_have_attribute("href", f"/trace/journal/{journal.pk}/")
    expect(page.locator(f"#break-{brk.pk}-status")).to_have_text("open")
    assert_accessible(page, "exception page with a reconciliation break")
    shot(page, "reconciliation-break")

    with page.expect_navigation():
        panel.get_by_role("button", name="Re-post to the ERP").click()
    expect(page.get_by_text(re.compile(r"Re-posted to the ERP; run \d+ finished: the break is resolved\."))).to_be_visible()
    expect(page.locator("#exception-status")).to_have_text("resolved")
    expect(page.locator(f"#break-{brk.pk}-status")).to_have_text("resolved")
    assert page.get_by_role("button", name="Re-run for this object").count() == 0
    new_ref = ledger.effective_erp_ref(Journal.objects.get(pk=journal.pk))
    assert new_ref != lost_ref and new_ref in erp_us01.entries  # sent again, once
    assert len(erp_us01.by_cheque(erp_us01.entries[new_ref]["cheque_no"])) == 1  # no duplicate
    shot(page, "reconciliation-break-resolved")

    # A full run after the last posting, from the reconciliation page (it runs as the request commits).
    page.goto("/reconciliation/")
    page.get_by_label("Entity").first.select_option("US01")
    page.locator("#run-from").fill("2026-11-01")
    page.locator("#run-to").fill("2026-11-30")
    with page.expect_navigation():
        page.get_by_role("button", name="Start run").click()
    run = ReconciliationRun.objects.latest("id")
    assert (run.full, run.subject, run.status, run.breaks) == (True, "", "finished", {})
    expect(page.get_by_text(f"Full run {run.pk} of US01 finished: ")).to_be_visible()
    expect(page.locator(f'tr[data-run="{run.pk}"] .run-status')).to_have_text("finished")
    assert_accessible(page, "reconciliation page")
    shot(page, "reconciliation-page")

    page.goto("/close/")
    page.get_by_role("link", name="2026-11").click()
    page.wait_for_load_state()
    expect(page.locator("#period-status")).to_have_text("open")
    for check in page.locator("#checks > li").all():
        if check.get_attribute("data-check") != "audit_chain_verified":  # verified again as it closes
            assert check.get_attribute("data-ok") == "true", check.inner_text()
    shot(page, "close-month-ready")
    with page.expect_navigation():
        page.get_by_role("button", name="Close US01 2026-11").click()
    expect(page.get_by_text("US01 2026-11 is closed; nothing more is posted into it.")).to_be_visible()
    expect(page.locator("#period-status")).to_have_text("closed")
    record = page.locator("#close-record")
    expect(record).to_contain_text("carl-controller")
    assert record.locator(".check-ok").count() == page.locator("#checks > li").count()
    assert record.locator(".check-bad").count() == 0
    shot(page, "close-month-closed")
    period = Period.objects.get(entity__code="US01", year=2026, month=11)
    assert period.status == "closed" and all(c["ok"] for c in period.close_checks)
