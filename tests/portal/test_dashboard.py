"""The dashboard's close and reconciliation figures (`portal.selectors.dashboard`), computed on a small history
built for the purpose: open breaks by code and age, each entity's close status with the close cycle time and
its percentiles, exception resolution time p50/p95 by process, breaks opened and resolved per month, and
unapplied cash by age; every figure scoped to the entities asked for.
"""
import datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.utils import timezone

from config import correlation
from exceptions_queue.models import ExceptionRecord
from ledger import services as ledger
from ledger.models import Period
from portal import services
from portal import tasks as portal_tasks
from portal.selectors import dashboard
from tests import factories as f
from tests.close_helpers import reconciled
from tests.helpers import send

pytestmark = pytest.mark.django_db
HOUR, DAY = datetime.timedelta(hours=1), datetime.timedelta(days=1)


def _month_before(year, month, n=1):
    for _ in range(n):
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return year, month


def _month_end(year, month) -> datetime.datetime:
    following = (year + 1, 1) if month == 12 else (year, month + 1)
    return datetime.datetime(*following, 1, tzinfo=datetime.UTC)


def _exception(process, opened, resolved, entity_code="US01"):
    return ExceptionRecord.objects.create(
        code="test_code", message="m", process=process, entity_code=entity_code, created_at=opened,
        status="resolved" if resolved else "open", resolved_at=resolved, resolution="done" if resolved else "")


def test_exception_resolution_time_by_process(entity):
    now = timezone.now()
    for hours in (1, 2, 3, 4):
        _exception("payment", now - 10 * DAY, now - 10 * DAY + hours * HOUR)
    _exception("posting", now - DAY, now - DAY + 10 * 60 * datetime.timedelta(seconds=1))
    _exception("payment", now - 100 * DAY, now - 99 * DAY)  # opened before the 90 days
    _exception("payment", now - 2 * DAY, None)  # still open
    _exception("payment", now - 3 * DAY, now - 3 * DAY + 50 * HOUR, entity_code="GB01")  # another entity

    everything = dashboard.month_figures(None, now=now)["exception_resolution"]
    assert [(r["process"], r["count"]) for r in everything] == [("payment", 5), ("posting", 1)]
    us01 = {r["process"]: r for r in dashboard.month_figures(["US01"], now=now)["exception_resolution"]}
    assert us01["payment"]["count"] == 4
    assert us01["payment"]["p50"] == pytest.approx(2.5 * 3600)  # percentile_cont: between 2 h and 3 h
    assert us01["payment"]["p95"] == pytest.approx(3.85 * 3600)  # 3 h + 0.85 of the way to 4 h
    assert us01["posting"]["p50"] == us01["posting"]["p95"] == pytest.approx(600)


def test_close_status_and_cycle_time(entity, controller, controller2):
    now = timezone.now()
    this = (now.year, now.month)
    last, before = _month_before(*this), _month_before(*this, 2)
    Period.objects.create(entity=entity, year=last[0], month=last[1], status="closed", closed_by="carl",
                          closed_at=_month_end(*last) + datetime.timedelta(days=1))
    Period.objects.create(entity=entity, year=before[0], month=before[1], status="closed", closed_by="carl",
                          close_approved_by="cora", closed_at=_month_end(*before) + datetime.timedelta(hours=60))
    old = _month_before(*this, 9)  # outside the months shown
    Period.objects.create(entity=entity, year=old[0], month=old[1], status="closed",
                          closed_at=_month_end(*old) + 30 * DAY)
    carl = get_user_model().objects.get(username="carl-controller")
    services.period_reopen_request(entity=entity, year=last[0], month=last[1], user=carl, reason="late invoice")

    close = dashboard.compute(["US01"], now=now, history=False)["close"]
    assert close["months"][0] == f"{this[0]}-{this[1]:02d}" and len(close["months"]) == 7
    (row,) = close["entities"]
    cells = {c["label"]: c for c in row["cells"]}
    current = cells[f"{this[0]}-{this[1]:02d}"]
    assert (current["status"], current["cycle_seconds"], current["pending"]) == ("open", None, None)
    closed = cells[f"{last[0]}-{last[1]:02d}"]
    assert (closed["status"], closed["override"], closed["pending"]) == ("closed", False, "period_reopen")
    assert closed["cycle_seconds"] == pytest.approx(86400)
    override = cells[f"{before[0]}-{before[1]:02d}"]
    assert override["override"] is True and override["cycle_seconds"] == pytest.approx(60 * 3600)
    assert close["cycle"]["closed"] == 2
    assert close["cycle"]["p50"] == pytest.approx((86400 + 216000) / 2)
    assert close["cycle"]["p95"] == pytest.approx(86400 + 0.95 * (216000 - 86400))
    with correlation.bound(None):
        ledger.entity_setup(code="GB01", currency="GBP", name="Tieout UK", actor="test")
    assert [r["entity"] for r in dashboard.compute(None, now=now, history=False)["close"]["entities"]] == [
        "GB01", "US01"]
    assert dashboard.compute(["GB01"], now=now, history=False)["close"]["cycle"]["closed"] == 0


def test_open_breaks_by_code_and_age_and_breaks_per_month(entity):
    now = timezone.now()
    this = (now.year, now.month)
    last = _month_before(*this)
    month_start = datetime.datetime(*this, 1, tzinfo=datetime.UTC)
    reconciled(entity, *last, started_at=now - 2 * HOUR, breaks=(
        {"code": "missing_in_erp"},
        {"code": "missing_in_erp", "opened_at": now - 3 * DAY},
        {"code": "erp_amount_mismatch", "opened_at": now - 40 * DAY},
        {"code": "erp_amount_mismatch", "opened_at": month_start - 5 * DAY, "resolved_at": month_start + HOUR},
    ))
    recon = dashboard.compute(None, now=now, history=False)["reconciliation"]
    assert recon["total"] == 3
    by_code = {r["code"]: r for r in recon["by_code"]}
    assert by_code["missing_in_erp"]["count"] == 2
    assert [c["count"] for c in by_code["missing_in_erp"]["ages"]] == [1, 1, 0, 0]
    assert [c["count"] for c in by_code["erp_amount_mismatch"]["ages"]] == [0, 0, 0, 1]
    assert [b["count"] for b in recon["by_age"]] == [1, 1, 0, 1]
    assert dashboard.compute(["XX01"], now=now, history=False)["reconciliation"]["total"] == 0

    monthly = {r["month"]: r for r in dashboard.month_figures(None, now=now)["breaks_monthly"]}
    assert len(monthly) == 6
    current = monthly[f"{this[0]}-{this[1]:02d}"]
    previous = monthly[f"{last[0]}-{last[1]:02d}"]
    opened_this_month = sum(1 for opened in (now - 2 * HOUR, now - 3 * DAY, now - 40 * DAY) if opened >= month_start)
    assert current["opened"] == opened_this_month and current["resolved"] == 1
    assert previous["resolved"] == 0
    assert sum(r["opened"] for r in monthly.values()) == 4  # all within the six months


def test_unapplied_cash_by_age(entity, integration):
    now = timezone.now()
    send(integration, f.customer("cus_cash"))
    send(integration, f.invoice("inv_cash", customer_id="cus_cash", lines=[("100.00", "0")]))

    def paid(payment_id, amount, days_ago, allocations=()):
        at = (now - days_ago * DAY).isoformat().replace("+00:00", "Z")
        send(integration, f.payment(payment_id, customer_id="cus_cash", amount=amount, received_at=at,
                                    allocations=allocations))

    paid("pay_new", "50.00", 5)  # all of it unapplied, 5 days old
    paid("pay_part", "80.00", 45, allocations=[("inv_cash", "30.00")])  # 50.00 unapplied, 45 days old
    paid("pay_old", "12.34", 200)
    paid("pay_full", "70.00", 3, allocations=[("inv_cash", "70.00")])  # fully applied: not in it
    (usd,) = dashboard.month_figures(["US01"], now=now)["unapplied_cash"]
    assert usd["currency"] == "USD" and usd["count"] == 3 and usd["total"] == Decimal("112.34")
    assert [(c["key"], c["count"], c["amount"]) for c in usd["ages"]] == [
        ("0-30", 1, Decimal("50.00")), ("31-60", 1, Decimal("50.00")), ("61-90", 0, Decimal("0")),
        ("90+", 1, Decimal("12.34"))]
    assert dashboard.month_figures(["XX01"], now=now)["unapplied_cash"] == []


def test_the_month_figures_are_kept_for_minutes_and_refreshed_by_one_request(entity, settings):
    settings.TIEOUT_DASHBOARD_CACHE_SECONDS = 15
    now = timezone.now()
    key = f"dashboard:v{dashboard.CACHE_VERSION}:months:all"
    cache.delete(key)
    cache.delete(f"{key}:refresh")
    _exception("payment", now - 2 * HOUR, now - HOUR)
    first = dashboard.compute(None, now=now)["months"]
    assert first["exception_resolution"][0]["count"] == 1
    _exception("payment", now - 2 * HOUR, now - HOUR)
    assert dashboard.compute(None, now=now)["months"] == first  # kept
    later = now + datetime.timedelta(seconds=dashboard.HISTORY_SECONDS + 1)
    cache.add(f"{key}:refresh", 1)  # another request is refreshing them: this one gets them stale
    assert dashboard.compute(None, now=later)["months"]["computed_at"] == now
    cache.delete(f"{key}:refresh")
    assert dashboard.compute(None, now=later)["months"]["exception_resolution"][0]["count"] == 2
    assert cache.get(f"{key}:refresh") is None


def test_the_beat_keeps_every_entitys_month_figures_fresh(entity, settings):
    settings.TIEOUT_DASHBOARD_CACHE_SECONDS = 15
    cache.delete(f"dashboard:v{dashboard.CACHE_VERSION}:months:all")
    assert settings.CELERY_BEAT_SCHEDULE["dashboard-month-figures"] == {
        "task": "portal.tasks.refresh_dashboard_month_figures", "schedule": 240.0}
    now = timezone.now()
    _exception("posting", now - 2 * HOUR, now - HOUR)
    portal_tasks.refresh_dashboard_month_figures.apply()
    _exception("posting", now - 2 * HOUR, now - HOUR)  # after the refresh: not read by the page
    assert dashboard.compute(None)["months"]["exception_resolution"][0]["count"] == 1
    assert dashboard.compute(["US01"])["months"]["exception_resolution"][0]["count"] == 2  # a scope of its own
