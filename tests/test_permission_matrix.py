"""Role × action: every API action and web page, for every role, allowed or refused on the server.

The table below is the product's permission model written down once; each cell is its own test. A cell
that says "allowed" must not be refused (401, 403, or a redirect to the login page); a cell that says
"refused" must be, whatever the client shows. Business outcomes (a 409 because the item was already
decided, a 422 for a missing field) count as allowed: the role got past the permission check.

The cells share one world per module (an open exception, a pending write-off approval, a posted
invoice), built once in a transaction that stays open until the module's last cell and is then rolled
back, as Django's `TestCase.setUpTestData` does. Each cell runs in a savepoint inside it (pytest-django's
`db`), rolled back after the cell, so actions with side effects never see one another's; nothing is
committed, so nothing needs deleting past the append-only triggers, and no other module sees the world.
"""
from dataclasses import dataclass, field

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client, TestCase

from billing_sync import tokens
from billing_sync.authentication import hash_token
from billing_sync.models import ApiToken, Invoice
from config import correlation
from exceptions_queue.models import Approval, ExceptionRecord
from ledger.models import Entity, Journal
from tests import factories as f
from tests.fixtures import Api, setup_us01

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "integration", "finance_ops", "controller", "auditor", "admin")
STAFF = {"finance_ops", "controller", "auditor", "admin"}
WORKERS = {"finance_ops", "controller", "admin"}
DECIDERS = {"controller", "admin"}
SENDERS = {"integration", "admin"}


@dataclass
class World:
    exception_id: str
    approval_id: str
    event_id: str
    journal_id: str
    invoice_id: str
    token_id: int = 0  # another source system's token (for the tokens API)
    extra: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker) -> World:
    """The module's world, in a transaction of its own that no cell commits (see the module's docstring)."""
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer._from_testcase = True  # as TestCase marks its own: a durable block in a cell stays allowed
        outer.__enter__()
        try:
            built = _build_world()
        except BaseException:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)
            raise
    try:
        yield built
    finally:
        with django_db_blocker.unblock():
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


def _build_world() -> World:
    setup_us01()
    with correlation.bound(None):
        raw = tokens.token_issue(username="billing-system", role="integration", actor="test")
    # Inside the open transaction nothing commits: the after-commit work (processing, posting) runs
    # when each call returns, as with the cells' `django_capture_on_commit_callbacks`.
    integration = Api(raw, TestCase.captureOnCommitCallbacks)
    cus = f.customer()
    integration.send(cus)
    inv = f.invoice(customer_id=cus["data"]["customer_id"], lines=[("100.00", "7.25")])
    event_id = integration.send(inv).json()["id"]
    over = f.payment(customer_id=cus["data"]["customer_id"], amount="500.00",
                     allocations=[(inv["data"]["invoice_id"], "500.00")])
    integration.send(over)
    exception = ExceptionRecord.objects.get(code="over_application")
    integration.send(f.write_off(inv["data"]["invoice_id"], "10.00"))
    approval = Approval.objects.get(kind="write_off", status="pending")
    journal = Journal.objects.filter(event_id=event_id).first()
    with correlation.bound(None):
        raw = tokens.token_issue(username="perm-other-system", role="integration", actor="test")
    token_id = ApiToken.objects.get(key_hash=hash_token(raw)).pk
    return World(exception_id=str(exception.pk), approval_id=str(approval.pk), event_id=event_id,
                 journal_id=str(journal.pk), invoice_id=inv["data"]["invoice_id"], token_id=token_id,
                 extra={"customer_id": cus["data"]["customer_id"]})


USERNAMES = {"integration": "perm-billing", "finance_ops": "perm-ops", "controller": "perm-controller",
             "auditor": "perm-auditor", "admin": "perm-admin"}


def api_for(role, capture):
    if role == "anonymous":
        return Api("no-such-token", capture), None
    with correlation.bound(None):
        raw = tokens.token_issue(username=USERNAMES[role], role=role, actor="test")
    return Api(raw, capture), raw


@dataclass
class ApiAction:
    name: str
    method: str
    path: str  # formatted with the World's fields
    allowed: set
    body: dict | None = None
    params: dict | None = None


API_ACTIONS = [
    ApiAction("send an event", "post", "/api/v1/events", SENDERS, body={"not": "an event"}),
    ApiAction("send a batch", "post", "/api/v1/events/batch", SENDERS, body={"events": []}),
    ApiAction("list events", "get", "/api/v1/events", STAFF | {"integration"}),
    ApiAction("read an event", "get", "/api/v1/events/{event_id}", STAFF),
    ApiAction("trace an event", "get", "/api/v1/events/{event_id}/trace", STAFF),
    ApiAction("event callbacks", "get", "/api/v1/events/{event_id}/callbacks", STAFF),
    ApiAction("read an invoice", "get", "/api/v1/invoices/" + f.SOURCE + "/{invoice_id}", STAFF),
    ApiAction("trial balance", "get", "/api/v1/ledger/trial-balance", STAFF, params={"entity": "US01"}),
    ApiAction("list journals", "get", "/api/v1/journals", STAFF),
    ApiAction("read a journal", "get", "/api/v1/journals/{journal_id}", STAFF),
    ApiAction("trace a journal", "get", "/api/v1/journals/{journal_id}/trace", STAFF),
    ApiAction("trace an invoice", "get", "/api/v1/invoices/" + f.SOURCE + "/{invoice_id}/trace", STAFF),
    ApiAction("trace an exception", "get", "/api/v1/exceptions/{exception_id}/trace", STAFF),
    ApiAction("close a period", "post", "/api/v1/periods/US01/2026-10/close", DECIDERS),
    ApiAction("reopen a period", "post", "/api/v1/periods/US01/2026-10/reopen", DECIDERS),
    ApiAction("list approvals", "get", "/api/v1/approvals", STAFF),
    ApiAction("read an approval", "get", "/api/v1/approvals/{approval_id}", STAFF),
    ApiAction("approve", "post", "/api/v1/approvals/{approval_id}/approve", DECIDERS, body={"comment": "ok"}),
    ApiAction("reject", "post", "/api/v1/approvals/{approval_id}/reject", DECIDERS, body={"comment": "no"}),
    ApiAction("list exceptions", "get", "/api/v1/exceptions", STAFF),
    ApiAction("read an exception", "get", "/api/v1/exceptions/{exception_id}", STAFF),
    ApiAction("assign an exception", "post", "/api/v1/exceptions/{exception_id}/assign", WORKERS, body={}),
    ApiAction("retry an exception", "post", "/api/v1/exceptions/{exception_id}/retry", WORKERS),
    ApiAction("resolve an exception", "post", "/api/v1/exceptions/{exception_id}/resolve", WORKERS,
              body={"resolution": "checked with the customer"}),
    ApiAction("comment on an exception", "post", "/api/v1/exceptions/{exception_id}/comment", WORKERS,
              body={"body": "asked the customer"}),
    ApiAction("escalate an exception", "post", "/api/v1/exceptions/{exception_id}/escalate", WORKERS,
              body={"reason": "past SLA"}),
    ApiAction("replay an exception", "post", "/api/v1/exceptions/{exception_id}/replay", WORKERS),
    ApiAction("raise a credit memo", "post", "/api/v1/adjustments/credit-memos", WORKERS,
              body={"source_system": f.SOURCE, "invoice_id": "{invoice_id}", "amount": "5.00", "reason": "goodwill"}),
    ApiAction("raise a write-off", "post", "/api/v1/adjustments/write-offs", WORKERS,
              body={"source_system": f.SOURCE, "invoice_id": "{invoice_id}", "amount": "5.00", "reason": "bad debt"}),
    ApiAction("raise a manual journal", "post", "/api/v1/journals/manual", WORKERS,
              body={"entity": "US01", "accounting_date": "2026-11-15", "description": "accrual",
                    "lines": [{"account": "6200", "debit": "1.00", "credit": "0", "memo": ""},
                              {"account": "1200", "debit": "0", "credit": "1.00", "memo": ""}]}),
    ApiAction("AR aging", "get", "/api/v1/reports/ar-aging", STAFF, params={"entity": "US01"}),
    ApiAction("unapplied cash aging", "get", "/api/v1/reports/unapplied-cash", STAFF, params={"entity": "US01"}),
    ApiAction("customer statement", "get", "/api/v1/customers/" + f.SOURCE + "/{extra[customer_id]}/statement",
              STAFF),
    ApiAction("ledger export", "get", "/api/v1/ledger/export", STAFF, params={"entity": "US01", "format": "beancount"}),
    ApiAction("list API tokens", "get", "/api/v1/tokens", {"admin"}),
    ApiAction("read an API token", "get", "/api/v1/tokens/{token_id}", {"admin"}),
    ApiAction("revoke an API token", "post", "/api/v1/tokens/{token_id}/revoke", {"admin"}),
]


def _cells(actions):
    return [pytest.param(action, role, id=f"{action.name} / {role}") for action in actions for role in ROLES]


@pytest.mark.parametrize(("action", "role"), _cells(API_ACTIONS))
def test_api_action_by_role(action, role, world, django_capture_on_commit_callbacks):
    api, _ = api_for(role, django_capture_on_commit_callbacks)
    path = action.path.format(**world.__dict__)
    if action.method == "get":
        response = api.get(path, **(action.params or {}))
    else:
        body = {k: v.format(**world.__dict__) if isinstance(v, str) and v.endswith("_id}") else v
                for k, v in (action.body or {}).items()}
        response = api.post(path, body)
    # 404 is a refusal too where existence is not disclosed (a source system reading another's event).
    if role in action.allowed:
        assert response.status_code not in (401, 403, 404), (
            f"{role} was refused '{action.name}': {response.status_code} {response.content[:300]}")
    else:
        assert response.status_code in (401, 403, 404), (
            f"{role} was allowed '{action.name}': {response.status_code} {response.content[:300]}")
        if role == "anonymous":
            assert response.status_code == 401


# ------------------------------------------------------------------------------- a bound integration token
@dataclass
class BoundAction:
    name: str
    method: str
    path: str
    status: int
    body: object = None  # a function of nothing (fresh ids per test), or None
    code: str | None = None  # the problem code of a refusal
    results: list | None = None  # the per-event statuses of a batch


BOUND_ACTIONS = [
    BoundAction("send inside its binding", "post", "/api/v1/events", 202, lambda: f.customer()),
    BoundAction("send for another source system", "post", "/api/v1/events", 403,
                lambda: f.customer(source_system="billing-staging"), code="source_not_allowed"),
    BoundAction("send for another entity", "post", "/api/v1/events", 403, lambda: f.customer(entity="GB01"),
                code="source_not_allowed"),
    BoundAction("send a batch with one event outside", "post", "/api/v1/events/batch", 200,
                lambda: {"events": [f.customer(), f.customer(source_system="billing-staging")]}, results=[202, 403]),
    BoundAction("list its events", "get", "/api/v1/events", 200),
    BoundAction("read another's event", "get", "/api/v1/events/{event_id}", 404),
    BoundAction("list API tokens", "get", "/api/v1/tokens", 403, code="permission_denied"),
    BoundAction("revoke a token", "post", "/api/v1/tokens/{token_id}/revoke", 403, code="permission_denied"),
]


@pytest.mark.parametrize("action", [pytest.param(a, id=f"bound integration token / {a.name}") for a in BOUND_ACTIONS])
def test_bound_integration_token(action, world, django_capture_on_commit_callbacks):
    """An integration token bound to billing-prod and US01 (`issue_token --source-system --entity`)."""
    with correlation.bound(None):
        raw = tokens.token_issue(username="perm-bound", role="integration", source_systems=[f.SOURCE],
                                 token_entities=["US01"], actor="test")
    api = Api(raw, django_capture_on_commit_callbacks)
    path = action.path.format(**world.__dict__)
    response = api.get(path) if action.method == "get" else api.post(path, action.body() if action.body else None)
    assert response.status_code == action.status, response.content[:300]
    if action.code:
        assert response.json()["code"] == action.code
    if action.results:
        assert [r["status"] for r in response.json()["results"]] == action.results


# --------------------------------------------------------------------------------------------- web pages
@dataclass
class WebAction:
    name: str
    method: str
    path: str  # formatted with the World's fields (and invoice_pk)
    allowed: set
    data: dict | None = None


WEB_ACTIONS = [
    WebAction("dashboard", "get", "/", STAFF),
    WebAction("exception queue", "get", "/exceptions/", STAFF),
    WebAction("exception page", "get", "/exceptions/{exception_id}/", STAFF),
    WebAction("assign to me", "post", "/exceptions/{exception_id}/", WORKERS, {"action": "assign_me"}),
    WebAction("comment", "post", "/exceptions/{exception_id}/", WORKERS, {"action": "comment", "body": "called AP"}),
    WebAction("retry", "post", "/exceptions/{exception_id}/", WORKERS, {"action": "retry"}),
    WebAction("replay", "post", "/exceptions/{exception_id}/", WORKERS, {"action": "replay"}),
    WebAction("escalate", "post", "/exceptions/{exception_id}/", WORKERS, {"action": "escalate", "reason": "SLA"}),
    WebAction("resolve", "post", "/exceptions/{exception_id}/", WORKERS,
              {"action": "resolve", "resolution": "customer paid by wire"}),
    WebAction("bulk assign", "post", "/exceptions/bulk", WORKERS, {"action": "assign_me", "ids": "{exception_id}"}),
    WebAction("bulk retry", "post", "/exceptions/bulk", WORKERS, {"action": "retry", "ids": "{exception_id}"}),
    WebAction("approvals inbox", "get", "/approvals/", STAFF),
    WebAction("approval page", "get", "/approvals/{approval_id}/", STAFF),
    WebAction("approve", "post", "/approvals/{approval_id}/approve", DECIDERS, {"comment": "fine"}),
    WebAction("reject", "post", "/approvals/{approval_id}/reject", DECIDERS, {"comment": "no"}),
    WebAction("adjustments", "get", "/adjustments/", WORKERS),
    WebAction("invoice for adjustment", "get", "/adjustments/invoices/{invoice_pk}/", WORKERS),
    WebAction("credit memo form", "get", "/adjustments/invoices/{invoice_pk}/credit-memo/", WORKERS),
    WebAction("raise a credit memo", "post", "/adjustments/invoices/{invoice_pk}/credit-memo/", WORKERS,
              {"amount": "5.00", "reason": "goodwill"}),
    WebAction("raise a write-off", "post", "/adjustments/invoices/{invoice_pk}/write-off/", WORKERS,
              {"amount": "5.00", "reason": "uncollectible"}),
    WebAction("manual journal form", "get", "/adjustments/journal/", WORKERS),
    WebAction("raise a manual journal", "post", "/adjustments/journal/", WORKERS, {"entity": "US01"}),
    WebAction("reconciliation page", "get", "/reconciliation/", STAFF),
    WebAction("start a reconciliation run", "post", "/reconciliation/runs", WORKERS,
              {"entity": "US01", "from": "2026-11-01", "to": "2026-11-30"}),
    WebAction("trace search", "get", "/trace/", STAFF),
    WebAction("journal trace page", "get", "/trace/journal/{journal_id}/", STAFF),
    WebAction("event trace page", "get", "/trace/event/{event_id}/", STAFF),
    WebAction("invoice trace page", "get", "/trace/invoice/" + f.SOURCE + "/{invoice_id}/", STAFF),
    WebAction("reports", "get", "/reports/", STAFF),
    WebAction("AR aging page", "get", "/reports/ar-aging/?entity=US01", STAFF),
    WebAction("AR aging download", "get", "/reports/ar-aging/?entity=US01&download=xlsx", STAFF),
    WebAction("unapplied cash page", "get", "/reports/unapplied-cash/?entity=US01", STAFF),
    WebAction("statement page", "get", "/reports/statement/?customer_id={extra[customer_id]}", STAFF),
    WebAction("ledger export", "get", "/reports/ledger-export/?entity=US01&format=csv", STAFF),
    WebAction("evidence page", "get", "/evidence/", {"auditor", "admin"}),
    WebAction("download an evidence pack", "post", "/evidence/", {"auditor", "admin"},
              {"entity": "US01", "date_from": "2026-11-01", "date_to": "2026-11-02"}),
    WebAction("digests export", "get", "/evidence/digests.json", {"auditor", "admin"}),
    WebAction("audit public key", "get", "/evidence/public-key.pem", {"auditor", "admin"}),
    WebAction("admin: entity list", "get", "/admin/ledger/entity/", STAFF),
    WebAction("admin: audit entries", "get", "/admin/audit/auditentry/", STAFF),
    WebAction("admin: change an entity", "post", "/admin/ledger/entity/{entity_pk}/change/", {"admin"},
              {"name": "Renamed", "erp_connector": "builtin", "erp_settings": "{}", "posting_mode": "single"}),
    WebAction("admin: users", "get", "/admin/auth/user/", {"admin"}),
]


def web_client_for(role) -> Client:
    client = Client()
    if role != "anonymous":
        with correlation.bound(None):
            tokens.token_issue(username=USERNAMES[role], role=role, actor="test")
        client.force_login(get_user_model().objects.get(username=USERNAMES[role]))
    return client


@pytest.mark.parametrize(("action", "role"), _cells(WEB_ACTIONS))
def test_web_action_by_role(action, role, world, django_capture_on_commit_callbacks):
    fields = {**world.__dict__, "invoice_pk": Invoice.objects.get(invoice_id=world.invoice_id).pk,
              "entity_pk": world_entity_pk()}
    client = web_client_for(role)
    path = action.path.format(**fields)
    data = {k: v.format(**fields) if v.startswith("{") and v.endswith("_id}") else v
            for k, v in (action.data or {}).items()}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.get(path) if action.method == "get" else client.post(path, data)
    # The admin's own login page only forwards to ours (one guarded door).
    to_login = response.status_code == 302 and response["Location"].startswith(("/accounts/login/", "/admin/login/"))
    if role in action.allowed:
        assert response.status_code not in (401, 403, 404) and not to_login, (
            f"{role} was refused '{action.name}': {response.status_code} {response.content[:300]}")
    elif role == "anonymous":
        assert to_login, f"anonymous reached '{action.name}': {response.status_code}"
    else:
        # Django's admin sends a signed-in user who is not staff back to its login page: refused too.
        assert response.status_code in (403, 404) or (path.startswith("/admin/") and to_login), (
            f"{role} was allowed '{action.name}': {response.status_code} {response.content[:300]}")


def world_entity_pk():
    return Entity.objects.get(code="US01").pk
