"""Shared fixtures: an entity, users of every role with API clients, an API helper that runs the
after-commit work (processing, posting) the way a committed request would, with Celery eager, and the
ERP stand-ins (tests/standins) started in this process on free ports.
"""
import json

import pytest
from django.db import transaction
from rest_framework.test import APIClient

from billing_sync import tokens
from config import correlation
from exceptions_queue import services as queue
from ledger import services as ledger
from tests.standins.erpnext import ErpNextStandin

# The environment variable holding the ERPNext stand-in's "api_key:api_secret" (set for the test only).
ERPNEXT_TOKEN_ENV = "TEST_ERPNEXT_TOKEN"


class Api:
    """A DRF test client bound to one user's token; on-commit callbacks (eager tasks) run on every call."""

    def __init__(self, token: str, capture):
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        self.capture = capture
        self.token = token

    def _call(self, method, path, body=None, **headers):
        kwargs = {}
        if body is not None:
            kwargs = {"data": body if isinstance(body, (bytes, str)) else json.dumps(body),
                      "content_type": "application/json"}
        with self.capture(execute=True):
            return getattr(self.client, method)(path, **kwargs, **headers)

    def post(self, path, body=None, **headers):
        return self._call("post", path, body if body is not None else {}, **headers)

    def get(self, path, **params):
        with self.capture(execute=True):
            return self.client.get(path, params)

    def send(self, payload, **headers):
        """POST one event and return the response."""
        return self.post("/api/v1/events", payload, **headers)

    def event(self, event_id):
        return self.get(f"/api/v1/events/{event_id}").json()


def setup_us01():
    """Entity US01 with its chart, mappings and approval policy, in a transaction of its own."""
    with correlation.bound(None), transaction.atomic():
        ent, _ = ledger.entity_setup(code="US01", currency="USD", name="Tieout US", actor="test")
        queue.approval_policy_ensure(entity=ent, actor="test")
    return ent


def integration_client() -> APIClient:
    """An API client holding a new integration token, as a billing platform would."""
    client = APIClient()
    raw = tokens.token_issue(username="billing-system", role="integration", actor="test")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.fixture
def entity(db):
    return setup_us01()


@pytest.fixture
def us01(live_worker):
    """US01 committed, for tests with a real worker (it must see it)."""
    return setup_us01()


@pytest.fixture
def source(live_worker):
    return integration_client()


def _user_api(username, role, capture):
    raw = tokens.token_issue(username=username, role=role, actor="test")
    return Api(raw, capture)


@pytest.fixture
def integration(db, django_capture_on_commit_callbacks):
    return _user_api("billing-system", "integration", django_capture_on_commit_callbacks)


@pytest.fixture
def finance(db, django_capture_on_commit_callbacks):
    return _user_api("fiona-ops", "finance_ops", django_capture_on_commit_callbacks)


@pytest.fixture
def controller(db, django_capture_on_commit_callbacks):
    return _user_api("carl-controller", "controller", django_capture_on_commit_callbacks)


@pytest.fixture
def controller2(db, django_capture_on_commit_callbacks):
    return _user_api("cora-controller", "controller", django_capture_on_commit_callbacks)


@pytest.fixture
def auditor(db, django_capture_on_commit_callbacks):
    return _user_api("aude-auditor", "auditor", django_capture_on_commit_callbacks)


@pytest.fixture
def admin_api(db, django_capture_on_commit_callbacks):
    return _user_api("ada-admin", "admin", django_capture_on_commit_callbacks)


# ERP stand-ins ----------------------------------------------------------------------------------------


@pytest.fixture
def erp_standin(monkeypatch):
    """Start vendor stand-ins in this process, each on a free port; every one is stopped after the test.

    `erp_standin(OdooStandin, env={"TEST_ODOO_KEY": "odoo-key"}, slow_seconds=1.0)`: `env` is set for the
    test only (connectors read their secrets from the environment); the other arguments go to the class.
    """
    started = []

    def start(standin_class=ErpNextStandin, *, env: dict | None = None, **kwargs):
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        server = standin_class(**kwargs).start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def erp(erp_standin):
    """An ERPNext stand-in, its token in $TEST_ERPNEXT_TOKEN; no entity posts to it yet (`erpnext_configure`).

    Its scripted timeouts (`timeout_before`, `commit_then_timeout`) hold the answer 1 s: connectors under
    test wait less than that (read_timeout 0.5).
    """
    return erp_standin(ErpNextStandin, env={ERPNEXT_TOKEN_ENV: "key:secret"}, slow_seconds=1.0)


def erpnext_configure(entity, server, *, posting_mode=None, **erp_settings):
    """Point `entity` at the ERPNext stand-in `server` (token from $TEST_ERPNEXT_TOKEN); the entity."""
    return ledger.entity_configure_erp(entity=entity, connector="erpnext", actor="test", posting_mode=posting_mode,
                                       erp_settings={"url": server.url, "company": server.company,
                                                     "token_env": ERPNEXT_TOKEN_ENV, **erp_settings})


@pytest.fixture
def erp_us01(entity, erp):
    """US01 posts to the ERPNext stand-in `erp` (which this returns); configured in a transaction of its own."""
    with transaction.atomic():
        erpnext_configure(entity, erp, read_timeout=2, connect_timeout=1)
    return erp
