"""The admin: every list page renders, large tables are never counted in full, read-only records refuse
change and delete, an auditor views without changing, rows stay within the user's entities, and source
systems are edited through their audited service.
"""
import re

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEntry
from billing_sync import tokens
from billing_sync.models import Event, Receipt, SourceSystem
from config import correlation
from config.admin_mixins import FastCountPaginator, LargeTableAdminMixin
from exceptions_queue.models import ExceptionRecord
from ledger import services as ledger
from ledger.models import Journal
from tests import factories as f

pytestmark = pytest.mark.django_db

OUR_APPS = ("audit", "billing_sync", "ledger", "exceptions_queue")
FULL_EVENT_COUNT = re.compile(r'SELECT COUNT\(\*\) AS "__count" FROM "billing_sync_event"(?!.*LIMIT)', re.S)


def _client(username) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    return client


@pytest.fixture
def data(entity, integration):
    """A posted invoice, an exception and a pending approval: a row in most tables."""
    customer = f.customer()
    integration.send(customer)
    invoice = f.invoice(customer_id=customer["data"]["customer_id"], lines=[("2000.00", "0")])
    integration.send(invoice)
    integration.send(f.invoice(customer_id="cus_nobody"))
    integration.send(f.credit_note(invoice["data"]["invoice_id"], "1500.00"))
    return invoice


def _our_admins():
    return [(model, model_admin) for model, model_admin in admin.site._registry.items()
            if model._meta.app_label in OUR_APPS]


def test_every_changelist_and_change_page_renders_for_an_admin(data, admin_api):
    client = _client("ada-admin")
    assert client.get("/admin/").status_code == 200
    for model, _model_admin in _our_admins():
        opts = model._meta
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        response = client.get(url)
        assert response.status_code == 200, (url, response.content[:500])
        obj = model._default_manager.first()
        if obj is not None:
            change = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
            assert client.get(change).status_code == 200, change


def test_large_tables_use_the_fast_paginator_without_full_counts():
    large = {Event, Journal, ExceptionRecord, AuditEntry}
    for model, model_admin in _our_admins():
        if isinstance(model_admin, LargeTableAdminMixin):
            assert model_admin.paginator is FastCountPaginator
            assert model_admin.show_full_result_count is False
            large.discard(model)
    assert not large, f"not using LargeTableAdminMixin: {large}"
    names = {m._meta.model_name for m, a in _our_admins() if isinstance(a, LargeTableAdminMixin)}
    assert {"receipt", "journalline", "postingattempt", "approval", "callbackdelivery"} <= names


def test_unfiltered_event_list_uses_the_estimate_and_filtered_lists_a_capped_count(data, admin_api, monkeypatch):
    client = _client("ada-admin")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE billing_sync_event")
    events = Event.objects.count()
    monkeypatch.setattr(FastCountPaginator, "cap", 2)  # the table counts as large from 3 rows on

    with CaptureQueriesContext(connection) as queries:
        response = client.get("/admin/billing_sync/event/")
    assert response.status_code == 200
    sql = [q["sql"] for q in queries]
    assert not [s for s in sql if FULL_EVENT_COUNT.search(s)], sql
    assert not [s for s in sql if "COUNT(*)" in s and "billing_sync_event" in s], sql  # the estimate only
    assert any("pg_class" in s for s in sql)
    assert response.context["cl"].result_count == events

    with CaptureQueriesContext(connection) as queries:
        response = client.get("/admin/billing_sync/event/?status__exact=exception")
    assert response.status_code == 200
    counts = [q["sql"] for q in queries if "COUNT(*)" in q["sql"] and "billing_sync_event" in q["sql"]]
    assert counts and all("LIMIT 3" in s for s in counts), counts
    assert response.context["cl"].result_count == 1


def test_no_full_count_on_any_large_list_even_unanalysed(data, admin_api):
    client = _client("ada-admin")
    for model, model_admin in _our_admins():
        if not isinstance(model_admin, LargeTableAdminMixin):
            continue
        table = model._meta.db_table
        full = re.compile(r'SELECT COUNT\(\*\) AS "__count" FROM "%s"(?!.*LIMIT)' % table, re.S)
        opts = model._meta
        with CaptureQueriesContext(connection) as queries:
            response = client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        assert response.status_code == 200
        assert not [q["sql"] for q in queries if full.search(q["sql"])], table


def test_dashboard_filters_and_exact_search_work(data, admin_api):
    client = _client("ada-admin")
    event = Event.objects.get(status="exception")
    for url, expected in [
        ("/admin/billing_sync/event/?received=24h", Event.objects.count()),
        ("/admin/billing_sync/event/?received=24h&outcome=failed", 1),
        ("/admin/billing_sync/event/?type=invoice.issued", 2),
        (f"/admin/billing_sync/event/?q={event.event_id}", 1),
        (f"/admin/billing_sync/event/?q={event.pk}", 1),
        ("/admin/billing_sync/event/?q=not-a-uuid-nor-an-id", 0),
        ("/admin/ledger/journal/?status__exact=posted&posted=24h", 1),
        ("/admin/ledger/journal/?unposted=yes", 1),
        ("/admin/ledger/journal/?retried=yes", 0),
        ("/admin/ledger/postingattempt/?failed=24h", 0),
        ("/admin/exceptions_queue/exceptionrecord/?code=unknown_customer", 1),
        ("/admin/audit/auditentry/?object_type=event", AuditEntry.objects.filter(object_type="event").count()),
    ]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.context["cl"].result_count == expected, url


@pytest.mark.parametrize("path", ["billing_sync/event", "ledger/journal", "audit/auditentry",
                                  "exceptions_queue/exceptionrecord", "billing_sync/receipt"])
def test_read_only_records_refuse_change_add_and_delete(data, admin_api, path):
    client = _client("ada-admin")
    model = {"billing_sync/event": Event, "ledger/journal": Journal, "audit/auditentry": AuditEntry,
             "exceptions_queue/exceptionrecord": ExceptionRecord}.get(path)
    if model is None:
        model = Receipt
    obj = model.objects.first()
    change = f"/admin/{path}/{obj.pk}/change/"
    page = client.get(change)
    assert page.status_code == 200
    assert b'name="_save"' not in page.content  # a view, not a form
    assert client.post(change, {}).status_code == 403
    assert client.get(f"/admin/{path}/{obj.pk}/delete/").status_code == 403
    assert client.post(f"/admin/{path}/{obj.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get(f"/admin/{path}/add/").status_code == 403
    assert model.objects.filter(pk=obj.pk).exists()


def test_an_auditor_views_everything_and_changes_nothing(data, auditor, entity):
    client = _client("aude-auditor")
    assert client.get("/admin/").status_code == 200
    for path in ["billing_sync/event", "ledger/journal", "ledger/entity", "ledger/account",
                 "exceptions_queue/approvalpolicy", "audit/auditentry", "billing_sync/sourcesystem"]:
        assert client.get(f"/admin/{path}/").status_code == 200, path
    change = f"/admin/ledger/entity/{entity.pk}/change/"
    page = client.get(change)
    assert page.status_code == 200 and b'name="_save"' not in page.content
    response = client.post(change, {"name": "Renamed by an auditor", "erp_connector": "builtin",
                                    "posting_mode": "single", "erp_settings": "{}"})
    assert response.status_code == 403
    entity.refresh_from_db()
    assert entity.name == "Tieout US"
    assert client.get("/admin/billing_sync/sourcesystem/add/").status_code == 403


def test_admin_lists_stay_within_the_users_entities(data, integration):
    with correlation.bound(None), transaction.atomic():
        ledger.entity_setup(code="GB01", currency="GBP", actor="test")
    integration.send(f.invoice(customer_id="cus_gb", entity="GB01", currency="GBP"))
    tokens.token_issue(username="gabe-gb-only", role="finance_ops", entities=["GB01"], actor="test")
    client = _client("gabe-gb-only")
    events = client.get("/admin/billing_sync/event/").context["cl"]
    assert {e.entity_code for e in events.result_list} == {"GB01"}
    exceptions = client.get("/admin/exceptions_queue/exceptionrecord/").context["cl"]
    assert {e.entity_code for e in exceptions.result_list} == {"GB01"}
    # Tables that span entities are for staff who may see every entity.
    assert client.get("/admin/audit/auditentry/").context["cl"].result_count == 0
    us_event = Event.objects.filter(entity_code="US01").first()
    assert client.get(f"/admin/billing_sync/event/{us_event.pk}/change/").status_code == 302  # "not found"


def test_history_pages_of_versioned_models(data, admin_api, entity):
    client = _client("ada-admin")
    exc = ExceptionRecord.objects.first()
    for url in [f"/admin/ledger/entity/{entity.pk}/history/",
                f"/admin/exceptions_queue/exceptionrecord/{exc.pk}/history/"]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert b"history" in response.content.lower()


def test_source_systems_are_edited_through_the_audited_service(entity, admin_api):
    client = _client("ada-admin")
    response = client.post("/admin/billing_sync/sourcesystem/add/", {
        "name": "billing-prod", "callback_url": "https://billing.example/hooks/tieout",
        "secret_env": "BILLING_WEBHOOK_SECRET", "is_active": "on"})
    assert response.status_code == 302, response.content[:2000]
    source = SourceSystem.objects.get(name="billing-prod")
    created = AuditEntry.objects.get(action="source_system.created", object_id="billing-prod")
    assert created.actor == "ada-admin"
    assert created.after["callback_url"] == "https://billing.example/hooks/tieout"
    assert not AuditEntry.objects.filter(actor="admin:validation").exists()  # the dry run left nothing

    response = client.post(f"/admin/billing_sync/sourcesystem/{source.pk}/change/", {
        "callback_url": "https://billing.example/hooks/v2", "secret_env": "BILLING_WEBHOOK_SECRET"})
    assert response.status_code == 302, response.content[:2000]
    source.refresh_from_db()
    assert (source.callback_url, source.is_active) == ("https://billing.example/hooks/v2", False)
    updated = AuditEntry.objects.get(action="source_system.updated", object_id="billing-prod")
    assert updated.before["callback_url"] == "https://billing.example/hooks/tieout"
    assert source.history.count() == 2

    # The secret itself is refused, and not repeated back.
    response = client.post(f"/admin/billing_sync/sourcesystem/{source.pk}/change/", {
        "callback_url": "https://billing.example/hooks/v2", "secret_env": "whsec_c2VjcmV0c2VjcmV0", "is_active": "on"})
    assert response.status_code == 200
    assert b"not the secret" in response.content
    source.refresh_from_db()
    assert source.secret_env == "BILLING_WEBHOOK_SECRET"
    assert client.post(f"/admin/billing_sync/sourcesystem/{source.pk}/delete/", {"post": "yes"}).status_code == 403


def test_money_columns_read_grouped_and_right_aligned(data, admin_api):
    html = _client("ada-admin").get("/admin/billing_sync/invoice/").content.decode()
    assert re.search(r'<span style="display:block;text-align:right;[^"]*">2,000.00</span>', html), html[-3000:]
    assert "2000.0000" not in html
