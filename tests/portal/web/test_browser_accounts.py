"""Sign-in in a real browser (system Chromium): lockout, TOTP enrolment and sign-in with a code, keyboard
use, narrow screens and an axe-core accessibility check of every sign-in page.
"""
import time
from base64 import b32decode
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect
from django_otp.oath import TOTP

from tests.portal.web.conftest import PASSWORD, assert_accessible, login, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def code_from_secret(secret: str, *, ahead: int = 0) -> str:
    """What an authenticator app shows for this base32 secret now (or `ahead` 30-second steps later)."""
    totp = TOTP(b32decode(secret))
    totp.time = time.time() + ahead * 30
    return f"{totp.token():06d}"


def path_of(page) -> str:
    return urlsplit(page.url).path


def wait_for_path(page, path: str):
    page.wait_for_url(lambda url: urlsplit(url).path == path)



def test_lockout_after_repeated_bad_passwords(page, web_users):
    page.goto("/accounts/login/")
    assert_accessible(page)
    shot(page, "login")
    for attempt in range(4):
        login(page, "fiona-ops", "not-my-password")
        expect(page.get_by_role("alert").filter(has_text="The username or password is not correct")).to_be_visible()
    login(page, "fiona-ops", "not-my-password")
    expect(page.get_by_role("heading", name="Sign-in locked")).to_be_visible()
    expect(page.locator("main")).to_contain_text("15 minutes")
    assert_accessible(page)
    shot(page, "locked-out")
    # Even the right password is refused while the lock holds.
    login(page, "fiona-ops", PASSWORD)
    expect(page.get_by_role("heading", name="Sign-in locked")).to_be_visible()
    page.goto("/accounts/security/")
    wait_for_path(page, "/accounts/login/")


def test_controller_enrols_a_second_factor_then_signs_in_with_a_code(page, web_users, settings):
    settings.TIEOUT_2FA = True
    login(page, "carl-controller", next_path="/")
    wait_for_path(page, "/accounts/2fa/setup/")
    expect(page.get_by_role("heading", name="Set up two-factor authentication")).to_be_visible()
    expect(page.locator("figure.qr svg")).to_be_visible()
    secret = page.locator("#totp-secret").inner_text().strip()
    assert len(secret) == 32
    assert_accessible(page)
    shot(page, "2fa-setup")

    # Until a code is given, nothing else opens.
    page.goto("/accounts/security/")
    page.wait_for_url("**/accounts/2fa/setup/?next=%2Faccounts%2Fsecurity%2F")
    page.goto("/accounts/2fa/setup/?next=/")

    page.get_by_label("Authentication code").fill("000000" if code_from_secret(secret) != "000000" else "111111")
    with page.expect_navigation():
        page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("alert").filter(has_text="That code is not correct")).to_be_visible()
    assert page.locator("#totp-secret").inner_text().strip() == secret  # the same secret: still valid
    settings.OTP_TOTP_THROTTLE_FACTOR = 0  # let the right code straight after the wrong one

    page.get_by_label("Authentication code").fill(code_from_secret(secret))
    with page.expect_navigation():
        page.get_by_role("button", name="Confirm").click()
    assert path_of(page) == "/"  # the dashboard, as asked for at sign-in
    page.goto("/accounts/security/")
    assert path_of(page) == "/accounts/security/"
    expect(page.locator("#twofa-status")).to_have_text("Active")
    expect(page.locator("main")).to_contain_text("verified with a code")
    assert_accessible(page)

    # Sign out (POST from the confirm page), then sign in again: this time the code is asked for.
    page.goto("/accounts/logout/")
    with page.expect_navigation():
        page.locator("main").get_by_role("button", name="Sign out").click()
    assert path_of(page) == "/accounts/login/"
    expect(page.locator("main")).to_contain_text("You have signed out.")
    page.goto("/accounts/security/")
    assert path_of(page) == "/accounts/login/"

    login(page, "carl-controller", next_path="/accounts/security/")
    wait_for_path(page, "/accounts/2fa/")
    expect(page.get_by_role("heading", name="Enter your authentication code")).to_be_visible()
    assert_accessible(page)
    shot(page, "2fa-verify")
    # The code used to enrol is spent; the app's next code is fresh (within the allowed clock drift).
    page.get_by_label("Authentication code").fill(code_from_secret(secret, ahead=1))
    with page.expect_navigation():
        page.get_by_role("button", name="Verify").click()
    assert path_of(page) == "/accounts/security/"
    expect(page.locator("#twofa-status")).to_have_text("Active")


def test_sign_in_with_the_keyboard_alone_on_a_narrow_screen(new_page, web_users):
    page = new_page(width=375, height=740)
    page.goto("/accounts/login/?next=/accounts/security/")
    # The page fits: no sideways scrolling on a phone.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # The cursor starts in the username field; Tab moves through password to the button.
    assert page.evaluate("document.activeElement.name") == "username"
    page.keyboard.type("fiona-ops")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.name") == "password"
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Sign in"
    with page.expect_navigation():
        page.keyboard.press("Enter")
    wait_for_path(page, "/accounts/security/")
    expect(page.get_by_role("heading", name="Sign-in security")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert_accessible(page)
