"""`manage.py reconcile`: the last line is one JSON object with the run's figures; exit 0 with or without
breaks, non-zero only when the run failed (or could not start); the default range; a progress bar only on a
terminal. US01 posts into the ERPNext stand-in (`erp`) where a test needs books."""
import datetime
import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.core.management.base import OutputWrapper
from django.utils import timezone

from billing_sync.models import ReconciliationRun
from ledger import services as ledger
from tests import factories as f
from tests.helpers import send

from .test_reconciliation import erp_books, journal_of  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db


@pytest.fixture
def books(erp_books):  # noqa: F811
    """The books of test_reconciliation, posted into the ERPNext stand-in."""
    return erp_books


def reconcile(*args) -> tuple[dict, str]:
    out = io.StringIO()
    call_command("reconcile", *args, stdout=out)
    text = out.getvalue()
    return json.loads(text.strip().splitlines()[-1]), text


def test_the_last_line_is_the_runs_figures(books, erp):
    ref = journal_of("invoice", "inv_1").erp_document_ref
    erp.edit_amount(ref, "-7.25")
    result, text = reconcile("US01", "--from", "2026-11-01", "--to", "2026-11-30", "--full")
    run = ReconciliationRun.objects.get()
    assert result == {"run": str(run.pk), "entity": "US01", "from": "2026-11-01", "to": "2026-11-30",
                      "matched": run.matched, "breaks": {"erp_amount_mismatch": 1}, "resolved": 0}
    assert run.full and run.requested_by == "cli:reconcile" and run.status == "finished"
    assert "\x1b[" not in text  # no progress bar when stdout is not a terminal
    erp.edit_amount(ref, "7.25")
    again, _ = reconcile("US01", "--from", "2026-11-01", "--to", "2026-11-30", "--full")
    assert again["breaks"] == {} and again["resolved"] == 1


def test_a_failed_run_exits_non_zero_after_printing_its_line(books, erp, settings):
    erp.read_faults.add("error_503", settings.TIEOUT_READBACK_MAX_ATTEMPTS)  # the ERP answers no read
    out = io.StringIO()
    with pytest.raises(CommandError, match="failed: TransientError: the ERP failed with 503"):
        call_command("reconcile", "US01", "--from", "2026-11-01", "--to", "2026-11-30", stdout=out)
    last = json.loads(out.getvalue().strip().splitlines()[-1])
    assert last["breaks"] == {} and last["matched"] == 0
    assert ReconciliationRun.objects.get().status == "failed"


def test_default_range_is_the_earliest_open_month_to_today(entity, settings):
    settings.TIEOUT_RECONCILIATION_OPEN_MONTHS = 3
    today = timezone.localdate()
    first = today.replace(day=1)
    previous = (first - datetime.timedelta(days=1)).replace(day=1)
    oldest = (previous - datetime.timedelta(days=1)).replace(day=1)
    result, _ = reconcile("US01")
    assert (result["from"], result["to"]) == (oldest.isoformat(), today.isoformat())
    ledger.period_set_status(entity=entity, year=oldest.year, month=oldest.month, status="closed", actor="test")
    result, _ = reconcile("US01")
    assert result["from"] == previous.isoformat()
    run = ReconciliationRun.objects.order_by("-id").first()
    assert not run.full and run.erp_modified_since is not None  # incremental after the first run


def test_refusals(entity, integration):
    send(integration, f.customer("cus_c"))
    with pytest.raises(CommandError, match="no entity XX01"):
        call_command("reconcile", "XX01", stdout=io.StringIO())
    with pytest.raises(CommandError, match="not a date"):
        call_command("reconcile", "US01", "--from", "11/01/2026", stdout=io.StringIO())
    with pytest.raises(CommandError, match="invalid_request"):
        call_command("reconcile", "US01", "--from", "2026-11-30", "--to", "2026-11-01", stdout=io.StringIO())


def test_a_terminal_gets_a_progress_bar_and_still_the_json_last(books, monkeypatch, capsys):
    monkeypatch.setattr(OutputWrapper, "isatty", lambda self: True)
    result, text = reconcile("US01", "--from", "2026-11-01", "--to", "2026-11-30", "--full")
    assert result["breaks"] == {} and result["matched"] > 0
    assert json.loads(text.strip().splitlines()[-1]) == result
