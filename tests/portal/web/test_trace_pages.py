"""Trace and evidence pages through Django's test client: the search routes every kind of id to its
timeline, each timeline shows the steps with their audit entry hashes and links both ways, the invoice
page shows readable version diffs, other entities' objects are 404 (searched or linked), the exception
page links here, and the admin history view of canonical documents and configuration renders its diffs.
"""
import pytest
from django.db import transaction
from django.test import Client

from audit.models import AuditEntry
from billing_sync import tokens
from billing_sync.models import Customer, Invoice
from config import correlation
from exceptions_queue import services as queue
from exceptions_queue.models import ApprovalPolicy, ExceptionRecord
from ledger import services as ledger
from ledger.models import Account, AccountMapping, Entity, Journal
from tests import factories as f
from tests.fixtures import erpnext_configure
from tests.portal.web.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def book(entity, integration, finance, auditor, admin_api):
    integration.send(f.customer("cus_tp"))
    issued = integration.send(f.invoice("inv_tp", customer_id="cus_tp", lines=[("100.00", "7.25")])).json()["id"]
    integration.send(f.invoice("inv_tp", customer_id="cus_tp", lines=[("150.00", "10.88")], version=2,
                               type_="invoice.amended"))
    over = integration.send(f.payment("pay_tp", customer_id="cus_tp", amount="999.00",
                                      allocations=[("inv_tp", "999.00")])).json()["id"]
    return {"issued": issued, "journal": Journal.objects.get(event_id=issued),
            "exception": ExceptionRecord.objects.get(event_id=over)}


def test_search_routes_each_kind_of_id(book):
    aude = client_for("aude-auditor")
    journal = book["journal"]
    cases = {
        str(journal.pk): f"/trace/journal/{journal.pk}/",
        book["issued"]: f"/trace/event/{book['issued']}/",
        "inv_tp": f"/trace/invoice/{f.SOURCE}/inv_tp/",
        journal.erp_document_ref: f"/trace/erp/US01/{journal.erp_document_ref}/",
        str(book["exception"].pk): f"/exceptions/{book['exception'].pk}/",
    }
    for query, target in cases.items():
        response = aude.get("/trace/", {"q": query, "entity": "US01"})
        assert response.status_code == 302 and response["Location"] == target, (query, response.status_code)
    page = aude.get("/trace/")
    html = page.content.decode()
    assert page.status_code == 200
    assert '<label for="t-q">Find by event id, journal id, invoice id or ERP document reference</label>' in html
    assert '<label for="t-entity">Entity</label>' in html and '<option value="US01"' in html
    missing = aude.get("/trace/", {"q": "no-such-thing"})
    assert missing.status_code == 404 and "Nothing found for" in missing.content.decode()


def test_journal_page_shows_steps_with_hashes_and_links_both_ways(book):
    journal = book["journal"]
    html = client_for("fiona-ops").get(f"/trace/journal/{journal.pk}/").content.decode()
    for entry in AuditEntry.objects.filter(object_type="journal", object_id=str(journal.pk)):
        assert entry.entry_hash in html  # full hash in the page (title and screen-reader text)
    assert f'href="/trace/event/{book["issued"]}/"' in html
    assert f'href="/trace/invoice/{f.SOURCE}/inv_tp/"' in html
    reversal = Journal.objects.get(reverses=journal)
    assert f'href="/trace/journal/{reversal.pk}/"' in html and "reversed_by" in html
    assert f'href="/trace/erp/US01/{journal.erp_document_ref}/"' in html
    assert 'role="region"' in html and 'tabindex="0"' in html and '<th scope="col">Entry hash</th>' in html


def test_event_erp_and_invoice_pages(book):
    aude = client_for("aude-auditor")
    journal = book["journal"]
    event_html = aude.get(f"/trace/event/{book['issued']}/").content.decode()
    assert "Raw body SHA-256" in event_html and f'href="/trace/journal/{journal.pk}/"' in event_html
    assert f'href="/trace/invoice/{f.SOURCE}/inv_tp/"' in event_html
    received = AuditEntry.objects.get(action="event.received", event_id=book["issued"])
    assert received.entry_hash in event_html
    erp_html = aude.get(f"/trace/erp/US01/{journal.erp_document_ref}/").content.decode()
    assert f'href="/trace/journal/{journal.pk}/"' in erp_html and f'href="/trace/event/{book["issued"]}/"' in erp_html
    invoice_html = aude.get(f"/trace/invoice/{f.SOURCE}/inv_tp/").content.decode()
    # Readable diffs: field, before, after.
    assert '<th scope="row">total</th><td><del>107.25</del></td><td><ins>160.88</ins></td>' in invoice_html
    assert '<th scope="row">version</th><td><del>1</del></td><td><ins>2</ins></td>' in invoice_html
    assert f'href="/exceptions/{book["exception"].pk}/"' in invoice_html
    assert 'id="billing-open"' in invoice_html and "ties out" in invoice_html


def test_exception_page_links_to_the_traces(book):
    exc = book["exception"]
    html = client_for("fiona-ops").get(f"/exceptions/{exc.pk}/").content.decode()
    assert f'href="/trace/event/{exc.event_id}/"' in html
    assert f'href="/trace/invoice/{f.SOURCE}/inv_tp/"' in html or "Event trace" in html
    posted = client_for("fiona-ops").get(f"/trace/event/{book['issued']}/").content.decode()
    assert f'href="/trace/journal/{book["journal"].pk}/"' in posted


def test_other_entities_are_not_found_and_anonymous_signs_in(book):
    with correlation.bound(None), transaction.atomic():
        ledger.entity_setup(code="GB01", currency="GBP", name="Tieout UK", actor="test")
    with correlation.bound(None):
        tokens.token_issue(username="gb-ops", role="finance_ops", entities=["GB01"], actor="test")
    outsider = client_for("gb-ops")
    journal = book["journal"]
    for path in (f"/trace/journal/{journal.pk}/", f"/trace/event/{book['issued']}/",
                 f"/trace/invoice/{f.SOURCE}/inv_tp/", f"/trace/erp/US01/{journal.erp_document_ref}/"):
        assert outsider.get(path).status_code == 404, path
    assert outsider.get("/trace/", {"q": str(journal.pk)}).status_code == 404
    assert outsider.get("/trace/", {"q": "inv_tp", "entity": "US01"}).status_code == 404
    anonymous = Client().get(f"/trace/journal/{journal.pk}/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")


def test_integration_users_are_refused(book):
    integration_client = client_for("billing-system")
    assert integration_client.get("/trace/").status_code == 403
    assert integration_client.get(f"/trace/journal/{book['journal'].pk}/").status_code == 403


def test_nav_offers_trace_to_readers_and_evidence_to_auditors_and_admins(book):
    for username, evidence in (("fiona-ops", False), ("aude-auditor", True), ("ada-admin", True)):
        html = client_for(username).get("/trace/").content.decode()
        assert '<a href="/trace/" aria-current="page">Trace</a>' in html
        assert ('href="/evidence/"' in html) is evidence, username


@pytest.mark.parametrize(("model", "lookup"), [
    (Invoice, {"invoice_id": "inv_tp"}), (Entity, {"code": "US01"}), (Account, {"entity__code": "US01", "code": "1200"}),
    (AccountMapping, {"entity__code": "US01", "role": "receivable"}), (Customer, {"customer_id": "cus_tp"}),
    (ApprovalPolicy, {"entity__code": "US01"}),
])
def test_admin_history_view_renders_with_changes(book, model, lookup):
    obj = model.objects.filter(**lookup).first()
    assert obj is not None
    if model is Entity:
        with correlation.bound(None):
            ledger.entity_rename(entity=obj, name="Tieout US Inc.", actor="test")
    if model is ApprovalPolicy:
        with correlation.bound(None):
            queue.approval_policy_update(entity=obj.entity, values={"credit_note_threshold": "432.00"}, actor="test")
    if model is Account:
        with correlation.bound(None):
            ledger.account_update(entity=obj.entity, account_code=obj.code, name="Receivables (trade)",
                                  is_active=True, erp_account="", actor="test")
    meta = model._meta
    response = client_for("ada-admin").get(f"/admin/{meta.app_label}/{meta.model_name}/{obj.pk}/history/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Changes" in html or "changes" in html
    if model is Invoice:
        assert "107.2500" in html and "160.8800" in html  # total: old -> new
    if model is Entity:
        assert "Tieout US Inc." in html
    if model is Account:
        assert "Receivables (trade)" in html
    if model is ApprovalPolicy:
        assert "432" in html


def test_an_erp_reference_of_two_entities_asks_which(book, integration, erp, erp_standin):
    """ERP document numbers are unique per entity only (each entity's ERP numbers its own): two ERPNext
    stand-ins both answer ACC-JV-2026-00001, and the search lists both entities instead of guessing."""
    with correlation.bound(None), transaction.atomic():
        ledger.entity_setup(code="GB01", currency="GBP", name="Tieout UK", actor="test")
    servers = [erp, erp_standin(company="Tieout UK")]
    for code, server in zip(("US01", "GB01"), servers):
        erpnext_configure(Entity.objects.get(code=code), server)
    integration.send(f.invoice("inv_us2", customer_id="cus_tp", lines=[("10.00", "0")]))
    integration.send(f.customer("cus_gb", entity="GB01"))
    integration.send(f.invoice("inv_gb", customer_id="cus_gb", currency="GBP", entity="GB01"))
    ref = Journal.objects.get(document_id="inv_gb").erp_document_ref
    assert Journal.objects.get(document_id="inv_us2").erp_document_ref == ref
    aude = client_for("aude-auditor")
    response = aude.get("/trace/", {"q": ref})
    html = response.content.decode()
    assert response.status_code == 200 and "is an ERP document of several entities" in html
    assert f'href="/trace/erp/US01/{ref}/"' in html and f'href="/trace/erp/GB01/{ref}/"' in html
    chosen = aude.get("/trace/", {"q": ref, "entity": "GB01"})
    assert chosen.status_code == 302 and chosen["Location"] == f"/trace/erp/GB01/{ref}/"
