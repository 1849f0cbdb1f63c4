"""Browser fixtures: Playwright driving Debian's Chromium (/usr/bin/chromium, never a downloaded
browser) against pytest-django's live server, with a screenshot of every page a test names.

Playwright's sync API runs an event loop in the test's thread, which Django's async-safety check takes
for async code; the ORM calls the tests make between browser steps are ordinary synchronous calls, so the
check is relaxed for these tests only (DJANGO_ALLOW_ASYNC_UNSAFE).

Screenshots go to `artifacts/screenshots/` (kept by CI as test artefacts): `shot(page, "name")`.
"""
import os
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.contrib.auth import get_user_model
from django.test import Client
from playwright.sync_api import sync_playwright

from billing_sync import tokens
from config import correlation

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = os.environ.get("TIEOUT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts" / "screenshots"
PASSWORD = "correct-horse-battery-staple"
# Flags for a closed network: no background connections, no first-run UI, no sandbox as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser, live_server):
    """A factory of pages, each in its own browser context (its own cookies): one per user in a test."""
    contexts = []

    def make(*, width: int = 1280, height: int = 900):
        context = browser.new_context(base_url=live_server.url, viewport={"width": width, "height": height})
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page):
    return new_page()


def shot(page, name: str) -> Path:
    """Save a full-page screenshot as a test artefact and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def assert_accessible(page, where: str = ""):
    """axe-core (bundled with axe-playwright-python) finds no violation on the page as it is now."""
    results = Axe().run(page)
    assert results.violations_count == 0, f"{where}\n{results.generate_report()}"


def client_for(username: str, **kwargs):
    """A Django test client signed in as `username` (no password, no second factor: server-side pages only)."""
    client = Client(**kwargs)
    client.force_login(get_user_model().objects.get(username=username))
    return client


def login(page, username: str, password: str = PASSWORD, *, next_path: str = "/"):
    page.goto(f"/accounts/login/?next={next_path}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    return page


@pytest.fixture
def web_users(transactional_db, entity):
    """One user per staff role, each with the shared test password: {'role': username}."""
    users = {"finance_ops": "fiona-ops", "controller": "carl-controller", "controller2": "cora-controller",
             "auditor": "aude-auditor", "admin": "ada-admin"}
    with correlation.bound(None):
        for key, username in users.items():
            role = "controller" if key == "controller2" else key
            tokens.token_issue(username=username, role=role, password=PASSWORD, actor="test")
    return users
