"""The close checks' reading (`portal.selectors.close`): which month an event, a journal, an approval or an
exception belongs to (the dates the posting rules give its documents), read for many months at once exactly as
for one, and the default months of the close page.
"""
import datetime

import pytest

from billing_sync.models import Event
from portal.selectors import close as close_selectors
from tests import factories as f
from tests.close_helpers import reconciled
from tests.helpers import EVENTS, send

pytestmark = pytest.mark.django_db
CUS = "cus_sel"


def _failing(entity, year, month) -> dict[str, int]:
    return {c["check"]: c["count"] for c in close_selectors.checks(entity, year, month) if not c["ok"]}


def _accepted(integration, payload):
    """Received, not processed (its after-commit processing never runs in this test)."""
    response = integration.client.post(EVENTS, payload, format="json")
    assert response.status_code == 202
    return Event.objects.get(pk=response.json()["id"])


def test_an_unprocessed_event_belongs_to_the_month_its_document_is_dated_in(entity, integration):
    send(integration, f.customer(CUS))
    # An invoice issued on 31 October, sent on 2 November: October's.
    _accepted(integration, f.invoice("inv_oct", customer_id=CUS, issue_date="2026-10-31",
                                     occurred_at="2026-11-02T09:00:00Z"))
    # A payment received late on 30 November (its own offset), sent on 1 December: November's.
    _accepted(integration, f.payment("pay_nov", customer_id=CUS, amount="5.00", received_at="2026-11-30T23:30:00-05:00",
                                     occurred_at="2026-12-01T10:00:00Z"))
    # A credit note: the date of occurred_at (as written, in its offset): December 1st there.
    _accepted(integration, f.credit_note("inv_oct", "1.00", occurred_at="2026-12-01T00:30:00+01:00"))
    # An amendment touches its issue month and the month it happened in.
    _accepted(integration, f.invoice("inv_oct", customer_id=CUS, issue_date="2026-10-31", version=2,
                                     type_="invoice.amended", occurred_at="2026-12-05T10:00:00Z"))
    assert _failing(entity, 2026, 10)["events_processed"] == 2
    assert _failing(entity, 2026, 11)["events_processed"] == 1
    assert _failing(entity, 2026, 12)["events_processed"] == 2


def test_many_months_at_once_read_as_one_month_at_a_time(entity, integration):
    send(integration, f.customer(CUS))
    send(integration, f.invoice("inv_a", customer_id=CUS, issue_date="2026-09-10", due_date="2026-10-10"))
    send(integration, f.invoice("inv_b", customer_id=CUS, issue_date="2026-11-10"))
    send(integration, f.payment("pay_x", customer_id=CUS, amount="999.00", allocations=[("inv_b", "999.00")],
                                received_at="2026-11-12T10:00:00Z"))  # over-applied: an exception in November
    send(integration, f.write_off("inv_a", "1.00", occurred_at="2026-10-03T10:00:00Z"))  # pending approval
    reconciled(entity, 2026, 9)
    months = [(2026, 8), (2026, 9), (2026, 10), (2026, 11)]
    together = close_selectors.checks_by_month(entity, months)
    for year, month in months:
        assert together[(year, month)] == close_selectors.checks(entity, year, month)
    assert set(_failing(entity, 2026, 10)) >= {"approvals_decided", "journals_posted"}
    assert "approvals_decided" not in _failing(entity, 2026, 11)
    assert {"exceptions_resolved", "events_processed"} <= set(_failing(entity, 2026, 11))
    assert "exceptions_resolved" not in _failing(entity, 2026, 10)
    assert "reconciliation_run" not in _failing(entity, 2026, 9)


def test_the_default_months_are_the_current_one_and_the_six_before():
    assert close_selectors.default_months(datetime.date(2026, 3, 15)) == [
        (2026, 3), (2026, 2), (2026, 1), (2025, 12), (2025, 11), (2025, 10), (2025, 9)]
    assert close_selectors.parse_month("2026-02") == (2026, 2)
    assert [close_selectors.parse_month(t) for t in ("2026-2", "2026-13", "26-02", "x", "")] == [None] * 5
