"""Users see only the entities they are granted: events, journals, trial balance, invoices, periods.

Two entities each get a posted invoice; a finance user granted US01 alone must not see EU01's rows in
any API list, and gets 404 (not 403: existence is not disclosed) for EU01's objects. Admins and users
granted every entity see both. Grants are audited.
"""
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import transaction

from audit.models import AuditEntry
from billing_sync import tokens
from config import correlation, roles
from ledger import services as ledger
from tests import factories as f
from tests.close_helpers import reconciled
from tests.fixtures import Api

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_entities(entity, integration):
    with correlation.bound(None), transaction.atomic():
        ledger.entity_setup(code="EU01", currency="USD", name="Tieout EU", actor="test")
    ids = {}
    for code in ("US01", "EU01"):
        cus = f.customer(entity=code)
        integration.send(cus)
        inv = f.invoice(customer_id=cus["data"]["customer_id"], entity=code)
        ids[code] = {"event": integration.send(inv).json()["id"], "invoice": inv["data"]["invoice_id"]}
    return ids


@pytest.fixture
def scoped(db, django_capture_on_commit_callbacks):
    raw = tokens.token_issue(username="sam-scoped", role="finance_ops", actor="test", entities=["US01"])
    return Api(raw, django_capture_on_commit_callbacks)


def test_a_new_user_is_granted_every_entity_and_the_grant_is_audited(finance):
    user = get_user_model().objects.get(username="fiona-ops")
    assert roles.entity_codes(user) is None
    entry = AuditEntry.objects.get(action="user.entities_granted", object_id="fiona-ops")
    assert entry.after == {"all_entities": True, "entities": []}


def test_a_scoped_user_sees_only_its_entity_in_lists(two_entities, scoped, finance):
    events = scoped.get("/api/v1/events").json()["results"]
    assert {e["entity"] for e in events} == {"US01"}
    journals = scoped.get("/api/v1/journals").json()["results"]
    assert journals and {j["entity"] for j in journals} == {"US01"}
    everything = finance.get("/api/v1/journals").json()["results"]
    assert {j["entity"] for j in everything} == {"US01", "EU01"}


def test_a_scoped_user_gets_404_for_another_entitys_objects(two_entities, scoped):
    eu = two_entities["EU01"]
    assert scoped.get(f"/api/v1/events/{eu['event']}").status_code == 404
    assert scoped.get(f"/api/v1/events/{eu['event']}/trace").status_code == 404
    assert scoped.get(f"/api/v1/invoices/{f.SOURCE}/{eu['invoice']}").status_code == 404
    assert scoped.get("/api/v1/ledger/trial-balance", entity="EU01").status_code == 404
    us = two_entities["US01"]
    assert scoped.get(f"/api/v1/events/{us['event']}").status_code == 200
    assert scoped.get(f"/api/v1/invoices/{f.SOURCE}/{us['invoice']}").status_code == 200
    assert scoped.get("/api/v1/ledger/trial-balance", entity="US01").status_code == 200


def test_a_controller_cannot_close_a_period_of_an_entity_it_is_not_granted(two_entities, entity,
                                                                            django_capture_on_commit_callbacks):
    raw = tokens.token_issue(username="cleo-scoped", role="controller", actor="test", entities=["US01"])
    api = Api(raw, django_capture_on_commit_callbacks)
    reconciled(entity, 2026, 10)  # October's close checks pass for US01
    assert api.post("/api/v1/periods/EU01/2026-10/close").status_code == 404
    assert api.get("/api/v1/periods/EU01/2026-10/close").status_code == 404
    assert api.post("/api/v1/periods/US01/2026-10/close").status_code == 200


def test_a_user_without_any_grant_sees_nothing(two_entities, finance):
    user = get_user_model().objects.get(username="fiona-ops")
    with correlation.bound(None):
        ledger.entity_access_set(user=user, entity_codes=[], actor="test")
    assert finance.get("/api/v1/journals").json()["results"] == []
    assert finance.get("/api/v1/events").json()["results"] == []


def test_admins_see_every_entity_whatever_their_grant(two_entities, admin_api):
    user = get_user_model().objects.get(username="ada-admin")
    with correlation.bound(None):
        ledger.entity_access_set(user=user, entity_codes=["US01"], actor="test")
    journals = admin_api.get("/api/v1/journals").json()["results"]
    assert {j["entity"] for j in journals} == {"US01", "EU01"}


def test_granting_an_unknown_entity_is_refused(finance):
    user = get_user_model().objects.get(username="fiona-ops")
    with pytest.raises(Exception) as caught, correlation.bound(None):
        ledger.entity_access_set(user=user, entity_codes=["XX99"], actor="test")
    assert getattr(caught.value, "code", None) == "unknown_entity"


def test_issue_token_scopes_a_user_to_the_named_entities(entity, capsys):
    call_command("issue_token", "olga-ops", "--role", "finance_ops", "--entity", "US01")
    user = get_user_model().objects.get(username="olga-ops")
    assert roles.entity_codes(user) == frozenset({"US01"})
