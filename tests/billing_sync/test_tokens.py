"""API tokens: bindings to source systems and entities, expiry, last use, revocation (command, admin, API).

A bound token sends only events whose envelope names one of its source systems and entities; anything
else is 403 `source_not_allowed`, kept as a receipt and audited, and refused before the replay lookup so
that a foreign token cannot probe which events exist. Unbound tokens behave as before. Expired tokens are
401 `token_expired`; revoked ones are 401 at once, even with the token cache on.
"""
import datetime
import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEntry
from billing_sync import authentication, tokens
from billing_sync.models import ApiToken, Event, Receipt
from config import correlation
from config.errors import Conflict, TieoutError
from ledger.models import EntityAccess
from tests import factories as f
from tests.fixtures import Api

pytestmark = pytest.mark.django_db


def _issue(username="bound-sys", role="integration", **kwargs) -> str:
    with correlation.bound(None):
        return tokens.token_issue(username=username, role=role, actor="test", **kwargs)


def _token(raw: str) -> ApiToken:
    return ApiToken.objects.get(key_hash=authentication.hash_token(raw))


@pytest.fixture
def bound(entity, django_capture_on_commit_callbacks) -> Api:
    """An integration token that may send events of billing-prod for US01 only."""
    return Api(_issue(source_systems=[f.SOURCE], token_entities=["US01"]), django_capture_on_commit_callbacks)


@pytest.fixture
def admin_api(db, django_capture_on_commit_callbacks) -> Api:
    return Api(_issue(username="ada-admin", role="admin"), django_capture_on_commit_callbacks)


# --------------------------------------------------------------------------------------------- binding
def test_a_bound_token_sends_events_inside_its_binding(bound):
    response = bound.send(f.customer())
    assert response.status_code == 202, response.content
    assert Event.objects.count() == 1


@pytest.mark.parametrize("envelope", [{"source_system": "billing-staging"}, {"entity": "GB01"},
                                      {"source_system": "billing-staging", "entity": "GB01"}])
def test_an_event_outside_the_binding_is_403_kept_and_audited(bound, envelope):
    payload = f.customer(**envelope)
    response = bound.send(payload)
    assert response.status_code == 403
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "source_not_allowed"
    assert not Event.objects.exists()
    receipt = Receipt.objects.get()
    assert (receipt.outcome, receipt.status_code) == ("forbidden", 403)
    assert bytes(receipt.body) == json.dumps(payload).encode()
    assert receipt.detail == {"code": "source_not_allowed", "source_system": payload["source_system"],
                              "event_id": payload["event_id"], "entity": payload["entity"]}
    entry = AuditEntry.objects.get(action="receipt.forbidden")
    assert (entry.object_type, entry.object_id, entry.actor) == ("receipt", str(receipt.pk), "bound-sys")


def test_a_foreign_token_cannot_probe_for_replays(entity, integration, bound):
    """The same event again is a replay (200) for its sender; for a token bound elsewhere it is 403, not 200/409."""
    payload = f.customer(source_system="billing-staging")
    assert integration.send(payload).status_code == 202
    assert bound.send(payload).status_code == 403
    changed = json.loads(json.dumps(payload))
    changed["data"]["name"] = "Other"
    assert bound.send(changed).status_code == 403  # not 409 either
    assert integration.send(payload).status_code == 200


def test_an_invalid_event_is_still_422_for_a_bound_token(bound):
    payload = f.customer(source_system="billing-staging")
    payload["data"].pop("name")
    response = bound.send(payload)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_event"


def test_an_unbound_token_sends_for_any_source_system_and_entity_as_before(entity, integration):
    assert integration.send(f.customer(source_system="billing-staging")).status_code == 202
    assert integration.send(f.customer(entity="GB01")).status_code == 202  # accepted; unknown_entity is the queue's
    assert _token(integration.token).source_systems is None and _token(integration.token).entities is None


def test_a_batch_refuses_each_event_outside_the_binding_and_accepts_the_rest(bound):
    inside = f.customer()
    other_source = f.customer(source_system="billing-staging")
    other_entity = f.customer(entity="GB01")
    invalid = f.customer(source_system="billing-staging")
    invalid["data"].pop("name")
    response = bound.post("/api/v1/events/batch", {"events": [inside, other_source, other_entity, invalid, inside]})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [202, 403, 403, 422, 200]
    assert {results[1]["body"]["code"], results[2]["body"]["code"]} == {"source_not_allowed"}
    assert list(Event.objects.values_list("event_id", flat=True)) == [inside["event_id"]]
    receipt = Receipt.objects.get()
    assert (receipt.outcome, receipt.status_code) == ("batch", 200)
    assert receipt.detail == {"events": 5, "invalid": 1, "forbidden": 2}
    entry = AuditEntry.objects.get(action="receipt.forbidden")
    assert entry.object_id == str(receipt.pk)
    assert [e["index"] for e in entry.after["events"]] == [1, 2]
    assert entry.after["code"] == "source_not_allowed"


def test_a_token_bound_to_source_systems_only_sends_for_any_entity(entity, django_capture_on_commit_callbacks):
    api = Api(_issue(source_systems=["billing-prod", "billing-eu"]), django_capture_on_commit_callbacks)
    assert api.send(f.customer(source_system="billing-eu", entity="GB01")).status_code == 202
    assert api.send(f.customer(source_system="billing-us")).status_code == 403


# --------------------------------------------------------------------------------------------- expiry
def test_an_expired_token_is_401_token_expired_and_the_body_is_kept(entity, django_capture_on_commit_callbacks):
    raw = _issue(expires_at=timezone.now() + datetime.timedelta(days=1))
    api = Api(raw, django_capture_on_commit_callbacks)
    assert api.send(f.customer()).status_code == 202
    ApiToken.objects.filter(pk=_token(raw).pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    payload = f.customer()
    response = api.send(payload)
    assert response.status_code == 401
    assert response.json()["code"] == "token_expired"
    assert response["WWW-Authenticate"].startswith("Bearer")
    receipt = Receipt.objects.get(outcome="unauthorized")
    assert bytes(receipt.body) == json.dumps(payload).encode()
    assert receipt.detail == {"code": "token_expired"}
    assert AuditEntry.objects.filter(action="receipt.unauthorized", object_id=str(receipt.pk)).exists()
    assert api.get("/api/v1/events").json()["code"] == "token_expired"


def test_an_unknown_token_keeps_the_not_authenticated_code(entity, db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer tko_nope")
    response = client.post("/api/v1/events", json.dumps(f.customer()), content_type="application/json")
    assert (response.status_code, response.json()["code"]) == (401, "not_authenticated")


def test_a_token_cannot_be_issued_already_expired(entity):
    with pytest.raises(TieoutError) as excinfo:
        _issue(expires_at=timezone.now() - datetime.timedelta(minutes=1))
    assert excinfo.value.code == "invalid_request"
    assert not ApiToken.objects.exists()


# --------------------------------------------------------------------------------------------- revocation
def test_a_revoked_token_is_401_at_once_even_when_cached(entity, integration, settings,
                                                         django_capture_on_commit_callbacks):
    settings.TIEOUT_TOKEN_CACHE_SECONDS = 300
    digest = authentication.hash_token(integration.token)
    authentication._cache.pop(digest, None)
    assert integration.get("/api/v1/events").status_code == 200
    stale = authentication._cache[digest]  # the token is cached: the next request would not ask the database
    assert integration.get("/api/v1/events").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        tokens.token_revoke(token_id=_token(integration.token).pk, actor="test")
    response = integration.send(f.customer())
    assert (response.status_code, response.json()["code"]) == (401, "not_authenticated")
    # Another process still holding the entry it cached before the revocation does not trust it either.
    authentication._cache[digest] = stale
    assert integration.get("/api/v1/events").status_code == 401
    assert Receipt.objects.filter(outcome="unauthorized").count() == 1


def test_without_redis_the_cache_is_bypassed_and_the_database_decides(entity, integration, settings, monkeypatch,
                                                                      django_capture_on_commit_callbacks):
    settings.TIEOUT_TOKEN_CACHE_SECONDS = 300
    monkeypatch.setattr(authentication, "revocation_epoch", lambda: None)
    authentication._cache.clear()
    assert integration.get("/api/v1/events").status_code == 200
    assert authentication.hash_token(integration.token) not in authentication._cache
    with django_capture_on_commit_callbacks(execute=True):
        tokens.token_revoke(token_id=_token(integration.token).pk, actor="test")
    assert integration.get("/api/v1/events").status_code == 401


def test_revoking_twice_is_a_conflict(entity, integration):
    token_id = _token(integration.token).pk
    tokens.token_revoke(token_id=token_id, actor="test")
    with pytest.raises(Conflict) as excinfo:
        tokens.token_revoke(token_id=token_id, actor="test")
    assert (excinfo.value.status, excinfo.value.code) == (409, "already_revoked")
    assert AuditEntry.objects.filter(action="token.revoked", object_id=str(token_id)).count() == 1


# --------------------------------------------------------------------------------------------- last use
def _token_updates(queries) -> int:
    return sum(1 for q in queries if q["sql"].startswith('UPDATE "billing_sync_apitoken"'))


def test_last_used_at_is_written_at_most_once_a_minute(entity, integration):
    token = _token(integration.token)
    assert token.last_used_at is None
    with CaptureQueriesContext(connection) as first:
        integration.get("/api/v1/events")
    token.refresh_from_db()
    used = token.last_used_at
    assert used is not None and timezone.now() - used < datetime.timedelta(seconds=30)
    assert _token_updates(first.captured_queries) == 1
    with CaptureQueriesContext(connection) as later:
        for _ in range(3):
            integration.send(f.customer())
    assert _token_updates(later.captured_queries) == 0
    token.refresh_from_db()
    assert token.last_used_at == used
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=used - datetime.timedelta(minutes=2))
    integration.get("/api/v1/events")
    token.refresh_from_db()
    assert token.last_used_at > used


# --------------------------------------------------------------------------------------------- issue_token
def _command(name, *args) -> str:
    out = io.StringIO()
    with correlation.bound(None):
        call_command(name, *args, stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def test_issue_token_binds_an_integration_token_and_sets_its_expiry(entity):
    before = timezone.now()
    raw = _command("issue_token", "billing-eu", "--role", "integration", "--source-system", "billing-prod",
                   "--source-system", "billing-eu", "--entity", "US01", "--expires-in", "30", "--name", "eu connector")
    token = _token(raw)
    assert token.source_systems == ["billing-eu", "billing-prod"]
    assert token.entities == ["US01"]
    assert before + datetime.timedelta(days=30) <= token.expires_at <= timezone.now() + datetime.timedelta(days=30)
    # --entity bound the token; the user's entity access is the default of a new user, untouched.
    assert EntityAccess.objects.get(user=token.user).all_entities
    entry = AuditEntry.objects.get(action="token.issued", object_id=str(token.pk))
    assert entry.after["source_systems"] == ["billing-eu", "billing-prod"]
    assert entry.after["entities"] == ["US01"]
    assert entry.after["expires_at"] == token.expires_at.isoformat()
    assert raw not in json.dumps(entry.after)


def test_issue_token_expires_on_a_date_at_midnight_utc(entity):
    day = (timezone.now() + datetime.timedelta(days=10)).date()
    token = _token(_command("issue_token", "billing-x", "--role", "integration", "--expires", day.isoformat()))
    assert token.expires_at == datetime.datetime.combine(day, datetime.time.min, tzinfo=datetime.UTC)


def test_issue_token_without_a_binding_keeps_the_old_behaviour(entity):
    token = _token(_command("issue_token", "billing-any", "--role", "integration"))
    assert (token.source_systems, token.entities, token.expires_at) == (None, None, None)


def test_issue_token_entity_still_scopes_a_staff_user(entity):
    token = _token(_command("issue_token", "gb-ops", "--role", "finance_ops", "--entity", "US01"))
    access = EntityAccess.objects.get(user=token.user)
    assert not access.all_entities and list(access.entities.values_list("code", flat=True)) == ["US01"]
    assert token.entities is None


@pytest.mark.parametrize(("args", "message"), [
    (["--entity", "ZZ99"], "unknown_entity"),
    (["--expires", "2020-01-01"], "invalid_request"),
    (["--expires", "soon"], "YYYY-MM-DD"),
    (["--expires-in", "0"], "at least 1"),
    (["--source-system", " "], "invalid_request"),
])
def test_issue_token_refuses_a_bad_binding_or_expiry(entity, args, message):
    with pytest.raises(CommandError, match=message):
        _command("issue_token", "billing-bad", "--role", "integration", *args)
    assert not ApiToken.objects.exists()


# --------------------------------------------------------------------------------------------- revoke_token
def test_revoke_token_by_id_prints_what_it_revoked(entity, integration):
    token = _token(integration.token)
    line = _command("revoke_token", str(token.pk))
    assert line == f"revoked {token.pk} {token.prefix} (billing-system)"
    token.refresh_from_db()
    assert token.revoked_at is not None
    entry = AuditEntry.objects.get(action="token.revoked")
    assert (entry.actor, entry.object_id) == ("cli:revoke_token", str(token.pk))
    assert integration.get("/api/v1/events").status_code == 401
    with pytest.raises(CommandError, match="already_revoked"):
        _command("revoke_token", str(token.pk))
    with pytest.raises(CommandError, match="not_found"):
        _command("revoke_token", "999999")


def test_revoke_token_for_a_user(entity):
    first, second = _issue(username="multi"), _issue(username="multi")
    _issue(username="bystander")
    with pytest.raises(CommandError, match="2 unrevoked tokens"):
        _command("revoke_token", "--user", "multi")
    assert not ApiToken.objects.filter(revoked_at__isnull=False).exists()
    line = _command("revoke_token", "--user", "multi", "--all")
    ids = [_token(first).pk, _token(second).pk]
    assert line == "revoked " + ", ".join(f"{i} {ApiToken.objects.get(pk=i).prefix} (multi)" for i in ids)
    assert set(ApiToken.objects.filter(revoked_at__isnull=False).values_list("pk", flat=True)) == set(ids)
    assert AuditEntry.objects.filter(action="token.revoked").count() == 2
    with pytest.raises(CommandError, match="no unrevoked token"):
        _command("revoke_token", "--user", "multi")
    single = _token(_issue(username="solo"))
    assert _command("revoke_token", "--user", "solo") == f"revoked {single.pk} {single.prefix} (solo)"
    with pytest.raises(CommandError, match="not both"):
        _command("revoke_token", str(single.pk), "--user", "solo")


# --------------------------------------------------------------------------------------------- admin
def _admin_client(username, role) -> Client:
    _issue(username=username, role=role)
    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    return client


def test_admin_revoke_action_revokes_through_the_audited_service(entity, integration, bound):
    client = _admin_client("ada-admin", "admin")
    ids = [_token(integration.token).pk, _token(bound.token).pk]
    tokens.token_revoke(token_id=ids[1], actor="test")  # one already revoked: skipped, not an error
    page = client.get("/admin/billing_sync/apitoken/")
    assert page.status_code == 200 and b"Revoke selected tokens" in page.content
    assert integration.token.encode() not in page.content
    response = client.post("/admin/billing_sync/apitoken/", {"action": "revoke", "_selected_action": ids},
                           follow=True)
    assert response.status_code == 200
    assert b"Revoked 1 token(s) (1 already revoked)" in response.content
    assert ApiToken.objects.filter(pk__in=ids, revoked_at__isnull=True).count() == 0
    entry = AuditEntry.objects.filter(action="token.revoked").order_by("-id").first()
    assert (entry.actor, entry.object_id) == ("ada-admin", str(ids[0]))
    assert integration.send(f.customer()).status_code == 401


def test_an_auditor_sees_tokens_but_cannot_revoke_them(entity, integration):
    client = _admin_client("audrey", "auditor")
    page = client.get("/admin/billing_sync/apitoken/")
    assert page.status_code == 200 and b"Revoke selected tokens" not in page.content
    token_id = _token(integration.token).pk
    client.post("/admin/billing_sync/apitoken/", {"action": "revoke", "_selected_action": [token_id]})
    assert ApiToken.objects.get(pk=token_id).revoked_at is None
    assert not AuditEntry.objects.filter(action="token.revoked").exists()


# --------------------------------------------------------------------------------------------- API
def test_admins_list_tokens_without_their_secret(entity, admin_api, integration, bound):
    integration.get("/api/v1/events")  # last_used_at
    response = admin_api.get("/api/v1/tokens")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert integration.token not in response.content.decode() and bound.token not in response.content.decode()
    by_user = {t["user"]: t for t in body["results"]}
    bound_token = _token(bound.token)
    assert by_user["bound-sys"] == {
        "id": bound_token.pk, "user": "bound-sys", "name": "", "prefix": bound.token[:10], "state": "active",
        "created_at": bound_token.created_at.isoformat().replace("+00:00", "Z"), "expires_at": None,
        "last_used_at": None, "revoked_at": None, "source_systems": ["billing-prod"], "entities": ["US01"]}
    assert by_user["billing-system"]["last_used_at"] is not None
    assert "key_hash" not in by_user["billing-system"]
    assert [t["user"] for t in admin_api.get("/api/v1/tokens", user="bound-sys").json()["results"]] == ["bound-sys"]


def test_admins_revoke_a_token_over_the_api(entity, admin_api, integration):
    token_id = _token(integration.token).pk
    response = admin_api.post(f"/api/v1/tokens/{token_id}/revoke")
    assert response.status_code == 200
    assert response.json()["state"] == "revoked" and response.json()["revoked_at"]
    assert integration.get("/api/v1/events").status_code == 401
    entry = AuditEntry.objects.get(action="token.revoked")
    assert (entry.actor, entry.object_id) == ("ada-admin", str(token_id))
    again = admin_api.post(f"/api/v1/tokens/{token_id}/revoke")
    assert (again.status_code, again.json()["code"]) == (409, "already_revoked")
    assert admin_api.get(f"/api/v1/tokens/{token_id}").json()["state"] == "revoked"
    assert [t["id"] for t in admin_api.get("/api/v1/tokens", state="revoked").json()["results"]] == [token_id]
    assert token_id not in [t["id"] for t in admin_api.get("/api/v1/tokens", state="active").json()["results"]]
    assert admin_api.post("/api/v1/tokens/999999/revoke").status_code == 404


@pytest.mark.parametrize("role", ["integration", "finance_ops", "controller", "auditor"])
def test_only_admins_use_the_tokens_api(entity, role, django_capture_on_commit_callbacks):
    api = Api(_issue(username=f"someone-{role}", role=role), django_capture_on_commit_callbacks)
    token_id = _token(api.token).pk
    assert api.get("/api/v1/tokens").status_code == 403
    assert api.get(f"/api/v1/tokens/{token_id}").status_code == 403
    assert api.post(f"/api/v1/tokens/{token_id}/revoke").status_code == 403
    assert ApiToken.objects.get(pk=token_id).revoked_at is None
