"""The period close that checks before it locks (`portal.services.close`): each failing check, set up as it
happens (an event not processed yet, a journal not posted, an approval pending, an open exception, no or an
old reconciliation run, an open break, a broken audit chain), blocks the close; with every check passing a
controller closes and the checks are recorded; closing anyway needs a reason and a second controller
(never the requester); reopening always needs one; rejecting changes nothing; all of it audited.
"""
import datetime
import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from audit.models import AuditEntry
from billing_sync import services as billing_services
from billing_sync import tasks as billing_tasks
from config.errors import ApiError, Codes
from exceptions_queue import services as queue
from exceptions_queue import tasks as queue_tasks
from exceptions_queue.models import Approval, ExceptionRecord
from ledger import services as ledger
from ledger.models import Journal, Period
from portal import services
from portal.selectors import close as close_selectors
from tests import factories as f
from tests.audit.tamper import edit_entry, triggers_off
from tests.close_helpers import reconciled
from tests.helpers import EVENTS, send

pytestmark = pytest.mark.django_db
User = get_user_model()
YEAR, MONTH = 2026, 11
CUS = "cus_close"


def _user(username):
    return User.objects.get(username=username)


@pytest.fixture
def people(controller, controller2, finance):
    """carl and cora (controllers), fiona (finance ops)."""
    return {"carl": _user("carl-controller"), "cora": _user("cora-controller"), "fiona": _user("fiona-ops")}


@pytest.fixture
def booked(entity, integration):
    """November of US01 as it should be at month end: a customer, an invoice and a payment, all posted."""
    send(integration, f.customer(CUS))
    send(integration, f.invoice("inv_close", customer_id=CUS, lines=[("100.00", "0")]))
    send(integration, f.payment("pay_close", customer_id=CUS, amount="100.00", allocations=[("inv_close", "100.00")]))
    assert set(Journal.objects.values_list("status", flat=True)) == {"posted"}
    return entity


def _failing(entity) -> set[str]:
    return {c["check"] for c in close_selectors.checks(entity, YEAR, MONTH) if not c["ok"]}


def _refused(entity, user) -> ApiError:
    with pytest.raises(ApiError) as refused:
        services.period_close(entity=entity, year=YEAR, month=MONTH, actor=user)
    assert not Period.objects.filter(entity=entity, status="closed").exists()
    return refused.value


def _assert_blocked_by(entity, user, check_id):
    assert check_id in _failing(entity)
    refused = _refused(entity, user)
    assert (refused.status, refused.code) == (422, Codes.CLOSE_CHECKS_FAILING)
    assert check_id in {e["field"] for e in refused.errors}


# ------------------------------------------------------------------------------------ every check passes
def test_a_controller_closes_a_month_whose_checks_all_pass_and_the_checks_are_recorded(booked, people):
    reconciled(booked, YEAR, MONTH)
    before = AuditEntry.objects.order_by("-id").values_list("id", flat=True).first()
    outcome = services.period_close(entity=booked, year=YEAR, month=MONTH, actor=people["carl"])
    assert outcome.status == "closed"
    period = Period.objects.get(entity=booked, year=YEAR, month=MONTH)
    assert (period.status, period.closed_by, period.close_reason, period.close_approved_by) == (
        "closed", "carl-controller", "", "")
    assert [c["check"] for c in period.close_checks] == [c for c, _ in close_selectors.CHECKS]
    assert all(c["ok"] for c in period.close_checks)
    assert all(set(c) == {"check", "title", "ok", "count", "detail"} for c in period.close_checks)
    entry = AuditEntry.objects.get(id__gt=before, action="period.closed")
    assert entry.object_id == "US01:2026-11" and entry.after["override"] is False
    assert entry.after["failing_checks"] == [] and len(entry.after["checks"]) == len(close_selectors.CHECKS)
    # Closing verified the audit chain first (it had never been verified).
    assert "Verified" in period.close_checks[-1]["detail"]
    # Nothing is posted into it any more, and closing it again is refused.
    refused = _refused_again(booked, people["cora"])
    assert (refused.status, refused.code) == (409, Codes.PERIOD_ALREADY_CLOSED)


def _refused_again(entity, user) -> ApiError:
    with pytest.raises(ApiError) as refused:
        services.period_close(entity=entity, year=YEAR, month=MONTH, actor=user)
    return refused.value


def test_an_empty_month_still_needs_a_full_reconciliation_run(entity, people):
    assert _failing(entity) == {"reconciliation_run", "audit_chain_verified"}  # never verified yet
    _assert_blocked_by(entity, people["carl"], "reconciliation_run")
    reconciled(entity, YEAR, MONTH)
    assert services.period_close(entity=entity, year=YEAR, month=MONTH, actor=people["carl"]).status == "closed"


# --------------------------------------------------------------------------------- each failing check blocks
def test_an_event_not_processed_yet_blocks(booked, integration, people):
    response = integration.client.post(EVENTS, f.invoice("inv_late", customer_id=CUS, issue_date="2026-11-28"),
                                       format="json")  # accepted; its processing (after commit) never ran
    assert response.json()["status"] == "accepted"
    reconciled(booked, YEAR, MONTH)
    assert _failing(booked) == {"events_processed", "audit_chain_verified"}
    check = close_selectors.checks(booked, YEAR, MONTH, items=True)[0]
    assert check["count"] == 1 and "1 accepted" in check["detail"]
    assert check["items"] == [{"label": f"{response.json()['event_id']} (invoice.issued, accepted)",
                               "url": f"/trace/event/{response.json()['id']}/"}]
    _assert_blocked_by(booked, people["carl"], "events_processed")
    # December's own events do not block November.
    assert close_selectors.checks(booked, 2026, 12)[0]["ok"]


def test_a_journal_not_posted_yet_blocks(booked, integration, people):
    event = integration.client.post(EVENTS, f.invoice("inv_ready", customer_id=CUS, lines=[("9.00", "0")],
                                                      issue_date="2026-11-20"), format="json").json()
    billing_tasks.process_events.apply(args=[[event["id"]]])  # processed; its posting (after commit) never ran
    assert Journal.objects.get(document_id="inv_ready").status == "ready"
    reconciled(booked, YEAR, MONTH)
    assert "journals_posted" in _failing(booked)
    check = close_selectors.checks(booked, YEAR, MONTH, items=True)[1]
    assert check["count"] == 1 and "1 ready" in check["detail"]
    assert check["items"][0]["url"].startswith("/trace/journal/")
    _assert_blocked_by(booked, people["carl"], "journals_posted")


def test_a_pending_approval_blocks(booked, integration, people):
    send(integration, f.invoice("inv_wo", customer_id=CUS, lines=[("50.00", "0")], issue_date="2026-11-10"))
    send(integration, f.write_off("inv_wo", "10.00", occurred_at="2026-11-25T10:00:00Z"))  # every one needs one
    reconciled(booked, YEAR, MONTH)
    assert {"approvals_decided", "journals_posted"} <= _failing(booked)
    check = next(c for c in close_selectors.checks(booked, YEAR, MONTH, items=True) if c["check"] == "approvals_decided")
    approval = Approval.objects.get(kind="write_off")
    assert check["count"] == 1 and check["items"][0]["url"] == f"/approvals/{approval.pk}/"
    assert check["link"] == "/approvals/?status=pending&entity=US01&period=2026-11"
    _assert_blocked_by(booked, people["carl"], "approvals_decided")


def test_an_open_exception_blocks(booked, integration, people):
    send(integration, f.payment("pay_over", customer_id=CUS, amount="900.00", allocations=[("inv_close", "900.00")],
                                received_at="2026-11-29T09:00:00Z"))
    exc = ExceptionRecord.objects.get(code="over_application")
    reconciled(booked, YEAR, MONTH)
    assert {"exceptions_resolved", "events_processed"} <= _failing(booked)
    check = next(c for c in close_selectors.checks(booked, YEAR, MONTH, items=True) if c["check"] == "exceptions_resolved")
    assert check["count"] == 1 and "over_application" in check["detail"]
    assert check["items"][0]["url"] == f"/exceptions/{exc.pk}/"
    _assert_blocked_by(booked, people["carl"], "exceptions_resolved")
    # Resolved, it no longer blocks.
    queue.exception_resolve(exception_id=exc.pk, resolution="customer paid twice by mistake; refunded", actor=people["fiona"])
    assert not {"exceptions_resolved", "events_processed"} & _failing(booked)


def test_no_full_run_an_incremental_one_or_one_before_the_last_posting_blocks(booked, people):
    assert "reconciliation_run" in _failing(booked)
    reconciled(booked, YEAR, MONTH, full=False)
    assert "reconciliation_run" in _failing(booked)
    last_posting = Journal.objects.order_by("-posted_at").first().posted_at
    run = reconciled(booked, YEAR, MONTH, started_at=last_posting - datetime.timedelta(minutes=1))
    check = next(c for c in close_selectors.checks(booked, YEAR, MONTH) if c["check"] == "reconciliation_run")
    assert not check["ok"] and "before the month's last posting" in check["detail"]
    assert check["link"] == f"/api/v1/reconciliation/runs/{run.pk}"
    _assert_blocked_by(booked, people["carl"], "reconciliation_run")
    reconciled(booked, YEAR, MONTH)
    assert "reconciliation_run" not in _failing(booked)


def test_an_open_break_in_the_month_blocks(booked, people):
    journal = Journal.objects.get(document_id="inv_close")
    reconciled(booked, YEAR, MONTH, breaks=({"code": "missing_in_erp", "journal": journal},))
    check = next(c for c in close_selectors.checks(booked, YEAR, MONTH) if c["check"] == "reconciliation_breaks")
    assert check["count"] == 1 and "1 missing_in_erp" in check["detail"]
    assert check["link"] == "/exceptions/?status=unresolved&entity=US01&process=reconciliation"
    _assert_blocked_by(booked, people["carl"], "reconciliation_breaks")


def test_a_broken_audit_chain_blocks(booked, people):
    reconciled(booked, YEAR, MONTH)
    assert services.audit_verify_for_close(entity=booked, year=YEAR, month=MONTH).ok
    entry = AuditEntry.objects.filter(action="journal.posted").first()
    with triggers_off() as cursor:
        edit_entry(cursor, entry.pk, actor="mallory")
    queue_tasks.verify_audit_chain.apply(kwargs={"full": True})  # the nightly full check finds it: the alarm
    assert ExceptionRecord.objects.filter(code=Codes.AUDIT_CHAIN_BROKEN).exclude(status="resolved").exists()
    assert _failing(booked) == {"audit_chain_verified"}
    _assert_blocked_by(booked, people["carl"], "audit_chain_verified")


def test_closing_verifies_a_chain_never_verified_and_a_tampered_one_blocks(booked, people):
    reconciled(booked, YEAR, MONTH)
    entry = AuditEntry.objects.filter(action="journal.posted").first()
    with triggers_off() as cursor:
        edit_entry(cursor, entry.pk, actor="mallory")
    refused = _refused(booked, people["carl"])
    assert refused.code == Codes.CLOSE_CHECKS_FAILING and {e["field"] for e in refused.errors} == {"audit_chain_verified"}
    assert ExceptionRecord.objects.filter(code=Codes.AUDIT_CHAIN_BROKEN).exists()  # the alarm, as the task opens it


# ------------------------------------------------------------------------- with the reconciliation engine
def _engine_run(entity):
    return billing_services.reconciliation_run(entity=entity, date_from=datetime.date(YEAR, MONTH, 1),
                                               date_to=datetime.date(YEAR, MONTH, 30), full=True, actor="test")


def test_a_full_run_of_the_reconciliation_engine_lets_the_month_close(booked, people):
    run = _engine_run(booked)
    assert run.status == "finished" and not run.breaks
    assert _failing(booked) <= {"audit_chain_verified"}  # verified as it closes
    check = next(c for c in close_selectors.checks(booked, YEAR, MONTH) if c["check"] == "reconciliation_run")
    assert check["ok"] and check["link"] == f"/api/v1/reconciliation/runs/{run.pk}"
    assert services.period_close(entity=booked, year=YEAR, month=MONTH, actor=people["carl"]).status == "closed"


@pytest.fixture
def booked_on_erpnext(erp_us01, entity, integration):
    """`booked`, with US01 posting to the ERPNext stand-in (configured before anything posts)."""
    send(integration, f.customer(CUS))
    send(integration, f.invoice("inv_close", customer_id=CUS, lines=[("100.00", "0")]))
    send(integration, f.payment("pay_close", customer_id=CUS, amount="100.00", allocations=[("inv_close", "100.00")]))
    assert set(Journal.objects.values_list("status", flat=True)) == {"posted"}
    return entity


def test_a_break_the_engine_opens_blocks_and_leads_to_its_exception(booked_on_erpnext, erp_us01, people,
                                                                    django_capture_on_commit_callbacks):
    booked = booked_on_erpnext
    erp_us01.delete(Journal.objects.get(document_id="inv_close").erp_document_ref)  # the ERP lost it
    _engine_run(booked)
    check = next(c for c in close_selectors.checks(booked, YEAR, MONTH, items=True)
                 if c["check"] == "reconciliation_breaks")
    exc = ExceptionRecord.objects.get(process="reconciliation")
    assert not check["ok"] and check["count"] == 1 and "missing_in_erp" in check["detail"]
    assert check["items"][0]["url"] == f"/exceptions/{exc.pk}/"
    _assert_blocked_by(booked, people["carl"], "reconciliation_breaks")
    # Finance re-posts it (looked up first, then sent again); the run that follows resolves the break.
    brk = exc.reconciliation_breaks.get()
    with django_capture_on_commit_callbacks(execute=True):
        billing_services.reconciliation_break_repost(break_id=brk.pk, actor=people["fiona"])
    _engine_run(booked)
    assert "reconciliation_breaks" not in _failing(booked)


# --------------------------------------------------------------------------------- override (maker-checker)
def test_closing_with_failing_checks_needs_a_reason_and_a_second_controller(booked, people):
    assert "reconciliation_run" in _failing(booked)
    outcome = services.period_close(entity=booked, year=YEAR, month=MONTH, actor=people["carl"],
                                    reason="ERP read-back down; reconciled by hand")
    assert outcome.status == "approval_requested"
    approval = outcome.approval
    assert (approval.kind, approval.subject, approval.journal_id, approval.required_approvals) == (
        "period_close", "period:US01:2026-11", None, 1)
    assert Period.objects.get(entity=booked, year=YEAR, month=MONTH).status == "open"
    requested = AuditEntry.objects.get(action="period.close_requested")
    assert requested.after["failing_checks"] == ["reconciliation_run"]  # the chain was verified first

    # A second request, or a direct close, while it waits: refused.
    again = _refused_again(booked, people["cora"])
    assert (again.status, again.code) == (409, Codes.APPROVAL_PENDING)
    # The requester never decides.
    with pytest.raises(ApiError) as own:
        queue.approval_approve(approval_id=approval.pk, user=people["carl"])
    assert own.value.code == Codes.SEGREGATION_OF_DUTIES
    # Finance ops do not decide either.
    with pytest.raises(ApiError) as ops:
        queue.approval_approve(approval_id=approval.pk, user=people["fiona"])
    assert ops.value.status == 403

    queue.approval_approve(approval_id=approval.pk, user=people["cora"], comment="seen the manual tie-out")
    period = Period.objects.get(entity=booked, year=YEAR, month=MONTH)
    assert (period.status, period.closed_by, period.close_approved_by, period.close_reason) == (
        "closed", "carl-controller", "cora-controller", "ERP read-back down; reconciled by hand")
    failing = {c["check"] for c in period.close_checks if not c["ok"]}
    assert "reconciliation_run" in failing  # the checks at approval time, override recorded
    closed = AuditEntry.objects.filter(action="period.closed").last()
    assert closed.actor == "cora-controller" and closed.after["override"] is True
    assert closed.after["approved_by"] == "cora-controller" and closed.after["closed_by"] == "carl-controller"


def test_a_rejected_close_request_changes_nothing(booked, people):
    approval = services.period_close(entity=booked, year=YEAR, month=MONTH, actor=people["carl"],
                                     reason="please").approval
    queue.approval_reject(approval_id=approval.pk, user=people["cora"], comment="reconcile first")
    assert Period.objects.get(entity=booked, year=YEAR, month=MONTH).status == "open"
    assert not AuditEntry.objects.filter(action="period.closed").exists()
    # Decided, it no longer stands in the way of a new request.
    assert services.period_close(entity=booked, year=YEAR, month=MONTH, actor=people["carl"],
                                 reason="again").status == "approval_requested"


def test_without_a_reason_failing_checks_refuse_and_a_script_cannot_ask_for_an_override(booked, people):
    refused = _refused(booked, people["carl"])
    assert refused.status == 422 and refused.code == Codes.CLOSE_CHECKS_FAILING
    with pytest.raises(ApiError) as script:
        services.period_close(entity=booked, year=YEAR, month=MONTH, actor="cli:close_period", reason="because")
    assert script.value.status == 403
    with pytest.raises(ApiError) as ops:
        services.period_close(entity=booked, year=YEAR, month=MONTH, actor=people["fiona"], reason="because")
    assert ops.value.status == 403
    assert not Approval.objects.filter(kind="period_close").exists()


def test_an_approval_of_a_period_closed_meanwhile_is_refused_and_changes_nothing(booked, people):
    approval = services.period_close(entity=booked, year=YEAR, month=MONTH, actor=people["carl"],
                                     reason="tight deadline").approval
    ledger.period_set_status(entity=booked, year=YEAR, month=MONTH, status="closed", actor="test")
    with pytest.raises(ApiError) as refused:
        queue.approval_approve(approval_id=approval.pk, user=people["cora"])
    assert (refused.value.status, refused.value.code) == (409, Codes.PERIOD_ALREADY_CLOSED)


# ------------------------------------------------------------------------------------------------ reopen
def test_reopening_always_needs_a_second_controller(booked, people):
    reconciled(booked, YEAR, MONTH)
    services.period_close(entity=booked, year=YEAR, month=MONTH, actor=people["carl"])
    with pytest.raises(ApiError) as no_reason:
        services.period_reopen_request(entity=booked, year=YEAR, month=MONTH, user=people["carl"], reason=" ")
    assert (no_reason.value.status, no_reason.value.code) == (422, Codes.INVALID_REQUEST)

    approval = services.period_reopen_request(entity=booked, year=YEAR, month=MONTH, user=people["carl"],
                                              reason="late credit note from the customer")
    assert (approval.kind, approval.subject) == ("period_reopen", "period:US01:2026-11")
    assert Period.objects.get(entity=booked, year=YEAR, month=MONTH).status == "closed"
    with pytest.raises(ApiError) as twice:
        services.period_reopen_request(entity=booked, year=YEAR, month=MONTH, user=people["cora"], reason="me too")
    assert (twice.value.status, twice.value.code) == (409, Codes.APPROVAL_PENDING)
    with pytest.raises(ApiError) as own:
        queue.approval_approve(approval_id=approval.pk, user=people["carl"])
    assert own.value.code == Codes.SEGREGATION_OF_DUTIES

    queue.approval_approve(approval_id=approval.pk, user=people["cora"])
    period = Period.objects.get(entity=booked, year=YEAR, month=MONTH)
    assert (period.status, period.reopened_by, period.closed_at, period.close_checks) == (
        "open", "carl-controller", None, [])
    assert period.reopened_at is not None
    entry = AuditEntry.objects.get(action="period.reopened")
    assert entry.actor == "cora-controller" and entry.after["reason"] == "late credit note from the customer"
    assert entry.before["status"] == "closed" and entry.before["closed_by"] == "carl-controller"


def test_an_open_period_is_not_reopened_and_a_rejected_reopen_keeps_it_closed(booked, people):
    with pytest.raises(ApiError) as refused:
        services.period_reopen_request(entity=booked, year=YEAR, month=MONTH, user=people["carl"], reason="why not")
    assert (refused.value.status, refused.value.code) == (409, Codes.PERIOD_NOT_CLOSED)
    reconciled(booked, YEAR, MONTH)
    services.period_close(entity=booked, year=YEAR, month=MONTH, actor=people["carl"])
    approval = services.period_reopen_request(entity=booked, year=YEAR, month=MONTH, user=people["cora"],
                                              reason="a late invoice")
    queue.approval_reject(approval_id=approval.pk, user=people["carl"], comment="book it in December")
    assert Period.objects.get(entity=booked, year=YEAR, month=MONTH).status == "closed"
    assert not AuditEntry.objects.filter(action="period.reopened").exists()


def test_a_scoped_controller_cannot_close_another_entitys_period(booked, people):
    ledger.entity_access_set(user=people["carl"], entity_codes=[], actor="test")
    people["carl"] = _user("carl-controller")  # fresh: roles and scope are cached on the object
    with pytest.raises(ApiError) as refused:
        services.period_close(entity=booked, year=YEAR, month=MONTH, actor=people["carl"])
    assert refused.value.status == 404




# ------------------------------------------------------------------------------------------ the command
def test_the_close_period_command_closes_only_when_the_checks_pass(booked):
    with pytest.raises(CommandError) as refused:
        call_command("close_period", "US01", "2026-11", stdout=io.StringIO())
    assert "not closed" in str(refused.value) and "close_checks_failing" in str(refused.value)
    assert "reconciliation_run: No finished full reconciliation run" in str(refused.value)
    with pytest.raises(CommandError, match="second controller's approval"):
        call_command("close_period", "US01", "2026-11", "--reopen", stdout=io.StringIO())
    reconciled(booked, YEAR, MONTH)
    out = io.StringIO()
    call_command("close_period", "US01", "2026-11", stdout=out)
    assert out.getvalue().strip() == "US01 2026-11 closed"
    period = Period.objects.get(entity=booked, year=YEAR, month=MONTH)
    assert period.closed_by == "cli:close_period" and all(c["ok"] for c in period.close_checks)
