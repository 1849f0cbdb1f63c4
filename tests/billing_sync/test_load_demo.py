"""`manage.py load_demo`: a month of a business through the real services, idempotent, printed logins."""
import datetime
import io

import pytest
from django.core.management import call_command
from django.utils import timezone

from billing_sync.management.commands import load_demo
from billing_sync.models import CreditNote, Event, Invoice, Payment, WriteOff
from exceptions_queue.models import Approval, ExceptionRecord
from ledger.models import Journal, Period
from portal.selectors import dashboard as dashboard_selectors

pytestmark = pytest.mark.django_db(transaction=True)


def _run() -> list[str]:
    out = io.StringIO()
    call_command("load_demo", stdout=out)
    return out.getvalue().splitlines()


def _snapshot() -> dict:
    return {"events": Event.objects.count(), "invoices": Invoice.objects.count(), "journals": Journal.objects.count(),
            "approvals": Approval.objects.count(), "exceptions": ExceptionRecord.objects.count(),
            "payments": Payment.objects.count()}


def test_the_demo_is_a_month_of_two_entities_and_a_rerun_adds_nothing(settings):
    # Figures computed from this database, not another test's cached dashboard history of the same hour.
    settings.TIEOUT_DASHBOARD_CACHE_SECONDS = 0
    lines = _run()
    now = timezone.now()

    # Two entities, each document in its own entity's currency.
    invoices = Invoice.objects.select_related("entity")
    assert {(i.entity.code, i.currency) for i in invoices} == {("US01", "USD"), ("UK01", "GBP")}
    for payment in Payment.objects.select_related("entity"):
        assert payment.currency == payment.entity.currency
    assert invoices.filter(entity__code="US01").count() >= 50 and invoices.filter(entity__code="UK01").count() >= 15
    assert len({i.customer_id for i in invoices}) >= 30  # a few dozen customers

    # Payments in full, in part and early (unapplied cash applied later); a paid invoice exists.
    paid = [i for i in invoices if i.open_amount == 0 and i.status == "open"]
    part = [i for i in invoices if 0 < i.applied_total < i.total]
    assert paid and part
    assert Event.objects.filter(type="payment.applied").exists()
    assert CreditNote.objects.filter(status="approved").exists()
    assert WriteOff.objects.filter(status="pending_approval").exists()

    # Approvals waiting: for one approver, and one for two that already has one of the two decisions.
    pending = Approval.objects.filter(status=Approval.Status.PENDING)
    assert pending.filter(required_approvals=1).count() >= 2
    two = pending.get(required_approvals=2)
    assert two.decisions.count() == 1 and two.amount >= 10000
    assert Approval.objects.filter(status=Approval.Status.APPROVED).exists()
    assert Approval.objects.filter(status=Approval.Status.REJECTED).exists()

    # Aged exceptions of several codes, owned and commented on.
    open_ = ExceptionRecord.objects.exclude(status=ExceptionRecord.Status.RESOLVED)
    codes = set(open_.values_list("code", flat=True))
    assert {"awaiting_dependency", "unknown_customer", "over_application", "no_account_mapping",
            "posting_failed", "period_closed"} <= codes
    assert open_.filter(owner__username="ops").count() >= 5 and open_.filter(owner__isnull=True).exists()
    assert all(x.comments.exists() for x in open_.filter(owner__isnull=False))
    ages = {x.created_at.date() for x in open_}
    assert len(ages) >= 4 and min(x.created_at for x in open_) < now - datetime.timedelta(days=3)

    # The previous month is closed for both entities, and nothing was posted into it afterwards.
    last_month = now.replace(day=1) - datetime.timedelta(days=1)
    closed = Period.objects.filter(status=Period.Status.CLOSED, year=last_month.year, month=last_month.month)
    assert {p.entity.code for p in closed} == {"US01", "UK01"}

    # History spread over the month, consistently: events by day, journals posted after their event.
    days = {e.received_at.date() for e in Event.objects.all()}
    assert len(days) >= 25 and min(days) <= (now - datetime.timedelta(days=28)).date()
    assert not Event.objects.filter(received_at__gt=now).exists()
    for journal in Journal.objects.filter(status="posted").select_related("event")[:200]:
        assert journal.event.received_at <= journal.created_at <= journal.posted_at <= now
    for x in open_.select_related("event"):
        assert x.created_at >= x.event.received_at
    figures = dashboard_selectors.compute(None, now=now)  # what the dashboard draws
    assert sum(1 for row in figures["events_daily"] if row["received"]) >= 12
    assert figures["events_24h"]["received"] > 0 and figures["latency"]["posted_24h"] > 0
    assert figures["latency"]["p50_24h"] < 600  # posted minutes after arrival, not "days" (the load's time)
    assert len(figures["open_exceptions"]["by_code"]) >= 6 and figures["pending_approvals"] >= 3

    # The logins block: one line per user, the password, and the URL on the last line (make run, README).
    text = "\n".join(lines)
    for username, role, _ in load_demo.USERS:
        assert f"  {username:<12} {role:<12}" in text
    assert "password for every user: tieout-demo-2026" in text and "US01 (USD), UK01 (GBP)" in text
    assert lines[-1] == "http://127.0.0.1:8000/"

    # A rerun is a replay: nothing new.
    before = _snapshot()
    again = "\n".join(_run())
    assert _snapshot() == before
    assert "0 new" in again and f"{before['events']} already loaded" in again
