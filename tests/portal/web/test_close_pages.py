"""The period close pages (`/close/`, `/close/<entity>/<YYYY-MM>/`) through Django's test client: every reader
sees each month's live checks with links to what fails, only controllers and admins get the forms, a close with
failing checks goes to a second controller (whose approval page shows the checks and closes the month), a
closed month offers only a reopen request, and the server refuses forged POSTs whatever the page showed.
"""
import html
import re

import pytest

from billing_sync.models import Event
from exceptions_queue.models import Approval
from ledger.models import Period
from portal.selectors import close as close_selectors
from tests import factories as f
from tests.close_helpers import reconciled
from tests.helpers import send
from tests.portal.web.conftest import client_for

pytestmark = pytest.mark.django_db
MONTH = "/close/US01/2026-11/"


@pytest.fixture
def staff(finance, controller, controller2, auditor, admin_api):
    return client_for


@pytest.fixture
def november(entity, integration):
    send(integration, f.customer("cus_web"))
    send(integration, f.invoice("inv_web", customer_id="cus_web", lines=[("10.00", "0")]))
    return entity


def _text(response) -> str:
    return html.unescape(re.sub(r"\s+", " ", response.content.decode()))


def _forms(response) -> set[str]:
    return set(re.findall(r'<form method="post"[^>]*id="([^"]+)"', response.content.decode()))


def test_the_overview_lists_each_entitys_months_with_their_checks(november, staff):
    response = staff("aude-auditor").get("/close/")
    assert response.status_code == 200
    text = _text(response)
    assert 'href="/close/"' in response.content.decode() and 'aria-current="page">Close' in text
    assert "US01" in text and 'data-month="US01-2026-11"' in text
    for heading in ("Events", "Journals", "Approvals", "Exceptions", "Reconciled", "Breaks", "Audit chain"):
        assert f">{heading}</th>" in text
    row = re.search(r'data-month="US01-2026-11">(.*?)</tr>', response.content.decode(), re.S).group(1)
    assert 'href="/close/US01/2026-11/#check-reconciliation_run"' in row  # what fails, linked
    assert "only controllers and admins close and reopen" in text


def test_a_reader_sees_the_checks_but_no_form_and_a_forged_post_is_refused(november, staff):
    auditor = staff("aude-auditor")
    response = auditor.get(MONTH)
    assert response.status_code == 200
    text = _text(response)
    assert 'data-check="reconciliation_run" data-ok="false"' in text
    assert 'data-check="journals_posted" data-ok="true"' in text
    assert "No finished full reconciliation run covers the whole month." in text
    assert _forms(response) == set()
    for username in ("aude-auditor", "fiona-ops"):
        assert staff(username).post(f"{MONTH}close", {"reason": "x"}).status_code == 403
        assert staff(username).post(f"{MONTH}reopen", {"reason": "x"}).status_code == 403
    assert not Approval.objects.exists() and not Period.objects.filter(status="closed").exists()


def test_a_controller_closes_a_month_whose_checks_pass(november, staff):
    reconciled(november, 2026, 11)
    carl = staff("carl-controller")
    response = carl.get(MONTH)
    assert _forms(response) == {"close-form"}
    done = carl.post(f"{MONTH}close")
    assert done.status_code == 302 and done.url == MONTH
    page = carl.get(MONTH)
    text = _text(page)
    assert 'id="period-status">closed' in text and "Close record" in text and "by carl-controller" in text
    assert _forms(page) == {"reopen-form"}


def test_closing_with_failing_checks_goes_to_a_second_controller(november, staff):
    carl, cora = staff("carl-controller"), staff("cora-controller")
    assert _forms(carl.get(MONTH)) == {"override-form"}
    refused = carl.post(f"{MONTH}close", {"reason": ""})
    assert refused.status_code == 422
    assert "close_checks_failing" in _text(refused) and "reconciliation_run" in _text(refused)

    asked = carl.post(f"{MONTH}close", {"reason": "ERP read-back is down; tied out by hand"})
    assert asked.status_code == 302
    approval = Approval.objects.get(kind="period_close")
    page = carl.get(MONTH)
    assert f'href="/approvals/{approval.pk}/"' in page.content.decode() and _forms(page) == set()

    # The approval page: journal-less, the month's live checks, the requester cannot decide.
    own = carl.get(f"/approvals/{approval.pk}/")
    assert own.status_code == 200 and "You raised this request" in _text(own)
    detail = cora.get(f"/approvals/{approval.pk}/")
    text = _text(detail)
    assert "Close checks of 2026-11 (live)" in text and 'data-check="reconciliation_run"' in text
    assert 'id="journal"' not in text and "ERP read-back is down" in text
    inbox = _text(cora.get("/approvals/?kind=period_close"))
    assert "Period close with failing checks" in inbox and "US01 2026-11" in inbox
    forged = carl.post(f"/approvals/{approval.pk}/approve", {"comment": "mine"})
    assert forged.status_code == 403 and "segregation_of_duties" in _text(forged)

    approved = cora.post(f"/approvals/{approval.pk}/approve", {"comment": "seen the tie-out"})
    assert approved.status_code == 302
    record = _text(carl.get(MONTH))
    assert 'id="period-status">closed' in record and 'id="approved-by">cora-controller' in record
    assert "ERP read-back is down; tied out by hand" in record


def test_a_closed_month_is_reopened_only_through_a_second_controller(november, staff):
    reconciled(november, 2026, 11)
    carl, cora = staff("carl-controller"), staff("cora-controller")
    carl.post(f"{MONTH}close")
    assert carl.post(f"{MONTH}reopen", {"reason": ""}).status_code == 422
    assert carl.post(f"{MONTH}reopen", {"reason": "a late credit note"}).status_code == 302
    approval = Approval.objects.get(kind="period_reopen")
    page = carl.get(MONTH)
    assert 'id="pending-reopen"' in page.content.decode() and _forms(page) == set()
    assert "Reopening 2026-11" in _text(cora.get(f"/approvals/{approval.pk}/"))
    assert cora.post(f"/approvals/{approval.pk}/approve", {"comment": "ok"}).status_code == 302
    assert 'id="period-status">open' in _text(carl.get(MONTH))


def test_an_unknown_entity_or_month_is_404(entity, staff):
    carl = staff("carl-controller")
    assert carl.get("/close/XX01/2026-11/").status_code == 404
    assert carl.get("/close/US01/2026-13/").status_code == 404


def test_the_approvals_inbox_filters_by_the_month_of_the_documents(november, integration, staff):
    send(integration, f.invoice("inv_wo_web", customer_id="cus_web", lines=[("50.00", "0")]))
    send(integration, f.write_off("inv_wo_web", "5.00", occurred_at="2026-11-20T10:00:00Z"))
    carl = staff("carl-controller")
    check = _text(carl.get(MONTH))
    assert 'href="/approvals/?status=pending&entity=US01&period=2026-11"' in check
    document_id = Approval.objects.get(kind="write_off").document_id
    assert document_id in _text(carl.get("/approvals/?status=pending&entity=US01&period=2026-11"))
    assert "No approvals match" in _text(carl.get("/approvals/?status=pending&entity=US01&period=2026-10"))


def test_the_admin_links_of_the_checks_list_what_fails(november, integration, staff):
    """The events and journals checks link to the admin's lists filtered to what fails (admins read them)."""
    accepted = integration.client.post("/api/v1/events", f.invoice("inv_wait", customer_id="cus_web",
                                                                    issue_date="2026-11-20"), format="json").json()
    by_check = {c["check"]: c for c in close_selectors.checks(november, 2026, 11)}
    admin = staff("ada-admin")
    events = admin.get(by_check["events_processed"]["link"])
    assert events.status_code == 200 and accepted["id"] in events.content.decode()
    posted = Event.objects.filter(status="posted").values_list("pk", flat=True)
    assert posted and not any(str(pk) in events.content.decode() for pk in posted)
    journals = admin.get(by_check["journals_posted"]["link"])
    assert journals.status_code == 200 and list(journals.context["cl"].result_list) == []
