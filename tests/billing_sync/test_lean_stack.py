"""The lean request stack of `POST /api/v1/events` (billing_sync/views/lean.py), on real PostgreSQL and Redis:
every answer it gives is the full stack's answer (status, body, headers), what it writes is what the full
stack writes, and whatever it does not answer itself (refused tokens, roles, throttling, sessions, other
paths) goes down the full stack and is answered there as before."""
import json
from unittest import mock

import pytest
from django.test import Client

from audit.models import AuditEntry
from billing_sync import tokens
from billing_sync.models import ApiToken, Event, Receipt
from billing_sync.services import processing
from billing_sync.views import lean
from config.api import TokenRateThrottle
from tests import factories as f

# What differs between two deliveries by nature, not by stack.
VOLATILE_HEADERS = {"X-Correlation-ID"}
VOLATILE_FIELDS = {"id", "correlation_id", "received_at", "links", "instance"}


@pytest.fixture(autouse=True)
def _no_dispatch():
    with mock.patch.object(processing, "events_schedule", mock.Mock()):
        yield


@pytest.fixture
def answered():
    """The statuses the lean stack answered itself, in order."""
    seen = []
    real = lean.LeanIngestMiddleware._finish

    def finish(self, request, response):
        seen.append(response.status_code)
        return real(self, request, response)

    with mock.patch.object(lean.LeanIngestMiddleware, "_finish", finish):
        yield seen


def _post(client, payload, settings, *, lean_on=True):
    settings.TIEOUT_LEAN_INGEST = lean_on  # read per request
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post("/api/v1/events", body, content_type="application/json")


def _shape(response, ids) -> tuple:
    text = response.content.decode()
    for own in ids:  # the scenario's own ids, different per stack
        text = text.replace(own, "<id>")
    body = json.loads(text)
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in VOLATILE_FIELDS}
    headers = {k: v for k, v in response.headers.items() if k not in VOLATILE_HEADERS}
    return response.status_code, body, headers


def _scenarios(client, settings, lean_on):
    """New, replay, conflict, schema-invalid, malformed JSON: each stack gets its own ids."""
    new = f.customer()
    conflict = json.loads(json.dumps(new))
    conflict["data"]["name"] = "Someone else"
    ids = [new["event_id"], new["data"]["customer_id"]]
    answers = [_post(client, body, settings, lean_on=lean_on)
               for body in (new, new, conflict, {"type": "customer.upserted"}, b"{not json")]
    return [_shape(r, ids) for r in answers], new["event_id"]


def test_each_answer_is_the_full_stacks_answer_headers_included(entity, settings, answered):
    raw = tokens.token_issue(username="lean-stack", role="integration", actor="test")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    lean_shapes, lean_id = _scenarios(client, settings, True)
    assert answered == [202, 200, 409, 422, 422]
    full_shapes, full_id = _scenarios(client, settings, False)
    assert answered == [202, 200, 409, 422, 422]  # the full stack's five never touched it
    assert [s[0] for s in lean_shapes] == [202, 200, 409, 422, 422]
    for lean_shape, full_shape in zip(lean_shapes, full_shapes, strict=True):
        assert lean_shape == full_shape
    assert lean_shapes[0][2]["Allow"] == "GET, POST, HEAD, OPTIONS"
    assert lean_shapes[0][2]["X-Frame-Options"] == "DENY"


def test_what_it_writes_is_what_the_full_stack_writes(entity, settings):
    raw = tokens.token_issue(username="lean-writes", role="integration", actor="test")
    written = {}
    for lean_on in (True, False):
        payload = f.customer()
        _post(Client(HTTP_AUTHORIZATION=f"Bearer {raw}", HTTP_IDEMPOTENCY_KEY=payload["event_id"]), payload,
              settings, lean_on=lean_on)
        event = Event.objects.get(event_id=payload["event_id"])
        receipt = Receipt.objects.get(pk=event.receipt_id)
        entry = AuditEntry.objects.get(action="event.received", object_id=str(event.pk))
        written[lean_on] = (event.status, event.idempotency_key == payload["event_id"], receipt.outcome,
                            receipt.endpoint, receipt.client, receipt.body == json.dumps(payload).encode(),
                            entry.actor, sorted(entry.document["after"]))
    assert written[True] == written[False]


def test_what_it_does_not_answer_goes_down_the_full_stack(entity, settings, answered):
    reader = tokens.token_issue(username="lean-reader", role="auditor", actor="test")
    revoked_raw = tokens.token_issue(username="lean-revoked", role="integration", actor="test")

    tokens.token_revoke(token_id=ApiToken.objects.get(user__username="lean-revoked").pk, actor="test")

    refused_role = _post(Client(HTTP_AUTHORIZATION=f"Bearer {reader}"), f.customer(), settings)
    refused_token = _post(Client(HTTP_AUTHORIZATION=f"Bearer {revoked_raw}"), f.customer(), settings)
    no_token = _post(Client(), f.customer(), settings)
    malformed = _post(Client(HTTP_AUTHORIZATION="Bearer"), f.customer(), settings)
    assert [r.status_code for r in (refused_role, refused_token, no_token, malformed)] == [403, 401, 401, 401]
    assert refused_role["Content-Type"] == "application/problem+json"
    assert refused_token["WWW-Authenticate"] == 'Bearer realm="api"'
    assert answered == []
    # The refusals keep their receipts, as the full stack always recorded them.
    assert Receipt.objects.filter(outcome=Receipt.Outcome.FORBIDDEN).count() == 1
    assert Receipt.objects.filter(outcome=Receipt.Outcome.UNAUTHORIZED).count() == 3


def test_a_throttled_client_is_answered_by_the_full_stack(entity, settings, answered, monkeypatch):


    raw = tokens.token_issue(username="lean-throttled", role="integration", actor="test")
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"token": "1/min"})
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    first, second = _post(client, f.customer(), settings), _post(client, f.customer(), settings)
    assert (first.status_code, second.status_code) == (202, 429)
    assert "Retry-After" in second
    assert answered == [202]


def test_off_means_the_full_stack_answers_everything(entity, settings, answered):
    raw = tokens.token_issue(username="lean-off", role="integration", actor="test")
    response = _post(Client(HTTP_AUTHORIZATION=f"Bearer {raw}"), f.customer(), settings, lean_on=False)
    assert response.status_code == 202
    assert answered == []


def test_with_2fa_on_the_headers_still_match(entity, settings, answered):
    settings.TIEOUT_2FA = True
    raw = tokens.token_issue(username="lean-2fa", role="integration", actor="test")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    lean_shapes, _ = _scenarios(client, settings, True)
    full_shapes, _ = _scenarios(client, settings, False)
    assert lean_shapes == full_shapes
    assert lean_shapes[0][2]["Vary"] == "Cookie"
    assert answered == [202, 200, 409, 422, 422]
