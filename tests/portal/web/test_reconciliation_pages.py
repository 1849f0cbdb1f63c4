"""The reconciliation pages through Django's test client: `/reconciliation/` (recent runs, breaks with their
filters, each break leading to its exception, the "Start a run" form for workers only) and the "Reconciliation
break" panel of a `reconciliation` exception's page with its actions (re-run, re-post, adjusting journal, accept),
each action's effect checked in the database; auditors read and every POST of theirs is refused, finance ops
cannot accept, and a break of an entity one may not see is not there.

The ERP is `tests.billing_sync.erp_fake.MirrorConnector` (the built-in connector reading our journals back, with
the test's changes on top); Celery is eager and the on-commit work runs, as after a committed request."""
import datetime
import html
import re

import pytest

from audit.models import AuditEntry
from billing_sync import services as billing_services
from billing_sync.models import ReconciliationBreak, ReconciliationRun
from exceptions_queue.models import Approval, ExceptionRecord
from ledger import connectors
from ledger import services as ledger
from ledger.models import Journal
from tests import factories as f
from tests.billing_sync.erp_fake import MirrorConnector
from tests.helpers import send
from tests.portal.web.conftest import client_for

pytestmark = pytest.mark.django_db
NOV = (datetime.date(2026, 11, 1), datetime.date(2026, 11, 30))


@pytest.fixture
def erp(monkeypatch):
    monkeypatch.setitem(connectors.REGISTRY, "builtin", "tests.billing_sync.erp_fake.MirrorConnector")
    return MirrorConnector.reset()


@pytest.fixture
def staff(finance, controller, controller2, auditor, admin_api):
    return client_for


@pytest.fixture
def books(entity, integration, erp):
    """inv_r (107.25) for cus_r, posted; the ERP then loses its document and a full run finds `missing_in_erp`."""
    send(integration, f.customer("cus_r"))
    send(integration, f.invoice("inv_r", customer_id="cus_r"))
    journal = Journal.objects.get(kind="invoice", document_id="inv_r")
    erp.deleted.add(journal.erp_document_ref)
    run = billing_services.reconciliation_run(entity=entity, date_from=NOV[0], date_to=NOV[1], full=True,
                                              actor="test")
    assert run.status == "finished" and run.breaks == {"missing_in_erp": 1}, run.error
    brk = ReconciliationBreak.objects.get(status="open")
    return {"journal": journal, "break": brk, "exception": ExceptionRecord.objects.get(pk=brk.exception_id),
            "run": run}


def _text(response) -> str:
    return html.unescape(re.sub(r"\s+", " ", response.content.decode()))


def _post(client, path, data, capture):
    with capture(execute=True):
        return client.post(path, data)


def _messages(client, path) -> str:
    return _text(client.get(path))


def test_the_reconciliation_page_lists_runs_and_breaks_with_filters(books, staff):
    response = staff("aude-auditor").get("/reconciliation/")
    assert response.status_code == 200
    text, body = _text(response), response.content.decode()
    assert 'aria-current="page">Reconciliation' in text
    run, brk, exc = books["run"], books["break"], books["exception"]
    row = re.search(rf'<tr data-run="{run.pk}">(.*?)</tr>', body, re.S).group(1)
    assert "US01" in row and "2026-11-01 – 2026-11-30" in html.unescape(row) and ">full<" in row
    assert "finished" in row and "missing_in_erp</code></a> 1" in row and ">test<" in row
    brow = re.search(rf'<tr data-break="{brk.pk}">(.*?)</tr>', body, re.S).group(1)
    assert "missing_in_erp" in brow and f'href="/exceptions/{exc.pk}/"' in brow
    # The auditor gets no form to start a run, and the filters narrow the list.
    assert 'id="run-form"' not in body and "finance ops, controllers and admins start runs" in text
    assert f'data-break="{brk.pk}"' not in staff("aude-auditor").get("/reconciliation/?code=missing_journal").content.decode()
    assert f'data-break="{brk.pk}"' not in staff("aude-auditor").get("/reconciliation/?status=resolved").content.decode()
    assert f'data-break="{brk.pk}"' in staff("aude-auditor").get(
        "/reconciliation/?entity=US01&code=missing_in_erp&status=all").content.decode()
    assert 'id="run-form"' in staff("fiona-ops").get("/reconciliation/").content.decode()


def test_a_worker_starts_a_run_and_an_auditor_cannot(books, staff, django_capture_on_commit_callbacks):
    before = ReconciliationRun.objects.count()
    refused = _post(staff("aude-auditor"), "/reconciliation/runs",
                    {"entity": "US01", "from": "2026-11-01", "to": "2026-11-30", "full": "1"},
                    django_capture_on_commit_callbacks)
    assert refused.status_code == 403 and ReconciliationRun.objects.count() == before

    fiona = staff("fiona-ops")
    done = _post(fiona, "/reconciliation/runs", {"entity": "US01", "from": "2026-11-01", "to": "2026-11-30",
                                                  "full": "1"}, django_capture_on_commit_callbacks)
    assert done.status_code == 302 and done.url == "/reconciliation/?entity=US01"
    run = ReconciliationRun.objects.latest("id")
    assert run.full and run.status == "finished" and run.requested_by == "fiona-ops"  # executed after commit (eager)
    assert run.breaks == {"missing_in_erp": 1}
    # The view answered before the test's on-commit work ran the run: it says the run started.
    assert f"Full run {run.pk} of US01 started" in _messages(fiona, "/reconciliation/")

    bad = _post(fiona, "/reconciliation/runs", {"entity": "US01", "from": "2026-11-30", "to": "2026-11-01"},
                django_capture_on_commit_callbacks)
    assert bad.status_code == 302 and ReconciliationRun.objects.count() == before + 1
    assert "invalid_request: the range ends before it starts" in _messages(fiona, "/reconciliation/")
    _post(fiona, "/reconciliation/runs", {"entity": "XX99", "from": "2026-11-01", "to": "2026-11-30"},
          django_capture_on_commit_callbacks)
    assert "invalid_request: choose one of your entities" in _messages(fiona, "/reconciliation/")


def test_the_exception_page_shows_the_break_and_its_actions_by_role(books, staff):
    brk, exc, journal = books["break"], books["exception"], books["journal"]
    path = f"/exceptions/{exc.pk}/"
    carl = staff("carl-controller").get(path)
    body, text = carl.content.decode(), _text(carl)
    assert f'data-break="{brk.pk}"' in body and "Reconciliation break" in text
    assert f'href="/trace/journal/{journal.pk}/"' in body
    assert f'href="/trace/erp/US01/{journal.erp_document_ref}/"' in body
    assert f"by run {books['run'].pk}" in text and f"run {books['run'].pk}" in text
    sides = re.search(rf'id="break-{brk.pk}-sides">(.*?)</table>', body, re.S).group(1)
    assert "<th" in sides and "Expected" in body
    for button in ("Re-run for this object", "Re-post to the ERP", "Raise adjusting journal", "Accept with a reason"):
        assert button in text, button
    fiona = _text(staff("fiona-ops").get(path))
    assert "Re-post to the ERP" in fiona and "Accept with a reason" not in fiona
    aude = _text(staff("aude-auditor").get(path))
    assert "Reconciliation break" in aude and "Re-run for this object" not in aude and "Raise adjusting" not in aude


def test_auditors_post_nothing_and_finance_ops_cannot_accept(books, staff, django_capture_on_commit_callbacks):
    brk, exc = books["break"], books["exception"]
    path = f"/exceptions/{exc.pk}/"
    for action in ("break_rerun", "break_repost", "break_accept", "break_adjust"):
        response = _post(staff("aude-auditor"), path, {"action": action, "break": brk.pk, "reason": "x"},
                         django_capture_on_commit_callbacks)
        assert response.status_code == 403, action
    refused = _post(staff("fiona-ops"), path, {"action": "break_accept", "break": brk.pk, "reason": "fine"},
                    django_capture_on_commit_callbacks)
    assert refused.status_code == 403
    brk.refresh_from_db()
    assert brk.status == "open" and not ReconciliationRun.objects.filter(subject__startswith="journal:").exists()


def test_rerun_then_repost_resolves_the_break(books, staff, erp, django_capture_on_commit_callbacks):
    brk, exc, journal = books["break"], books["exception"], books["journal"]
    path = f"/exceptions/{exc.pk}/"
    fiona = staff("fiona-ops")
    response = _post(fiona, path, {"action": "break_rerun", "break": brk.pk}, django_capture_on_commit_callbacks)
    assert response.status_code == 302 and response.url == path
    rerun = ReconciliationRun.objects.latest("id")
    assert rerun.subject == f"journal:{journal.pk}" and rerun.status == "finished"
    brk.refresh_from_db()
    assert brk.status == "open" and brk.last_seen_run_id == rerun.pk
    assert f"Re-run {rerun.pk} started" in _messages(fiona, path)

    _post(fiona, path, {"action": "break_repost", "break": brk.pk}, django_capture_on_commit_callbacks)
    brk.refresh_from_db()
    exc.refresh_from_db()
    assert brk.status == "resolved" and exc.status == "resolved"
    assert ledger.effective_erp_ref(journal) != journal.erp_document_ref  # sent again, a new ERP document
    assert AuditEntry.objects.filter(object_id=str(brk.pk), action="reconciliation_break.reposted").exists()
    page = _messages(fiona, path)
    assert "Re-posted to the ERP; run" in page and "Re-run for this object" not in page
    # Nothing more to do on a resolved break: the service refuses with its stable code.
    _post(fiona, path, {"action": "break_rerun", "break": brk.pk}, django_capture_on_commit_callbacks)
    assert "break_resolved:" in _messages(fiona, path)


def test_repost_is_refused_for_a_break_that_is_not_about_a_missing_document(books, staff, erp,
                                                                           django_capture_on_commit_callbacks):
    erp.deleted.clear()
    erp.manual.append(("1200", datetime.date(2026, 11, 15), "5.00", "0"))
    billing_services.reconciliation_run(entity=books["break"].entity, date_from=NOV[0], date_to=NOV[1], full=True,
                                        actor="test")
    other = ReconciliationBreak.objects.get(status="open", code="erp_balance_mismatch")
    path = f"/exceptions/{other.exception_id}/"
    fiona = staff("fiona-ops")
    assert "Re-post to the ERP" not in _text(fiona.get(path))
    _post(fiona, path, {"action": "break_repost", "break": other.pk}, django_capture_on_commit_callbacks)
    assert "break_action_not_applicable:" in _messages(fiona, path)
    # A break that belongs to another exception is not reachable from this one.
    _post(fiona, path, {"action": "break_rerun", "break": books["break"].pk}, django_capture_on_commit_callbacks)
    assert "not_found: no such reconciliation break on this exception" in _messages(fiona, path)


def test_an_adjusting_journal_goes_to_approval(books, staff, django_capture_on_commit_callbacks):
    brk, exc = books["break"], books["exception"]
    path = f"/exceptions/{exc.pk}/"
    fiona = staff("fiona-ops")
    _post(fiona, path, {"action": "break_adjust", "break": brk.pk, "debit_account": "1200"},
          django_capture_on_commit_callbacks)
    assert "invalid_request: the adjusting journal needs credit account, amount, date, memo" in _messages(fiona, path)
    _post(fiona, path, {"action": "break_adjust", "break": brk.pk, "debit_account": "1200", "credit_account": "4000",
                        "amount": "107.25", "accounting_date": "2026-11-20", "memo": "ERP lost the invoice"},
          django_capture_on_commit_callbacks)
    brk.refresh_from_db()
    journal = Journal.objects.get(pk=brk.adjusting_journal_id)
    assert journal.kind == "manual" and journal.status == "pending_approval"
    assert journal.accounting_date == datetime.date(2026, 11, 20)
    assert {(ln.account.code, ln.debit, ln.credit) for ln in journal.lines.all()} == {
        ("1200", 107.25, 0), ("4000", 0, 107.25)}
    assert Approval.objects.get(journal=journal).status == "pending"
    page = _text(fiona.get(path))
    assert "Adjusting journal" in page and str(journal.pk) in page and brk.status == "open"


def test_a_controller_accepts_with_a_reason(books, staff, django_capture_on_commit_callbacks):
    brk, exc = books["break"], books["exception"]
    path = f"/exceptions/{exc.pk}/"
    carl = staff("carl-controller")
    _post(carl, path, {"action": "break_accept", "break": brk.pk, "reason": "  "}, django_capture_on_commit_callbacks)
    assert "invalid_request: a reason is required" in _messages(carl, path)
    brk.refresh_from_db()
    assert brk.status == "open"
    _post(carl, path, {"action": "break_accept", "break": brk.pk, "reason": "ERP restored from backup next week"},
          django_capture_on_commit_callbacks)
    brk.refresh_from_db()
    exc.refresh_from_db()
    assert brk.status == "resolved" and brk.accepted_by == "carl-controller"
    assert brk.resolution == "accepted by carl-controller: ERP restored from backup next week"
    assert exc.status == "resolved"
    assert f"Break {brk.pk} accepted" in _messages(carl, path)
