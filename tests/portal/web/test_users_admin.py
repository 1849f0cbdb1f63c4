"""The users admin: roles, entity access, profile, password, 2FA reset and unlock all go through audited
services; the list page shows what matters without a query per row; device secrets are never shown.
"""
import re

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEntry
from billing_sync import tokens
from config import correlation, roles
from ledger import services as ledger
from ledger.models import EntityAccess
from portal import admin as admin_users

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-staple"
User = get_user_model()


@pytest.fixture
def people(entity):
    with correlation.bound(None):
        ledger.entity_setup(code="GB01", currency="GBP", name="Tieout UK", actor="test")
        for role, username in {"finance_ops": "fiona-ops", "controller": "carl-controller",
                               "auditor": "aude-auditor", "admin": "ada-admin"}.items():
            tokens.token_issue(username=username, role=role, password=PASSWORD, actor="test")
    return User.objects.get(username="ada-admin")


@pytest.fixture
def admin_client(people):
    client = Client()
    client.force_login(people)
    return client


def change_url(user):
    return f"/admin/auth/user/{user.pk}/change/"


def form_data(user, **overrides):
    data = {"username": user.username, "first_name": user.first_name, "last_name": user.last_name,
            "email": user.email, "is_active": "on" if user.is_active else "", "roles": [], "entities": []}
    data.update(overrides)
    return {k: v for k, v in data.items() if v not in ("", None)}


def entries(action, username):
    return list(AuditEntry.objects.filter(action=action, object_id=username).order_by("id"))


def test_change_roles_and_entities_through_the_audited_services(admin_client):
    fiona = User.objects.get(username="fiona-ops")
    page = admin_client.get(change_url(fiona))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="roles"' in html and 'value="finance_ops"' in html and 'name="entities"' in html
    assert 'name="is_superuser"' not in html and 'name="groups"' not in html  # only through roles

    response = admin_client.post(change_url(fiona), form_data(fiona, roles=["controller", "auditor"],
                                                              entities=["GB01"], first_name="Fiona"))
    assert response.status_code == 302, response.content.decode()[:3000]
    fiona.refresh_from_db()
    assert set(fiona.groups.values_list("name", flat=True)) == {"controller", "auditor"}
    assert fiona.is_staff and not fiona.is_superuser and fiona.first_name == "Fiona"
    access = EntityAccess.objects.get(user=fiona)
    assert not access.all_entities and list(access.entities.values_list("code", flat=True)) == ["GB01"]
    assert roles.entity_codes(User.objects.get(pk=fiona.pk)) == frozenset({"GB01"})

    [role_entry] = entries("user.roles_set", "fiona-ops")
    assert role_entry.actor == "ada-admin"
    assert role_entry.before["roles"] == ["finance_ops"]
    assert role_entry.after["roles"] == ["auditor", "controller"]
    entity_entry = entries("user.entities_granted", "fiona-ops")[-1]
    assert entity_entry.actor == "ada-admin"
    assert entity_entry.before == {"all_entities": True, "entities": []}
    assert entity_entry.after == {"all_entities": False, "entities": ["GB01"]}
    [profile] = entries("user.profile_changed", "fiona-ops")
    assert profile.before == {"first_name": ""} and profile.after == {"first_name": "Fiona"}


def test_saving_unchanged_form_writes_no_audit_entries(admin_client):
    carl = User.objects.get(username="carl-controller")
    before = AuditEntry.objects.count()
    response = admin_client.post(change_url(carl), form_data(carl, roles=["controller"], all_entities="on"))
    assert response.status_code == 302
    assert AuditEntry.objects.count() == before


def test_granting_admin_makes_a_superuser_and_taking_every_staff_role_away_removes_staff(admin_client):
    carl = User.objects.get(username="carl-controller")
    admin_client.post(change_url(carl), form_data(carl, roles=["admin"], all_entities="on"))
    carl.refresh_from_db()
    assert carl.is_superuser and carl.is_staff
    admin_client.post(change_url(carl), form_data(carl, roles=["integration"], all_entities="on"))
    carl.refresh_from_db()
    assert not carl.is_superuser and not carl.is_staff
    assert list(carl.groups.values_list("name", flat=True)) == ["integration"]


def test_other_groups_survive_a_role_change(admin_client):
    carl = User.objects.get(username="carl-controller")
    carl.groups.add(Group.objects.create(name="month-end-team"))
    admin_client.post(change_url(carl), form_data(carl, roles=["finance_ops"], all_entities="on"))
    assert set(carl.groups.values_list("name", flat=True)) == {"finance_ops", "month-end-team"}


def test_an_admin_cannot_remove_their_own_admin_role_or_deactivate_themself(admin_client, people):
    response = admin_client.post(change_url(people), form_data(people, roles=["controller"], all_entities="on"),
                                 follow=True)
    assert "You cannot remove your own admin role." in response.content.decode()
    people.refresh_from_db()
    assert people.is_superuser and people.groups.filter(name="admin").exists()
    assert not entries("user.roles_set", "ada-admin")
    response = admin_client.post(change_url(people), form_data(people, roles=["admin"], all_entities="on",
                                                               is_active=""), follow=True)
    assert "You cannot deactivate yourself." in response.content.decode()
    people.refresh_from_db()
    assert people.is_active


def test_deactivating_a_user_is_audited_and_stops_their_sign_in(admin_client):
    fiona = User.objects.get(username="fiona-ops")
    response = admin_client.post(change_url(fiona), form_data(fiona, roles=["finance_ops"], all_entities="on",
                                                              is_active=""))
    assert response.status_code == 302
    [entry] = entries("user.profile_changed", "fiona-ops")
    assert entry.before == {"is_active": True} and entry.after == {"is_active": False}
    client = Client()
    refused = client.post("/accounts/login/", {"username": "fiona-ops", "password": PASSWORD})
    assert refused.status_code == 200 and "_auth_user_id" not in client.session


def test_adding_a_user_is_audited_and_grants_nothing(admin_client):
    response = admin_client.post("/admin/auth/user/add/", {"username": "nina-new", "password1": "a-long-enough-pass"})
    assert response.status_code == 302, response.content.decode()[:3000]
    nina = User.objects.get(username="nina-new")
    assert nina.check_password("a-long-enough-pass")
    assert not nina.is_staff and not nina.groups.exists()
    assert not EntityAccess.objects.filter(user=nina).exists()
    [entry] = entries("user.created", "nina-new")
    assert entry.actor == "ada-admin" and entry.after == {"username": "nina-new", "password_set": True}


def test_password_set_in_the_admin_is_audited(admin_client):
    fiona = User.objects.get(username="fiona-ops")
    before = len(entries("user.password_set", "fiona-ops"))
    response = admin_client.post(f"/admin/auth/user/{fiona.pk}/password/",
                                 {"password1": "another-long-password", "password2": "another-long-password"})
    assert response.status_code == 302
    fiona.refresh_from_db()
    assert fiona.check_password("another-long-password")
    after = entries("user.password_set", "fiona-ops")
    assert len(after) == before + 1 and after[-1].actor == "ada-admin"


def test_reset_two_factor_action(admin_client):
    carl = User.objects.get(username="carl-controller")
    TOTPDevice.objects.create(user=carl, name="phone", confirmed=True)
    response = admin_client.post("/admin/auth/user/", {"action": "reset_two_factor", "_selected_action": [carl.pk]})
    assert response.status_code == 302
    assert not TOTPDevice.objects.filter(user=carl).exists()
    [entry] = entries("user.2fa_reset", "carl-controller")
    assert entry.actor == "ada-admin"


def test_unlock_action_lifts_a_lockout(admin_client):
    client = Client()
    for _ in range(5):
        client.post("/accounts/login/", {"username": "fiona-ops", "password": "wrong-password"})
    assert client.post("/accounts/login/", {"username": "fiona-ops", "password": PASSWORD}).status_code == 429
    fiona = User.objects.get(username="fiona-ops")
    response = admin_client.post("/admin/auth/user/", {"action": "unlock_sign_in", "_selected_action": [fiona.pk]})
    assert response.status_code == 302
    assert not AccessAttempt.objects.filter(username="fiona-ops").exists()
    assert entries("user.sign_in_unlocked", "fiona-ops")[0].actor == "ada-admin"
    assert client.post("/accounts/login/", {"username": "fiona-ops", "password": PASSWORD}).status_code == 302


def test_list_page_shows_roles_entities_and_2fa_without_a_query_per_row(admin_client, entity):
    carl = User.objects.get(username="carl-controller")
    TOTPDevice.objects.create(user=carl, name="phone", confirmed=True)
    ledger.entity_access_set(user=User.objects.get(username="fiona-ops"), entity_codes=["GB01", "US01"], actor="test")
    assert admin_users.TieoutUserAdmin.show_full_result_count is False
    with CaptureQueriesContext(connection) as few:
        response = admin_client.get("/admin/auth/user/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "GB01, US01" in html and "all (admin)" in html
    row = re.search(r"carl-controller.*?</tr>", html, re.S).group(0)
    assert "controller" in row and 'alt="True"' in row  # 2FA active
    for n in range(10):
        tokens.token_issue(username=f"extra-{n}", role="finance_ops", actor="test", entities=["US01"])
    with CaptureQueriesContext(connection) as many:
        admin_client.get("/admin/auth/user/")
    assert len(many.captured_queries) == len(few.captured_queries)
    counts = [q["sql"] for q in many.captured_queries if "COUNT(" in q["sql"].upper()]
    assert len(counts) <= 1  # the paginator's, never a second full-table count


def test_users_admin_is_closed_to_other_roles(people):
    for username in ("aude-auditor", "carl-controller", "fiona-ops"):
        client = Client()
        client.force_login(User.objects.get(username=username))
        assert client.get("/admin/auth/user/").status_code == 403
        fiona = User.objects.get(username="fiona-ops")
        assert client.post(change_url(fiona), form_data(fiona, roles=["admin"], all_entities="on")).status_code == 403
    assert not User.objects.get(username="fiona-ops").is_superuser


def test_device_admin_never_shows_the_secret_and_is_read_only(admin_client):
    carl = User.objects.get(username="carl-controller")
    device = TOTPDevice.objects.create(user=carl, name="phone", confirmed=True)
    listing = admin_client.get("/admin/otp_totp/totpdevice/")
    assert listing.status_code == 200 and "carl-controller" in listing.content.decode()
    detail = admin_client.get(f"/admin/otp_totp/totpdevice/{device.pk}/change/")
    assert detail.status_code == 200
    html = detail.content.decode()
    assert device.key not in html and "qrcode" not in html.lower()
    assert admin_client.get("/admin/otp_totp/totpdevice/add/").status_code == 403
    assert admin_client.post(f"/admin/otp_totp/totpdevice/{device.pk}/change/", {"name": "mine"}).status_code == 403
    assert admin_client.get(f"/admin/otp_totp/totpdevice/{device.pk}/config/").status_code in (302, 404)
