"""Ledger reads the portal's pages use: entities as a person may see them, entity access, currencies,
postable accounts, a manual journal inside the reader's entities."""
import datetime

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction

from config import correlation
from exceptions_queue import services as queue
from ledger import selectors
from ledger import services as ledger
from tests import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_entities(entity):
    with correlation.bound(None), transaction.atomic():
        ledger.entity_setup(code="GB01", currency="GBP", name="Tieout UK", actor="test")


def _user(username: str):
    return get_user_model().objects.get(username=username)  # fresh: config.roles caches the scope per object


def _grant(username: str, codes):
    with correlation.bound(None):
        ledger.entity_access_set(user=_user(username), entity_codes=codes, actor="test")


def test_entities_are_scoped_to_the_grant_and_ordered_by_code(two_entities, finance, admin_api):
    assert selectors.entity_codes_for(_user("fiona-ops")) == ["GB01", "US01"]  # granted every entity
    assert [e.code for e in selectors.entities_for(_user("fiona-ops"))] == ["GB01", "US01"]
    _grant("fiona-ops", ["US01"])
    assert selectors.entity_codes_for(_user("fiona-ops")) == ["US01"]
    assert [e.code for e in selectors.entities_for(_user("fiona-ops"))] == ["US01"]
    _grant("fiona-ops", [])
    assert selectors.entity_codes_for(_user("fiona-ops")) == []
    assert selectors.entity_codes_for(_user("ada-admin")) == ["GB01", "US01"]  # admins see every entity


def test_entity_access_of_is_the_users_grant(two_entities, finance):
    access = selectors.entity_access_of(_user("fiona-ops"))
    assert access.all_entities and not access.entities.exists()
    _grant("fiona-ops", ["GB01"])
    access = selectors.entity_access_of(_user("fiona-ops"))
    assert not access.all_entities and list(access.entities.values_list("code", flat=True)) == ["GB01"]
    nobody = get_user_model().objects.create(username="never-granted")
    assert selectors.entity_access_of(nobody) is None


def test_entity_currencies(two_entities):
    assert selectors.entity_currencies() == {"US01": "USD", "GB01": "GBP"}


def test_accounts_active_leaves_out_retired_accounts(entity):
    codes = [a.code for a in selectors.accounts_active(entity)]
    assert "6100" in codes and codes == sorted(codes)
    ledger.account_update(entity=entity, account_code="6100", name="Fees (retired)", is_active=False,
                          erp_account="", actor="test")
    assert "6100" not in [a.code for a in selectors.accounts_active(entity)]


def test_manual_journal_for_finds_manual_journals_of_the_readers_entities(two_entities, integration, finance,
                                                                         django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        manual = queue.manual_journal_create(
            entity=selectors.entity_for_code("US01"), accounting_date=datetime.date(2026, 11, 30),
            lines=[("6100", "250.00", "", ""), ("2300", "", "250.00", "")], description="accrual",
            user=_user("fiona-ops"))
    integration.send(f.customer("cus_sel"))
    integration.send(f.invoice("inv_sel", customer_id="cus_sel"))
    booked = selectors.journals().get(document_id="inv_sel")
    found = selectors.manual_journal_for(_user("fiona-ops"), manual.pk)
    assert found == manual and found.entity.code == "US01"
    assert selectors.manual_journal_for(_user("fiona-ops"), booked.pk) is None  # not a manual journal
    _grant("fiona-ops", ["GB01"])
    assert selectors.manual_journal_for(_user("fiona-ops"), manual.pk) is None  # another entity's
