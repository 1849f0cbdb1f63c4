"""Admin paths for ledger configuration go through the services: changes are audited."""
import pytest
from django.contrib.auth import get_user_model

from audit.models import AuditEntry
from ledger.models import Account, AccountMapping, Period

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, entity, admin_api):
    client.force_login(get_user_model().objects.get(username="ada-admin"))
    return client


def test_changing_the_erp_connection_in_the_admin_is_audited(admin_client, entity):
    response = admin_client.post(f"/admin/ledger/entity/{entity.pk}/change/", {
        "name": "Tieout US Inc.", "erp_connector": "erpnext", "posting_mode": "single",
        "erp_settings": '{"url": "http://127.0.0.1:9", "company": "Tieout US", "token_env": "ERP_TOKEN"}',
    })
    assert response.status_code == 302, response.content[:2000]
    entity.refresh_from_db()
    assert entity.erp_connector == "erpnext"
    assert entity.name == "Tieout US Inc."
    actions = set(AuditEntry.objects.filter(object_type="entity", object_id="US01").values_list("action", flat=True))
    assert {"entity.erp_configured", "entity.renamed"} <= actions


def test_a_secret_in_the_settings_is_refused(admin_client, entity):
    response = admin_client.post(f"/admin/ledger/entity/{entity.pk}/change/", {
        "name": "Tieout US", "erp_connector": "erpnext", "posting_mode": "single",
        "erp_settings": '{"url": "http://127.0.0.1:9", "api_secret": "hunter2"}'})
    assert response.status_code == 200
    assert b"looks like a secret" in response.content
    entity.refresh_from_db()
    assert entity.erp_connector == "builtin"


def test_test_connection_action_reports_the_outcome(admin_client, entity):
    response = admin_client.post("/admin/ledger/entity/", {"action": "test_connection",
                                                           "_selected_action": [entity.pk]}, follow=True)
    assert b"built-in ledger: always available" in response.content


def test_mapping_an_erp_account_name_in_the_admin_is_audited(admin_client, entity):
    account = Account.objects.get(entity=entity, code="1200")
    response = admin_client.post(f"/admin/ledger/account/{account.pk}/change/", {
        "name": "Accounts receivable", "is_active": "on", "erp_account": "Debtors - TUS"})
    assert response.status_code == 302, response.content[:2000]
    account.refresh_from_db()
    assert account.erp_account == "Debtors - TUS"
    entry = AuditEntry.objects.get(action="account.changed", object_id="US01:1200")
    assert entry.before["erp_account"] == "" and entry.after["erp_account"] == "Debtors - TUS"


def test_remapping_a_posting_rule_role_in_the_admin_is_audited(admin_client, entity):
    new = Account.objects.create(entity=entity, code="4100", name="Subscription revenue", type="income")
    mapping = AccountMapping.objects.get(entity=entity, role="revenue")
    response = admin_client.post(f"/admin/ledger/accountmapping/{mapping.pk}/change/", {"account": new.pk})
    assert response.status_code == 302, response.content[:2000]
    mapping.refresh_from_db()
    assert mapping.account == new
    assert AuditEntry.objects.filter(action="account_mapping.changed", object_id="US01:revenue").exists()


def test_periods_are_read_only_in_the_admin(admin_client, entity):
    """Closing skips no check and no approval: the admin may read periods, never add, change or delete one."""
    period = Period.objects.create(entity=entity, year=2026, month=10)
    assert admin_client.get("/admin/ledger/period/").status_code == 200
    assert admin_client.get("/admin/ledger/period/add/").status_code == 403
    assert admin_client.post("/admin/ledger/period/add/", {"entity": entity.pk, "year": 2026, "month": 9,
                                                          "status": "closed"}).status_code == 403
    assert not Period.objects.filter(month=9).exists()
    page = admin_client.get(f"/admin/ledger/period/{period.pk}/change/")
    assert page.status_code == 200 and b'name="status"' not in page.content  # view only
