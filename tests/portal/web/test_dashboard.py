"""The operations dashboard at "/": figures from a small known data set sent through the API, the link
behind each figure, entity scope, who may see it, the cache, and (in a real browser) how it looks at
1280 px and 390 px.
"""
import datetime
import re
from html import unescape

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import transaction
from django.test import Client
from django.utils import timezone

from billing_sync import tokens
from config import correlation
from exceptions_queue.models import ExceptionRecord
from ledger import services as ledger
from ledger.connectors import builtin
from ledger.connectors.base import PermanentError
from ledger.models import Journal
from portal.selectors import dashboard as dashboard_selectors
from tests import factories as f
from tests.close_helpers import reconciled
from tests.portal.web.conftest import assert_accessible, shot

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_figure_cache(settings):
    settings.TIEOUT_DASHBOARD_CACHE_SECONDS = 0  # every request reads the database (one test turns it on)


def _user(username):
    return get_user_model().objects.get(username=username)


def _signed_in(username) -> Client:
    client = Client()
    client.force_login(_user(username))
    return client


def _figure(html: str, name: str) -> tuple[str, str]:
    """(href, text) of the link marked data-figure=name."""
    match = re.search(r'<a href="([^"]*)"[^>]*data-figure="%s"[^>]*>([^<]*)</a>' % re.escape(name), html)
    assert match, f"no figure {name!r} in the page"
    return unescape(match.group(1)), match.group(2).strip()


@pytest.fixture
def known_data(entity, integration):
    """One customer, one posted invoice, one invoice for an unknown customer (exception), one credit note
    of 1,500.00 waiting for approval (an unposted journal)."""
    customer = f.customer()
    assert integration.send(customer).status_code == 202
    cid = customer["data"]["customer_id"]
    posted = f.invoice(customer_id=cid, lines=[("2000.00", "0")])
    assert integration.send(posted).status_code == 202
    assert integration.send(f.invoice(customer_id="cus_nobody")).status_code == 202
    assert integration.send(f.credit_note(posted["data"]["invoice_id"], "1500.00")).status_code == 202
    return {"invoice_id": posted["data"]["invoice_id"]}


def test_signed_out_visitors_go_to_the_login_page(client, entity):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_figures_of_a_known_data_set_and_the_links_behind_them(known_data, finance):
    response = _signed_in("fiona-ops").get("/")
    assert response.status_code == 200
    html = response.content.decode()

    # Events: 4 received in the last 24 h; 1 posted (the invoice; the customer has no journal and the
    # credit note waits for approval), 1 failed (the unknown customer).
    figures = response.context["f"]
    assert figures["events_24h"] == {"received": 4, "posted": 1, "failed": 1}
    href, text = _figure(html, "events-24h")
    assert (href, text) == ("/admin/billing_sync/event/?received=24h", "4")
    assert _figure(html, "events-posted-24h") == ("/admin/billing_sync/event/?received=24h&status__exact=posted",
                                                  "1 posted")
    assert _figure(html, "events-failed-24h") == ("/admin/billing_sync/event/?received=24h&outcome=failed",
                                                  "1 failed")

    # Open exceptions by code and age: one unknown_customer, younger than an hour.
    assert _figure(html, "open-exceptions") == ("/exceptions/?status=unresolved", "1")
    assert _figure(html, "code-unknown_customer") == ("/exceptions/?status=unresolved&code=unknown_customer", "1")
    assert _figure(html, "age-lt1h")[0] == "/exceptions/?status=unresolved&age=lt1h"
    assert _figure(html, "age-lt1h")[1] == "1"
    assert _figure(html, "age-1-7d") == ("/exceptions/?status=unresolved&age=1-7d", "0")
    assert 'href="/exceptions/?status=unresolved&amp;code=unknown_customer&amp;age=lt1h"' in html

    # Posted journals and latency: the invoice's journal, posted within the request.
    assert _figure(html, "journals-posted-24h") == ("/admin/ledger/journal/?status__exact=posted&posted=24h", "1")
    assert figures["latency"]["posted_24h"] == 1
    assert 0 <= figures["latency"]["p50_24h"] < 60
    assert sum(row["posted"] for row in figures["throughput"]) == 1

    # The credit note waits for approval: the oldest unposted journal, linked.
    waiting = Journal.objects.get(kind="credit_note")
    assert waiting.status == "pending_approval"
    href, _age = _figure(html, "oldest-unposted")
    assert href == f"/admin/ledger/journal/{waiting.pk}/change/"
    assert _figure(html, "unposted") == ("/admin/ledger/journal/?unposted=yes", "1 unposted")
    assert figures["pending_approvals"] == 1

    # Charts: server-rendered SVG with a name, and the data as tables in <details>.
    assert html.count('role="img"') >= 3
    assert '<title id="chart-hourly-title">Events per hour, last 24 hours</title>' in html
    assert "<details>" in html and '<th scope="col">Hour (UTC)</th>' in html
    assert re.search(r"as of <time[^>]*>\d\d:\d\d:\d\d UTC</time>", html)


def test_age_buckets_and_retries_follow_the_clock(known_data, finance):
    exc = ExceptionRecord.objects.get(code="unknown_customer")
    later = timezone.now() + datetime.timedelta(days=3)
    figures = dashboard_selectors.compute(None, now=later)
    assert {b["key"]: b["count"] for b in figures["open_exceptions"]["by_age"]} == {
        "<1h": 0, "1-24h": 0, "1-7d": 1, ">7d": 0}
    [row] = figures["open_exceptions"]["by_code"]
    assert (row["code"], row["count"], row["retries"]) == ("unknown_customer", 1, exc.retry_count)
    # Three days on, the events and postings of today are outside the 24-hour windows.
    assert figures["events_24h"]["received"] == 0
    assert figures["latency"]["posted_24h"] == 0
    assert sum(day["received"] for day in figures["events_daily"]) == 4


def test_retries_count_failed_erp_attempts_and_retried_journals(entity, integration, finance, monkeypatch):
    customer = f.customer()
    integration.send(customer)

    def refuse(self, journal):
        raise PermanentError("account blocked in the ERP")

    with monkeypatch.context() as patch:
        patch.setattr(builtin.BuiltinConnector, "post_journal", refuse)
        integration.send(f.invoice(customer_id=customer["data"]["customer_id"]))
    journal = Journal.objects.get(kind="invoice")
    assert journal.status == "failed"
    figures = dashboard_selectors.compute(None)
    assert figures["retries"]["erp_attempts_failed_24h"] == 1
    assert figures["retries"]["journals_retried"] == 0
    assert figures["unposted"]["oldest"]["id"] == str(journal.pk)
    assert figures["unposted"]["by_status"] == {"failed": 1}
    assert figures["open_exceptions"]["by_code"][0]["code"] == "posting_failed"

    # A worker that tried twice leaves posting_attempts at 2 (the built-in ledger posts inline and does not
    # count, so the count is set here as a worker leaves it): retried, still unposted.
    Journal.objects.filter(pk=journal.pk).update(posting_attempts=2)
    figures = dashboard_selectors.compute(None)
    assert figures["retries"]["journals_retried"] == 1
    assert figures["retries"]["journals_retried_unposted"] == 1

    # The queue's retry posts it (the ERP accepts now): still a retried journal, no longer unposted.
    exc = ExceptionRecord.objects.get(journal=journal, status="open")
    assert finance.post(f"/api/v1/exceptions/{exc.pk}/retry").status_code == 200
    journal.refresh_from_db()
    assert journal.status == "posted"
    figures = dashboard_selectors.compute(None)
    assert figures["retries"]["journals_retried"] == 1
    assert figures["retries"]["journals_retried_unposted"] == 0
    assert figures["retries"]["erp_attempts_failed_24h"] == 1
    assert figures["unposted"]["oldest"] is None
    assert figures["open_exceptions"]["total"] == 0


def test_figures_are_scoped_to_the_users_entities(known_data, integration):
    with correlation.bound(None), transaction.atomic():
        ledger.entity_setup(code="GB01", currency="GBP", actor="test")
    assert integration.send(f.invoice(customer_id="cus_gb", entity="GB01", currency="GBP")).status_code == 202
    tokens.token_issue(username="uma-us-only", role="finance_ops", entities=["US01"], actor="test")
    tokens.token_issue(username="gabe-gb-only", role="finance_ops", entities=["GB01"], actor="test")

    us = _signed_in("uma-us-only").get("/").context["f"]
    gb = _signed_in("gabe-gb-only").get("/").context["f"]
    assert us["scope"] == ["US01"] and gb["scope"] == ["GB01"]
    assert us["events_24h"]["received"] == 4
    assert gb["events_24h"]["received"] == 1
    assert us["open_exceptions"]["total"] == 1 and gb["open_exceptions"]["total"] == 1
    assert gb["unposted"]["oldest"] is None and us["unposted"]["oldest"] is not None
    assert gb["pending_approvals"] == 0 and us["pending_approvals"] == 1
    assert gb["latency"]["posted_24h"] == 0 and us["latency"]["posted_24h"] == 1

    tokens.token_issue(username="nora-no-entity", role="finance_ops", entities=[], actor="test")
    nothing = _signed_in("nora-no-entity").get("/").context["f"]
    assert nothing["events_24h"]["received"] == 0 and nothing["open_exceptions"]["total"] == 0


def test_every_staff_role_may_read_it_and_nobody_may_post_to_it(known_data, finance, auditor, controller, admin_api):
    for username in ("fiona-ops", "aude-auditor", "carl-controller", "ada-admin"):
        client = _signed_in(username)
        assert client.get("/").status_code == 200, username
        assert client.post("/", {}).status_code == 403, username
    tokens.token_issue(username="integration-only", role="integration", actor="test")
    assert _signed_in("integration-only").get("/").status_code == 403


def test_figures_are_cached_per_scope_for_a_few_seconds(known_data, finance, integration, settings):
    settings.TIEOUT_DASHBOARD_CACHE_SECONDS = 15
    cache.delete(f"dashboard:v{dashboard_selectors.CACHE_VERSION}:all")
    client = _signed_in("fiona-ops")
    first = client.get("/").context["f"]
    integration.send(f.invoice(customer_id="cus_nobody_else"))
    second = client.get("/").context["f"]
    assert second["computed_at"] == first["computed_at"]
    assert second["events_24h"] == first["events_24h"]
    cache.delete(f"dashboard:v{dashboard_selectors.CACHE_VERSION}:all")
    third = client.get("/").context["f"]
    assert third["events_24h"]["received"] == first["events_24h"]["received"] + 1


def test_stale_figures_are_served_while_one_request_refreshes_them(known_data, finance, integration, settings):
    settings.TIEOUT_DASHBOARD_CACHE_SECONDS = 15
    key = f"dashboard:v{dashboard_selectors.CACHE_VERSION}:all"
    cache.delete_many([key, f"{key}:refresh"])
    client = _signed_in("fiona-ops")
    stale = dict(client.get("/").context["f"], computed_at=timezone.now() - datetime.timedelta(seconds=20))
    cache.set(key, stale, timeout=60)
    integration.send(f.invoice(customer_id="cus_nobody_else"))

    cache.add(f"{key}:refresh", 1, timeout=30)  # another request is refreshing them right now
    served = client.get("/").context["f"]
    assert served["computed_at"] == stale["computed_at"]
    assert served["events_24h"] == stale["events_24h"]

    cache.delete(f"{key}:refresh")  # nobody is: this request refreshes them, and frees the lock
    fresh = client.get("/").context["f"]
    assert fresh["computed_at"] > stale["computed_at"]
    assert fresh["events_24h"]["received"] == stale["events_24h"]["received"] + 1
    assert cache.get(f"{key}:refresh") is None
    assert cache.get(key)["computed_at"] == fresh["computed_at"]


def test_days_before_the_last_24_hours_are_kept_for_minutes(known_data, integration, settings):
    settings.TIEOUT_DASHBOARD_CACHE_SECONDS = 15
    later = timezone.now() + datetime.timedelta(days=3)  # today's events are history then
    since_24h = later.replace(minute=0, second=0, microsecond=0) - datetime.timedelta(hours=23)
    cache.delete(f"dashboard:v{dashboard_selectors.CACHE_VERSION}:history:all:{since_24h.isoformat()}")
    first = dashboard_selectors.compute(None, now=later)
    assert sum(day["received"] for day in first["events_daily"]) == 4
    integration.send(f.invoice(customer_id="cus_nobody_else"))
    kept = dashboard_selectors.compute(None, now=later)
    assert sum(day["received"] for day in kept["events_daily"]) == 4  # the history, as kept
    assert dashboard_selectors.compute(None)["events_24h"]["received"] == 5  # the last 24 hours are live
    settings.TIEOUT_DASHBOARD_CACHE_SECONDS = 0
    assert sum(day["received"] for day in dashboard_selectors.compute(None, now=later)["events_daily"]) == 5


def test_the_dashboard_still_answers_when_the_cache_is_down(known_data, finance, settings, monkeypatch):
    settings.TIEOUT_DASHBOARD_CACHE_SECONDS = 15

    def down(*args, **kwargs):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(dashboard_selectors.cache, "get", down)
    monkeypatch.setattr(dashboard_selectors.cache, "set", down)
    response = _signed_in("fiona-ops").get("/")
    assert response.status_code == 200
    assert response.context["f"]["events_24h"]["received"] == 4


def test_close_and_reconciliation_figures_on_the_page(entity, finance):
    now = timezone.now()
    reconciled(entity, now.year, now.month, breaks=({"code": "missing_in_erp"},))
    ExceptionRecord.objects.create(code="over_application", message="m", process="payment", entity_code="US01",
                                   created_at=now - datetime.timedelta(hours=3), status="resolved",
                                   resolved_at=now - datetime.timedelta(hours=1), resolution="refunded")
    response = _signed_in("fiona-ops").get("/")
    html = response.content.decode()
    assert _figure(html, "open-breaks") == ("/exceptions/?status=unresolved&process=reconciliation", "1")
    assert 'href="/exceptions/?status=unresolved&amp;process=reconciliation&amp;code=missing_in_erp"' in html
    month = f"{now.year}-{now.month:02d}"
    assert f'data-close="US01-{month}"><a href="/close/US01/{month}/">' in html
    assert re.search(r'data-figure="resolution-p50-payment">2 h</td>', html)
    assert _figure(html, "close-cycle-p50") == ("/close/", "—")  # nothing closed yet


# ------------------------------------------------------------------------------------------ browser
@pytest.mark.browser
def test_dashboard_in_a_browser_at_desktop_and_phone_widths(web_users, integration, new_page, live_server):
    customer = f.customer()
    integration.send(customer)
    integration.send(f.invoice(customer_id=customer["data"]["customer_id"]))
    integration.send(f.invoice(customer_id="cus_nobody"))

    # Signed in through a session made by Django's test client (the login page is tested elsewhere).
    client = Client()
    client.force_login(_user(web_users["finance_ops"]))
    session = client.cookies["sessionid"].value

    for width, name in ((1280, "dashboard"), (390, "dashboard-narrow")):
        page = new_page(width=width, height=900)
        page.context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
        page.goto("/")
        assert page.get_by_role("heading", name="Operations dashboard").is_visible()
        chart = page.get_by_role("img", name="Events per hour, last 24 hours")
        assert chart.is_visible()
        box = chart.bounding_box()
        assert box["width"] <= width  # the chart fits the screen, it does not scroll sideways
        assert page.locator("[data-figure=open-exceptions]").inner_text() == "1"
        assert page.locator("[data-figure=events-24h]").inner_text() == "3"
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        page.locator("details").first.evaluate("d => d.open = true")  # the data table, as a reader opens it
        assert_accessible(page, f"dashboard at {width} px")
        shot(page, name)

    # Keyboard: the figure links are reachable and lead to the filtered lists.
    link = page.locator("[data-figure=code-unknown_customer]")
    assert link.get_attribute("href") == "/exceptions/?status=unresolved&code=unknown_customer"
    link.focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/exceptions/?status=unresolved&code=unknown_customer")
