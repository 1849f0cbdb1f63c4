"""An auditor in a real browser: sees every page of the portal, is offered no action anywhere, and the
actions forged from their own signed-in session (with a valid CSRF token) are refused by the server.

Then the same pages at a phone's width and by keyboard alone: the skip link comes first and lands in
the main region, and axe-core finds no violation on any page at either width.
"""
import pytest

from billing_sync.models import Invoice
from exceptions_queue.models import Approval, ExceptionRecord
from tests import factories as f
from tests.portal.web.conftest import assert_accessible, login, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def portal(web_users, integration):
    """An open over_application exception and a pending write-off approval, sent as real events."""
    integration.send(f.customer("cus_a"))
    integration.send(f.invoice("inv_a", customer_id="cus_a", lines=[("100.00", "7.25")]))
    integration.send(f.payment("pay_a", customer_id="cus_a", amount="300.00", allocations=[("inv_a", "300.00")]))
    integration.send(f.write_off("inv_a", "20.00"))
    return {"exception": ExceptionRecord.objects.get(code="over_application"),
            "approval": Approval.objects.get(status="pending")}


def pages(portal):
    return {"dashboard": "/", "exceptions": "/exceptions/",
            "exception": f"/exceptions/{portal['exception'].pk}/",
            "approvals": "/approvals/", "approval": f"/approvals/{portal['approval'].pk}/",
            "reconciliation": "/reconciliation/"}


def action_forms(page):
    """POST forms on the page other than signing out: what a person could act with."""
    return page.locator("main form[method=post], main form[method=POST]")


def test_an_auditor_sees_every_page_and_can_act_on_none(page, portal):
    login(page, "aude-auditor")
    for name, path in pages(portal).items():
        response = page.goto(path)
        assert response.status == 200, (name, response.status)
        assert action_forms(page).count() == 0, f"{name} offers the auditor a form"
        for label in ("Retry", "Resolve", "Assign to me", "Approve", "Reject", "Comment", "Escalate", "Replay"):
            assert page.get_by_role("button", name=label, exact=True).count() == 0, f"{label} on {name}"
        shot(page, f"auditor-{name}")
    assert page.goto("/adjustments/").status == 403

    # Forged actions from the auditor's own session, with the CSRF token the pages gave it.
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    headers = {"X-CSRFToken": token, "Referer": page.url}
    exc, approval = portal["exception"], portal["approval"]
    invoice_pk = Invoice.objects.get(invoice_id="inv_a").pk
    forged = [
        (f"/exceptions/{exc.pk}/", {"action": "resolve", "resolution": "auditor closes it"}),
        (f"/exceptions/{exc.pk}/", {"action": "assign_me"}),
        ("/exceptions/bulk", {"action": "retry", "ids": str(exc.pk)}),
        (f"/approvals/{approval.pk}/approve", {"comment": "auditor approves"}),
        (f"/approvals/{approval.pk}/reject", {"comment": "auditor rejects"}),
        (f"/adjustments/invoices/{invoice_pk}/write-off/", {"amount": "1.00", "reason": "x"}),
    ]
    for path, form in forged:
        response = page.request.post(path, form=form, headers=headers, max_redirects=0)
        assert response.status == 403, (path, response.status)
    exc.refresh_from_db()
    approval.refresh_from_db()
    assert exc.status == "open" and exc.owner_id is None
    assert approval.status == "pending" and not approval.decisions.exists()


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_is_accessible_and_keyboard_navigable(new_page, portal, width):
    page = new_page(width=width, height=900)
    login(page, "fiona-ops")
    for name, path in {**pages(portal), "adjustments": "/adjustments/",
                       "journal": "/adjustments/journal/"}.items():
        page.goto(path)
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent.trim()") == "Skip to content", name
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "main", name
        assert_accessible(page, f"{name} at {width}px")
        # Nothing wider than the screen: the page never scrolls sideways (tables scroll in their own box).
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), f"{name} at {width}px"
        if width < 800:
            shot(page, f"narrow-{name}")
