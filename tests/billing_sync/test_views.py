"""Each answer of API.md's events section, on real PostgreSQL: 202, 200 replay, 409, 422, 401/403."""
import io
import json

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from billing_sync.models import Event, Receipt
from tests import factories as f

pytestmark = pytest.mark.django_db


def test_new_event_is_accepted_with_the_event_resource(entity, integration):
    payload = f.customer()
    response = integration.send(payload)
    assert response.status_code == 202
    body = response.json()
    assert body["source_system"] == payload["source_system"]
    assert body["event_id"] == payload["event_id"]
    assert body["type"] == "customer.upserted"
    assert body["entity"] == "US01"
    assert body["status"] == "accepted"
    assert body["links"]["trace"] == f"/api/v1/events/{body['id']}/trace"
    assert response["X-Correlation-ID"]
    assert integration.event(body["id"])["status"] == "processed"


def test_same_payload_again_is_a_replay_with_the_identical_body(entity, integration):
    payload = f.customer()
    first = integration.send(payload)
    again = integration.send(payload)
    assert again.status_code == 200
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert Event.objects.filter(event_id=payload["event_id"]).count() == 1


def test_replay_compares_canonical_json_not_bytes(entity, integration):
    payload = f.customer()
    first = integration.send(payload)
    reordered = json.dumps(dict(reversed(list(payload.items()))), indent=2)
    again = integration.post("/api/v1/events", reordered)
    assert again.status_code == 200
    assert again.content == first.content


def test_same_identity_with_another_payload_is_a_conflict(entity, integration):
    payload = f.customer()
    integration.send(payload)
    changed = json.loads(json.dumps(payload))
    changed["data"]["name"] = "Someone else"
    response = integration.send(changed)
    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "idempotency_conflict"
    assert Receipt.objects.filter(outcome="conflict").count() == 1


def test_a_replay_under_another_events_idempotency_key_is_a_conflict(entity, integration):
    first = f.customer()
    assert integration.send(first, HTTP_IDEMPOTENCY_KEY="key-a").status_code == 202
    assert integration.send(f.customer(), HTTP_IDEMPOTENCY_KEY="key-b").status_code == 202
    assert integration.send(first, HTTP_IDEMPOTENCY_KEY="key-a").status_code == 200
    assert integration.send(first, HTTP_IDEMPOTENCY_KEY="key-b").status_code == 409


def test_idempotency_key_must_map_to_the_same_identity(entity, integration):
    first = integration.send(f.customer(), HTTP_IDEMPOTENCY_KEY="key-1")
    assert first.status_code == 202
    other = integration.send(f.customer(), HTTP_IDEMPOTENCY_KEY="key-1")
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_conflict"


@pytest.mark.parametrize("mutate, field", [
    (lambda p: p.pop("event_id"), "event_id"),
    (lambda p: p.update(type="invoice.exploded"), "type"),
    (lambda p: p.update(occurred_at="yesterday"), "occurred_at"),
    (lambda p: p["data"]["lines"][0].update(amount=107.5), "data.lines[0].amount"),
    (lambda p: p["data"]["lines"][0].update(amount="100.001"), "data.lines[0].amount"),
    (lambda p: p["data"].update(subtotal="99.00"), "data.subtotal"),
    (lambda p: p["data"].update(tax_total="1.00"), "data.tax_total"),
    (lambda p: p["data"].update(total="1.00"), "data.total"),
    (lambda p: p["data"].update(currency="usd"), "data.currency"),
    (lambda p: p["data"].update(version="2"), "data.version"),
])
def test_schema_violations_are_422_with_field_errors_and_the_payload_is_kept(entity, integration, mutate, field):
    payload = f.invoice(customer_id="cus_1")
    mutate(payload)
    response = integration.send(payload)
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "invalid_event"
    assert field in {e["field"] for e in body["errors"]}
    receipt = Receipt.objects.get(outcome="invalid")
    assert bytes(receipt.body) == json.dumps(payload).encode()
    assert not Event.objects.exists()


def test_jpy_has_no_minor_units(entity, integration):
    payload = f.payment(customer_id="c", amount="10", currency="JPY")
    payload["data"]["amount"] = "10.5"
    response = integration.send(payload)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "data.amount"


def test_payment_allocating_more_than_its_amount_is_422(entity, integration):
    response = integration.send(f.payment(customer_id="c", amount="10.00", allocations=[("inv_x", "10.01")]))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "data.allocations"


def test_malformed_json_is_422_and_kept(entity, integration):
    response = integration.post("/api/v1/events", b"{not json")
    assert response.status_code == 422
    assert bytes(Receipt.objects.get().body) == b"{not json"


def test_missing_token_is_401_and_the_body_is_kept(entity, db):
    response = APIClient().post("/api/v1/events", json.dumps(f.customer()), content_type="application/json")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert Receipt.objects.get().outcome == "unauthorized"


def test_invalid_token_is_401(entity, db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer tko_nope")
    response = client.post("/api/v1/events", json.dumps(f.customer()), content_type="application/json")
    assert response.status_code == 401


@pytest.mark.parametrize("role_fixture", ["finance", "controller", "auditor"])
def test_roles_that_may_not_send_events_get_403(entity, request, role_fixture):
    api = request.getfixturevalue(role_fixture)
    response = api.send(f.customer())
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert Receipt.objects.get().outcome == "forbidden"
    assert not Event.objects.exists()


def test_correlation_id_is_taken_from_the_request(entity, integration):
    response = integration.send(f.customer(), HTTP_X_CORRELATION_ID="corr-123")
    assert response["X-Correlation-ID"] == "corr-123"
    assert response.json()["correlation_id"] == "corr-123"


def test_list_filters_by_identity_and_integration_sees_only_its_own(entity, integration, finance):
    payload = f.customer()
    integration.send(payload)
    listed = integration.get("/api/v1/events", source_system=payload["source_system"], event_id=payload["event_id"])
    assert listed.status_code == 200
    assert [e["event_id"] for e in listed.json()["results"]] == [payload["event_id"]]
    assert finance.get("/api/v1/events", status="processed").json()["count"] == 1
    assert finance.get("/api/v1/events", status="exception").json()["count"] == 0


def test_batch_answers_each_event_in_order(entity, integration):
    good = f.customer()
    dup = good
    bad = f.customer()
    bad["data"].pop("name")
    conflict = json.loads(json.dumps(good))
    conflict["data"]["name"] = "changed"
    response = integration.post("/api/v1/events/batch", {"events": [good, bad, dup, conflict]})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [202, 422, 200, 409]
    assert results[2]["body"] == results[0]["body"]
    assert results[1]["body"]["errors"][0]["field"] == "events[1].data.name"
    assert results[3]["body"]["code"] == "idempotency_conflict"
    assert Event.objects.count() == 1
    assert integration.event(results[0]["body"]["id"])["status"] == "processed"


def test_batch_audit_entries_verify(entity, integration):
    response = integration.post("/api/v1/events/batch", {"events": [f.customer() for _ in range(5)]})
    assert [r["status"] for r in response.json()["results"]] == [202] * 5
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert out.getvalue().startswith("OK ")


def test_batch_over_1000_events_is_refused(entity, integration):
    response = integration.post("/api/v1/events/batch", {"events": [f.customer() for _ in range(1001)]})
    assert response.status_code == 422
    assert Receipt.objects.get().outcome == "invalid"
