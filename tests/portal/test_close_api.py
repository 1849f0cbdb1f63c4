"""The period close API (`portal.api_views`): GET /api/v1/periods/{entity}/{YYYY-MM}/close for every reader role,
POST close and reopen for controllers and admins, with the status codes and problem codes API.md's style gives
them: 200 closed, 202 approval requested, 409 already closed / not closed / a request waiting, 422 failing
checks without a reason or a reopen without one, 404 a malformed month or an entity outside one's grant.
"""
import pytest

from ledger.models import Period
from portal.selectors import close as close_selectors
from tests import factories as f
from tests.close_helpers import reconciled
from tests.helpers import send

pytestmark = pytest.mark.django_db
CLOSE = "/api/v1/periods/US01/2026-11/close"
REOPEN = "/api/v1/periods/US01/2026-11/reopen"


@pytest.fixture
def november(entity, integration):
    send(integration, f.customer("cus_api"))
    send(integration, f.invoice("inv_api", customer_id="cus_api", lines=[("10.00", "0")]))
    return entity


def test_every_reader_reads_the_checks_and_only_controllers_and_admins_act(november, finance, auditor, controller):
    for api in (finance, auditor, controller):
        body = api.get(CLOSE).json()
        assert (body["entity"], body["period"], body["status"], body["ready"]) == ("US01", "2026-11", "open", False)
        assert [c["check"] for c in body["checks"]] == [c for c, _ in close_selectors.CHECKS]
        assert set(body["checks"][0]) == {"check", "title", "ok", "count", "detail", "link"}
        assert body["pending"] == [] and body["close_checks"] == []
    for api in (finance, auditor):
        assert api.post(CLOSE, {"reason": "x"}).status_code == 403
        assert api.post(REOPEN, {"reason": "x"}).status_code == 403
    assert not Period.objects.filter(status="closed").exists()


def test_close_then_reopen_through_the_api(november, controller, controller2):
    failing = controller.post(CLOSE)
    assert failing.status_code == 422
    problem = failing.json()
    assert problem["code"] == "close_checks_failing"
    assert "reconciliation_run" in {e["field"] for e in problem["errors"]}

    reconciled(november, 2026, 11)
    closed = controller.post(CLOSE, {})
    assert closed.status_code == 200, closed.content
    body = closed.json()
    assert (body["status"], body["closed_by"], body["ready"]) == ("closed", "carl-controller", True)
    assert all(c["ok"] for c in body["close_checks"])
    again = controller2.post(CLOSE)
    assert (again.status_code, again.json()["code"]) == (409, "period_already_closed")

    assert controller.post(REOPEN).json()["code"] == "invalid_request"
    reopen = controller.post(REOPEN, {"reason": "an invoice of November arrived late"})
    assert reopen.status_code == 202
    approval = reopen.json()["approval"]
    assert (approval["kind"], approval["subject"], approval["journal"], approval["status"]) == (
        "period_reopen", "period:US01:2026-11", None, "pending")
    assert reopen.json()["pending"][0]["id"] == approval["id"]
    twice = controller2.post(REOPEN, {"reason": "me too"})
    assert (twice.status_code, twice.json()["code"]) == (409, "approval_pending")
    own = controller.post(f"/api/v1/approvals/{approval['id']}/approve", {"comment": "mine"})
    assert (own.status_code, own.json()["code"]) == (403, "segregation_of_duties")
    assert controller2.post(f"/api/v1/approvals/{approval['id']}/approve", {"comment": "ok"}).status_code == 200
    reopened = controller.get(CLOSE).json()
    assert (reopened["status"], reopened["reopened_by"], reopened["pending"]) == ("open", "carl-controller", [])
    not_closed = controller.post(REOPEN, {"reason": "again"})
    assert (not_closed.status_code, not_closed.json()["code"]) == (409, "period_not_closed")


def test_an_override_is_asked_for_with_202_and_closes_once_approved(november, controller, controller2, admin_api):
    asked = controller.post(CLOSE, {"reason": "reconciled by hand: the ERP read-back is down"})
    assert asked.status_code == 202
    approval = asked.json()["approval"]
    assert (approval["kind"], approval["reason"]) == ("period_close", "reconciled by hand: the ERP read-back is down")
    assert asked.json()["status"] == "open"
    waiting = admin_api.post(CLOSE, {"reason": "mine too"})
    assert (waiting.status_code, waiting.json()["code"]) == (409, "approval_pending")
    listed = controller2.get("/api/v1/approvals", kind="period_close", status="pending").json()["results"]
    assert [a["id"] for a in listed] == [approval["id"]]
    assert controller2.post(f"/api/v1/approvals/{approval['id']}/approve", {"comment": "ok"}).status_code == 200
    body = controller.get(CLOSE).json()
    assert (body["status"], body["closed_by"], body["close_approved_by"]) == (
        "closed", "carl-controller", "cora-controller")
    assert body["close_reason"] == "reconciled by hand: the ERP read-back is down"
    assert not next(c for c in body["close_checks"] if c["check"] == "reconciliation_run")["ok"]


@pytest.mark.parametrize("path, status, code", [
    ("/api/v1/periods/US01/2026-13/close", 404, "not_found"),
    ("/api/v1/periods/US01/november/close", 404, "not_found"),
    ("/api/v1/periods/XX99/2026-11/close", 404, "not_found"),
])
def test_a_malformed_month_or_an_unknown_entity(entity, controller, path, status, code):
    for response in (controller.get(path), controller.post(path, {"reason": "x"})):
        assert (response.status_code, response.json()["code"]) == (status, code)


def test_a_reason_must_be_text(november, controller):
    response = controller.post(CLOSE, {"reason": ["not", "text"]})
    assert (response.status_code, response.json()["code"]) == (422, "invalid_request")
