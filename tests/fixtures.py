"""Shared fixtures: an entity, users of every role with API clients, and an API helper that runs the
after-commit work (processing, posting) the way a committed request would, with Celery eager.
"""
import json

import pytest
from rest_framework.test import APIClient

from billing_sync import tokens
from config import correlation
from exceptions_queue import services as queue
from ledger import services as ledger


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
    from django.db import transaction

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
