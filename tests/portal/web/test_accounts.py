"""Sign-in, sign-out, lockout, two-factor authentication and session expiry, through Django's test client.

Every test signs in through the real login form (django-axes needs the request, so `client.login` is not
used), against the real PostgreSQL, and checks the outcome: where the browser is sent, what the session
holds, which rows and audit entries exist.
"""
import re
import threading
import time
from base64 import b32decode
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client
from django.utils import timezone
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEntry
from billing_sync import tokens
from config import correlation
from portal import auth_services

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-staple"
USERS = {"finance_ops": "fiona-ops", "controller": "carl-controller", "auditor": "aude-auditor",
         "admin": "ada-admin"}


@pytest.fixture
def staff(entity):
    with correlation.bound(None):
        for role, username in USERS.items():
            tokens.token_issue(username=username, role=role, password=PASSWORD, actor="test")
    return USERS


@pytest.fixture
def two_factor_on(settings):
    settings.TIEOUT_2FA = True
    return settings


def sign_in(client, username, password=PASSWORD, next_path="/accounts/security/"):
    return client.post(f"/accounts/login/?next={next_path}", {"username": username, "password": password,
                                                               "next": next_path})


def code_for(device, *, ahead: int = 0) -> str:
    """The code an authenticator shows now (or `ahead` steps later: a fresh code after one was spent)."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + ahead * device.step
    return f"{totp.token():0{device.digits}d}"


def confirmed_device(username) -> TOTPDevice:
    user = get_user_model().objects.get(username=username)
    return TOTPDevice.objects.create(user=user, name="phone", confirmed=True)


def entries(action, username):
    return list(AuditEntry.objects.filter(action=action, object_type="user", object_id=username).order_by("id"))


def session_user(client):
    return client.session.get("_auth_user_id")


# Login form and redirects ------------------------------------------------------------------------------
def test_login_form_has_labelled_fields_csrf_and_a_sign_in_button(client):
    html = client.get("/accounts/login/").content.decode()
    assert re.search(r'<label for="id_username">Username</label>', html)
    assert re.search(r'<label for="id_password">Password</label>', html)
    assert 'name="username"' in html and 'type="password"' in html and 'name="password"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert re.search(r'<button type="submit"[^>]*>Sign in</button>', html)


def test_bad_password_is_refused_with_a_clear_message_and_audited(client, staff):
    response = sign_in(client, "fiona-ops", "not-the-password")
    assert response.status_code == 200
    assert "The username or password is not correct" in response.content.decode()
    assert session_user(client) is None
    [entry] = entries("user.sign_in_failed", "fiona-ops")
    assert entry.actor == "anonymous"
    assert entry.after["locked_out"] is False and entry.after["ip"] == "127.0.0.1"


def test_correct_password_signs_in_goes_to_next_and_is_audited(client, staff):
    response = sign_in(client, "fiona-ops")
    assert response.status_code == 302 and response["Location"] == "/accounts/security/"
    assert session_user(client) is not None
    [entry] = entries("user.signed_in", "fiona-ops")
    assert entry.actor == "fiona-ops"
    assert client.get("/accounts/security/").status_code == 200


@pytest.mark.parametrize("evil", ["https://evil.example/steal", "//evil.example/steal", "http:/evil.example"])
def test_next_pointing_off_site_is_ignored(client, staff, evil):
    response = client.post("/accounts/login/", {"username": "fiona-ops", "password": PASSWORD, "next": evil})
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_admin_login_page_sends_people_to_the_one_login_page(client, staff):
    response = client.get("/admin/login/?next=/admin/ledger/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=%2Fadmin%2Fledger%2F"
    assert client.get("/admin/login/?next=https://evil.example/")["Location"] == "/accounts/login/?next=%2Fadmin%2F"
    # The admin index itself, signed out, ends up at our login page too.
    first = client.get("/admin/")
    assert first.status_code == 302 and first["Location"].startswith("/admin/login/")
    assert client.get(first["Location"])["Location"].startswith("/accounts/login/")


def test_admin_may_use_the_admin_after_signing_in_here(client, staff):
    response = client.post("/accounts/login/", {"username": "ada-admin", "password": PASSWORD, "next": "/admin/"})
    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


# Lockout -----------------------------------------------------------------------------------------------
def test_five_bad_passwords_lock_the_username_even_against_the_right_password(client, staff, settings):
    assert settings.AXES_FAILURE_LIMIT == 5
    for _ in range(4):
        assert sign_in(client, "fiona-ops", "wrong-password").status_code == 200
    fifth = sign_in(client, "fiona-ops", "wrong-password")
    assert fifth.status_code == 429
    right = sign_in(client, "fiona-ops")
    assert right.status_code == 429
    html = right.content.decode()
    assert "Sign-in locked" in html and "fiona-ops" in html and "15 minutes" in html
    assert int(right["Retry-After"]) == 15 * 60
    assert session_user(client) is None
    failures = entries("user.sign_in_failed", "fiona-ops")
    assert len(failures) == 6
    assert failures[-1].after["locked_out"] is True
    assert not entries("user.signed_in", "fiona-ops")
    # The lock is per username: another user behind the same address signs in.
    other = Client()
    assert sign_in(other, "aude-auditor").status_code == 302


def test_lockout_ends_after_the_cool_off(client, staff):
    for _ in range(5):
        sign_in(client, "fiona-ops", "wrong-password")
    assert sign_in(client, "fiona-ops").status_code == 429
    AccessAttempt.objects.filter(username="fiona-ops").update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert sign_in(client, "fiona-ops").status_code == 302


def test_an_admin_unlock_lifts_the_lock_and_is_audited(client, staff):
    for _ in range(5):
        sign_in(client, "fiona-ops", "wrong-password")
    admin = get_user_model().objects.get(username="ada-admin")
    cleared = auth_services.user_sign_in_unlock(user=get_user_model().objects.get(username="fiona-ops"),
                                                actor=admin)
    assert cleared == 1
    [entry] = entries("user.sign_in_unlocked", "fiona-ops")
    assert entry.actor == "ada-admin" and entry.after == {"attempts_cleared": 1}
    assert sign_in(client, "fiona-ops").status_code == 302


# Two-factor authentication -----------------------------------------------------------------------------
def test_controller_must_pass_the_second_factor(client, staff, two_factor_on):
    response = sign_in(client, "carl-controller", next_path="/approvals/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/2fa/?next=%2Fapprovals%2F"
    # Half signed in: no device yet, so the 2FA step sends them to enrol.
    step = client.get(response["Location"])
    assert step.status_code == 302 and step["Location"] == "/accounts/2fa/setup/?next=%2Fapprovals%2F"
    # Every other page and the admin redirect to the 2FA step, keeping where they wanted to go.
    blocked = client.get("/accounts/security/?tab=a&b=c")
    assert blocked.status_code == 302
    assert blocked["Location"] == "/accounts/2fa/?next=%2Faccounts%2Fsecurity%2F%3Ftab%3Da%26b%3Dc"
    assert client.get("/admin/")["Location"].startswith("/accounts/2fa/")


def test_admin_must_pass_the_second_factor(client, staff, two_factor_on):
    response = sign_in(client, "ada-admin", next_path="/admin/")
    assert response["Location"] == "/accounts/2fa/?next=%2Fadmin%2F"


def test_api_call_with_an_unverified_session_is_refused_with_a_stable_code(client, staff, two_factor_on):
    sign_in(client, "carl-controller")
    response = client.get("/api/v1/exceptions")
    assert response.status_code == 403
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "two_factor_required"


def test_finance_ops_is_not_asked_for_a_second_factor(client, staff, two_factor_on):
    response = sign_in(client, "fiona-ops")
    assert response["Location"] == "/accounts/security/"
    page = client.get("/accounts/security/")
    assert page.status_code == 200
    assert "Not set up" in page.content.decode() and "optional" in page.content.decode()
    assert client.get("/api/v1/exceptions").status_code == 200


def test_without_tieout_2fa_controllers_sign_in_with_the_password(client, staff, settings):
    settings.TIEOUT_2FA = False
    assert sign_in(client, "carl-controller")["Location"] == "/accounts/security/"
    assert client.get("/api/v1/exceptions").status_code == 200


def test_enrolment_with_a_real_code(client, staff, two_factor_on, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0  # the wrong code below must not delay the right one
    sign_in(client, "carl-controller", next_path="/accounts/security/")
    page = client.get("/accounts/2fa/setup/?next=/accounts/security/")
    assert page.status_code == 200
    html = page.content.decode()
    assert page["Cache-Control"].count("no-store") == 1  # the secret must not sit in a cache
    secret = re.search(r'id="totp-secret"[^>]*>([A-Z2-7]+)<', html).group(1)
    assert "<svg" in html and re.search(r'<label for="id_otp_token">Authentication code</label>', html)
    assert re.search(r'<button type="submit"[^>]*>Confirm</button>', html)
    device = TOTPDevice.objects.get(user__username="carl-controller")
    assert not device.confirmed and b32decode(secret) == device.bin_key
    # A reload shows the same secret (the QR code already scanned stays valid).
    client.get("/accounts/2fa/setup/")
    assert TOTPDevice.objects.filter(user__username="carl-controller").count() == 1

    wrong = client.post("/accounts/2fa/setup/", {"otp_token": "000000" if code_for(device) != "000000" else "111111",
                                                 "next": "/accounts/security/"})
    assert wrong.status_code == 200
    assert "That code is not correct" in wrong.content.decode()
    device.refresh_from_db()
    assert not device.confirmed
    assert entries("user.2fa_enrolment_failed", "carl-controller")

    right = client.post("/accounts/2fa/setup/", {"otp_token": code_for(device), "next": "/accounts/security/"})
    assert right.status_code == 302 and right["Location"] == "/accounts/security/"
    device.refresh_from_db()
    assert device.confirmed
    [enrolled] = entries("user.2fa_enrolled", "carl-controller")
    assert enrolled.actor == "carl-controller"
    security = client.get("/accounts/security/")
    assert security.status_code == 200
    assert "Active" in security.content.decode() and "verified with a code" in security.content.decode()
    assert client.get("/api/v1/exceptions").status_code == 200
    # Set up once: the setup page now only points to the security page.
    assert client.get("/accounts/2fa/setup/")["Location"] == "/accounts/security/"


def test_verification_with_a_real_code_and_a_spent_code_is_refused(client, staff, two_factor_on, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    device = confirmed_device("carl-controller")
    response = sign_in(client, "carl-controller", next_path="/accounts/security/")
    step = client.get(response["Location"])
    html = step.content.decode()
    assert step.status_code == 200
    assert re.search(r'<label for="id_otp_token">Authentication code</label>', html)
    assert re.search(r'<button type="submit"[^>]*>Verify</button>', html)

    wrong = client.post("/accounts/2fa/", {"otp_token": "12345", "next": "/accounts/security/"})
    assert wrong.status_code == 400  # not six digits
    code = code_for(device)
    bad = "000000" if code != "000000" else "111111"
    refused = client.post("/accounts/2fa/", {"otp_token": bad, "next": "/accounts/security/"})
    assert refused.status_code == 200 and "That code is not correct" in refused.content.decode()
    assert client.get("/accounts/security/").status_code == 302
    [failed] = entries("user.2fa_failed", "carl-controller")
    assert failed.after["failures"] == 1

    session_before = client.session.session_key
    ok = client.post("/accounts/2fa/", {"otp_token": code, "next": "/accounts/security/"})
    assert ok.status_code == 302 and ok["Location"] == "/accounts/security/"
    assert client.session.session_key != session_before  # a new session key for the stronger session
    assert client.get("/accounts/security/").status_code == 200
    assert entries("user.2fa_verified", "carl-controller")

    # A code is spent once: the same code in another session is refused, the next one is accepted.
    other = Client()
    sign_in(other, "carl-controller")
    assert "That code is not correct" in other.post("/accounts/2fa/", {"otp_token": code}).content.decode()
    assert other.post("/accounts/2fa/", {"otp_token": code_for(device, ahead=1)}).status_code == 302


def test_wrong_codes_are_throttled(client, staff, two_factor_on):
    device = confirmed_device("carl-controller")
    sign_in(client, "carl-controller")
    client.post("/accounts/2fa/", {"otp_token": "000000" if code_for(device) != "000000" else "111111"})
    # Straight after a wrong code even the right one waits (django-otp's exponential back-off).
    throttled = client.post("/accounts/2fa/", {"otp_token": code_for(device)})
    assert throttled.status_code == 429
    assert "Too many wrong codes" in throttled.content.decode()
    assert client.get("/accounts/security/").status_code == 302
    device.refresh_from_db()
    device.throttling_failure_timestamp = timezone.now() - timedelta(seconds=5)
    device.save(update_fields=["throttling_failure_timestamp"])
    assert client.post("/accounts/2fa/", {"otp_token": code_for(device)}).status_code == 302


def test_password_alone_cannot_replace_an_enrolled_device(client, staff, two_factor_on):
    confirmed_device("carl-controller")
    sign_in(client, "carl-controller")
    response = client.get("/accounts/2fa/setup/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/2fa/?")
    assert client.post("/accounts/2fa/setup/", {"otp_token": "123456"}).status_code == 302
    assert TOTPDevice.objects.filter(user__username="carl-controller").count() == 1


def test_voluntary_enrolment_makes_finance_ops_give_the_code_too(client, staff, two_factor_on, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    sign_in(client, "fiona-ops")
    assert client.get("/accounts/security/").status_code == 200
    client.get("/accounts/2fa/setup/")
    device = TOTPDevice.objects.get(user__username="fiona-ops")
    assert client.post("/accounts/2fa/setup/", {"otp_token": code_for(device)}).status_code == 302
    client.post("/accounts/logout/")
    response = sign_in(client, "fiona-ops")
    assert response["Location"].startswith("/accounts/2fa/?")
    assert client.get("/accounts/security/").status_code == 302


def test_an_admin_reset_sends_the_user_back_to_enrolment(client, staff, two_factor_on, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    device = confirmed_device("carl-controller")
    sign_in(client, "carl-controller")
    client.post("/accounts/2fa/", {"otp_token": code_for(device)})
    assert client.get("/accounts/security/").status_code == 200
    User = get_user_model()
    assert auth_services.user_2fa_reset(user=User.objects.get(username="carl-controller"),
                                        actor=User.objects.get(username="ada-admin")) == 1
    [entry] = entries("user.2fa_reset", "carl-controller")
    assert entry.actor == "ada-admin" and entry.before == {"devices": 1, "confirmed": 1}
    # The session verified by the removed device is verified no longer.
    assert client.get("/accounts/security/")["Location"].startswith("/accounts/2fa/")
    assert client.get("/accounts/2fa/")["Location"].startswith("/accounts/2fa/setup/")


# Sign out and sessions ---------------------------------------------------------------------------------
def test_sign_out_needs_a_post_with_csrf(staff):
    client = Client(enforce_csrf_checks=True)
    page = client.get("/accounts/login/")
    token = page.cookies["csrftoken"].value
    client.post("/accounts/login/", {"username": "fiona-ops", "password": PASSWORD, "csrfmiddlewaretoken": token})
    assert session_user(client) is not None
    confirm = client.get("/accounts/logout/")
    assert confirm.status_code == 200
    assert re.search(r'<button type="submit"[^>]*>Sign out</button>', confirm.content.decode())
    assert session_user(client) is not None  # a GET (a link, an image) never signs anyone out
    assert client.post("/accounts/logout/").status_code == 403  # no CSRF token
    assert session_user(client) is not None
    token = client.cookies["csrftoken"].value
    done = client.post("/accounts/logout/", {"csrfmiddlewaretoken": token})
    assert done.status_code == 302 and done["Location"] == "/accounts/login/"
    assert session_user(client) is None
    [entry] = entries("user.signed_out", "fiona-ops")
    assert entry.actor == "fiona-ops"


def test_login_form_refuses_a_post_without_csrf(staff):
    client = Client(enforce_csrf_checks=True)
    assert client.post("/accounts/login/", {"username": "fiona-ops", "password": PASSWORD}).status_code == 403


def test_an_expired_session_is_sent_back_to_sign_in(client, staff):
    sign_in(client, "fiona-ops")
    response = client.get("/accounts/security/")
    assert response.status_code == 200
    cookie = response.cookies["sessionid"]
    assert cookie["max-age"] == "" and cookie["expires"] == ""  # ends with the browser too
    # Idle for longer than SESSION_COOKIE_AGE: the server-side expiry has passed.
    Session.objects.filter(session_key=client.session.session_key).update(
        expire_date=timezone.now() - timedelta(seconds=1))
    response = client.get("/accounts/security/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/accounts/security/"


def test_activity_slides_the_session_expiry(client, staff, settings):
    sign_in(client, "fiona-ops")
    key = client.session.session_key
    Session.objects.filter(session_key=key).update(expire_date=timezone.now() + timedelta(minutes=1))
    client.get("/accounts/security/")
    expiry = Session.objects.get(session_key=client.session.session_key).expire_date
    assert expiry > timezone.now() + timedelta(seconds=settings.SESSION_COOKIE_AGE - 60)


def test_security_page_is_read_only_and_needs_sign_in(client, staff):
    assert client.get("/accounts/security/")["Location"] == "/accounts/login/?next=/accounts/security/"
    sign_in(client, "aude-auditor")
    assert client.get("/accounts/security/").status_code == 200
    assert client.post("/accounts/security/").status_code == 403


def test_two_factor_pages_need_the_password_step_first(client, staff):
    for path in ("/accounts/2fa/", "/accounts/2fa/setup/"):
        assert client.get(path)["Location"].startswith("/accounts/login/?next=")
        assert client.post(path, {"otp_token": "123456"})["Location"].startswith("/accounts/login/?next=")
    assert not TOTPDevice.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_one_code_sent_twice_at_once_signs_in_only_once(staff):
    """Two tabs (or an attacker racing the owner) submit the same code together: the device row is locked,
    so exactly one verification spends it."""
    device = confirmed_device("carl-controller")
    code = code_for(device)
    user = get_user_model().objects.get(username="carl-controller")
    barrier = threading.Barrier(2)
    results = []

    def verify():
        try:
            barrier.wait()
            results.append(auth_services.user_2fa_verify(user=user, token=code).ok)
        finally:
            connection.close()

    threads = [threading.Thread(target=verify) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, True]
    assert len(entries("user.2fa_verified", "carl-controller")) == 1
