"""Reconciliation API (billing_sync/views/reconciliation.py): status codes, roles, shapes and problem codes of
runs, breaks and break actions; the reconciliation status on the invoice and journal resources; the Celery
routes and beat entries of the reconciliation tasks. US01 posts into the ERPNext stand-in (`erp`)."""
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from billing_sync import services
from billing_sync.models import ReconciliationBreak, ReconciliationRun
from config.celery import app
from ledger import services as ledger
from tests.billing_sync.test_reconciliation import NOV, erp_books, journal_of  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db
RUNS = "/api/v1/reconciliation/runs"
BREAKS = "/api/v1/reconciliation/breaks"
BREAK_KEYS = {"id", "code", "status", "entity", "account", "period", "journal", "erp_document_ref", "document",
              "expected", "actual", "opened_at", "resolved_at", "exception", "resolution", "resolved_by",
              "accepted_by", "opened_by_run", "last_seen_run", "resolved_by_run", "adjusting_journal"}
BODY = {"entity": "US01", "from": "2026-11-01", "to": "2026-11-30", "full": True}


@pytest.fixture
def books(erp_books):  # noqa: F811
    """The books of test_reconciliation, posted into the ERPNext stand-in."""
    return erp_books


def a_break(entity, erp):
    """The ERP document of inv_1's journal deleted in ERPNext, and the run that finds it missing."""
    erp.delete(journal_of("invoice", "inv_1").erp_document_ref)
    services.reconciliation_run(entity=entity, date_from=NOV[0], date_to=NOV[1], full=True, actor="test")
    return ReconciliationBreak.objects.get(status="open")


def test_start_a_run_and_read_it(books, erp, finance, controller, auditor, integration):
    response = finance.post(RUNS, BODY)
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["entity"] == "US01" and body["from"] == "2026-11-01" and body["to"] == "2026-11-30" and body["full"]
    run = ReconciliationRun.objects.get(pk=body["id"])
    assert run.requested_by == "fiona-ops"
    detail = auditor.get(f"{RUNS}/{run.pk}")
    assert detail.status_code == 200
    assert detail.json()["status"] == "finished" and detail.json()["breaks"] == {}  # executed by the task
    assert set(detail.json()) == {"id", "entity", "from", "to", "full", "subject", "status", "requested_by",
                                  "started_at", "finished_at", "erp_modified_since", "matched", "breaks", "resolved",
                                  "erp_requests", "erp_documents", "error"}
    assert controller.post(RUNS, {**BODY, "full": False}).status_code == 202
    assert auditor.get(RUNS).json()["count"] == 2
    for refused in (auditor, integration):
        response = refused.post(RUNS, BODY)
        assert response.status_code == 403 and response.json()["code"] == "permission_denied"
    assert integration.get(f"{RUNS}/{run.pk}").status_code == 403


def test_run_refusals(books, erp, finance):
    response = finance.post(RUNS, {"entity": "US01"})
    assert response.status_code == 400 and response.json()["code"] == "invalid_request"
    assert {e["field"] for e in response.json()["errors"]} == {"from", "to"}
    response = finance.post(RUNS, {**BODY, "from": "2026-12-01"})
    assert response.status_code == 422 and response.json()["code"] == "invalid_request"
    assert finance.post(RUNS, {**BODY, "entity": "XX01"}).status_code == 404
    services.reconciliation_run_start(entity=books, date_from=NOV[0], date_to=NOV[1], actor="test")
    response = finance.post(RUNS, BODY)
    assert response.status_code == 409 and response.json()["code"] == "reconciliation_running"
    assert response["Content-Type"] == "application/problem+json"
    assert finance.get(f"{RUNS}/999999").status_code == 404


def test_entity_scope(books, erp, finance):
    brk = a_break(books, erp)
    ledger.entity_access_set(user=get_user_model().objects.get(username="fiona-ops"), entity_codes=[], actor="test")
    assert finance.get(f"{BREAKS}/{brk.pk}").status_code == 404
    assert finance.get(BREAKS).json()["count"] == 0
    assert finance.post(RUNS, BODY).status_code == 404
    assert finance.post(f"{BREAKS}/{brk.pk}/rerun").status_code == 404


def test_list_breaks_with_filters(books, erp, auditor):
    brk = a_break(books, erp)
    page = auditor.get(BREAKS, entity="US01", code="missing_in_erp", status="open").json()
    assert page["count"] == 1
    [item] = page["results"]
    assert set(item) == BREAK_KEYS
    assert item["id"] == str(brk.pk) and item["code"] == "missing_in_erp" and item["status"] == "open"
    assert item["journal"] == str(brk.journal_id) and item["document"] == "invoice:billing-prod:inv_1"
    assert item["account"] is None and item["period"] == "2026-11" and item["exception"] == str(brk.exception_id)
    assert item["expected"]["side"] == "ledger" and item["actual"] == {"side": "erp", "erp_document_ref": None}
    assert auditor.get(BREAKS, status="resolved").json()["count"] == 0
    assert auditor.get(BREAKS, code="erp_date_mismatch").json()["count"] == 0
    assert auditor.get(BREAKS, status="nonsense").status_code == 400
    assert auditor.get(f"{BREAKS}/{brk.pk}").json() == item


def test_break_actions(books, erp, finance, controller, auditor):
    brk = a_break(books, erp)
    assert auditor.post(f"{BREAKS}/{brk.pk}/rerun").status_code == 403
    response = finance.post(f"{BREAKS}/{brk.pk}/rerun")
    assert response.status_code == 202
    assert response.json()["run"]["subject"] == f"journal:{brk.journal_id}"
    assert response.json()["break"]["status"] == "open"
    adjust = {"accounting_date": "2026-11-20", "description": "adjust",
              "lines": [{"account": "1200", "debit": "1.00"}, {"account": "4000", "credit": "1.00"}]}
    response = finance.post(f"{BREAKS}/{brk.pk}/adjust", adjust)
    assert response.status_code == 201, response.content
    assert response.json()["journal"]["status"] == "pending_approval" and response.json()["approval"]["status"] == "pending"
    assert response.json()["break"]["adjusting_journal"] == response.json()["journal"]["id"]
    unbalanced = {**adjust, "lines": [{"account": "1200", "debit": "1.00"}, {"account": "4000", "credit": "2.00"}]}
    assert finance.post(f"{BREAKS}/{brk.pk}/adjust", unbalanced).json()["code"] == "unbalanced_journal"
    response = finance.post(f"{BREAKS}/{brk.pk}/accept", {"reason": "fine"})
    assert response.status_code == 403
    response = controller.post(f"{BREAKS}/{brk.pk}/accept", {"reason": ""})
    assert response.status_code == 422 and response.json()["code"] == "invalid_request"
    response = controller.post(f"{BREAKS}/{brk.pk}/accept", {"reason": "the ERP will be fixed next month"})
    assert response.status_code == 200
    assert response.json()["status"] == "resolved" and response.json()["accepted_by"] == "carl-controller"
    response = finance.post(f"{BREAKS}/{brk.pk}/rerun")
    assert response.status_code == 409 and response.json()["code"] == "break_resolved"


def test_repost_through_the_api(books, erp, finance):
    brk = a_break(books, erp)
    response = finance.post(f"{BREAKS}/{brk.pk}/repost")
    assert response.status_code == 202, response.content
    assert response.json()["run"]["subject"] == f"journal:{brk.journal_id}"
    # The run executes once the request has committed: it finds the re-posted document and resolves the break.
    assert finance.get(f"{BREAKS}/{brk.pk}").json()["status"] == "resolved"
    erp.edit_amount(journal_of("payment", "pay_1").erp_document_ref, "-49.00")
    services.reconciliation_run(entity=books, date_from=NOV[0], date_to=NOV[1], full=True, actor="test")
    other = ReconciliationBreak.objects.get(status="open")
    response = finance.post(f"{BREAKS}/{other.pk}/repost")
    assert response.status_code == 409 and response.json()["code"] == "break_action_not_applicable"


def test_status_on_invoice_and_journal_resources(books, erp, auditor):
    journal = journal_of("invoice", "inv_1")
    assert auditor.get("/api/v1/invoices/billing-prod/inv_1").json()["reconciliation"] == {
        "status": "unreconciled", "checked_at": None, "run": None}
    a_break(books, erp)
    run = ReconciliationRun.objects.get()
    invoice = auditor.get("/api/v1/invoices/billing-prod/inv_1").json()["reconciliation"]
    assert invoice["status"] == "break" and invoice["run"] == str(run.pk) and invoice["checked_at"]
    assert auditor.get("/api/v1/invoices/billing-prod/inv_2").json()["reconciliation"]["status"] == "matched"
    assert auditor.get(f"/api/v1/journals/{journal.pk}").json()["reconciliation"]["status"] == "break"
    listed = {j["id"]: j["reconciliation"]["status"] for j in auditor.get("/api/v1/journals").json()["results"]}
    assert listed[str(journal.pk)] == "break" and set(listed.values()) == {"break", "matched"}


def test_schema_documents_the_endpoints(auditor):
    paths = auditor.get("/api/v1/schema", format="json").json()["paths"]
    for path in (RUNS, f"{RUNS}/{{id}}", BREAKS, f"{BREAKS}/{{id}}", f"{BREAKS}/{{id}}/rerun",
                 f"{BREAKS}/{{id}}/repost", f"{BREAKS}/{{id}}/adjust", f"{BREAKS}/{{id}}/accept"):
        assert path in paths, sorted(p for p in paths if "reconc" in p)


def test_tasks_are_routed_to_the_reconciliation_queue_and_scheduled():
    for name in ("billing_sync.tasks.reconcile", "billing_sync.tasks.reconcile_incremental_all",
                 "billing_sync.tasks.reconcile_full_all"):
        assert app.amqp.router.route({}, name)["queue"].name == "reconciliation"
    beat = {entry["task"]: entry for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert beat["billing_sync.tasks.reconcile_incremental_all"]["schedule"] <= 600
    assert beat["billing_sync.tasks.reconcile_full_all"]["schedule"].hour == {2}


def test_the_fan_out_starts_one_run_per_entity_and_skips_a_busy_one(books, erp, django_capture_on_commit_callbacks):
    ledger.entity_setup(code="UK01", currency="GBP", name="Tieout UK", actor="test")
    with django_capture_on_commit_callbacks(execute=True):
        started = services.reconciliation_run_schedule(full=True)
    runs = ReconciliationRun.objects.filter(pk__in=started)
    assert sorted(r.entity.code for r in runs) == ["UK01", "US01"]
    assert {r.status for r in runs} == {"finished"} and all(r.full for r in runs)
    busy = services.reconciliation_run_start(entity=books, date_from=NOV[0], date_to=NOV[1], actor="test")
    with django_capture_on_commit_callbacks(execute=True):
        started = services.reconciliation_run_schedule(full=False)
    assert [ReconciliationRun.objects.get(pk=pk).entity.code for pk in started] == ["UK01"]
    assert ReconciliationRun.objects.get(pk=busy.pk).status == "running"
