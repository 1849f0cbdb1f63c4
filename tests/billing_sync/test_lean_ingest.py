"""The lean ingest paths (issue 13, item 3), on real PostgreSQL: a new single event is one statement (its
receipt, event and audit entry, committed by itself: no BEGIN, no COMMIT), a batch is one statement for
its receipt, events and audit entries whatever is mixed into it, and what they write is what the
transactional path writes: the same receipts, rows, answers and audit entries (content, hash, chain)."""
import io
import json
from unittest import mock

import pytest
import redis
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.renderers import JSONRenderer

from audit import services as audit
from audit.models import AuditEntry
from billing_sync import services, tokens
from billing_sync.models import Event, Receipt
from billing_sync.services import processing
from config.api import TokenRateThrottle
from tests import factories as f

HEADERS = {"Content-Type": "application/json", "User-Agent": "lean-test"}


def _sender():
    return get_user_model().objects.create_user("lean-sender")


def _scheduled():
    """Hand-offs to processing, recorded instead of run (eager Celery would process inside the count)."""
    return mock.patch.object(processing, "events_schedule", mock.Mock())


def _receive(payload, user, **headers):
    body = json.dumps(payload).encode()
    with _scheduled() as schedule, CaptureQueriesContext(connection) as ctx:
        answer = services.event_receive(body=body, user=user, headers={**HEADERS, **headers}, remote_addr="10.0.0.7")
    if answer.status == 202:
        schedule.assert_called_once()
        assert str(schedule.call_args.args[0][0]) == answer.body["id"]
    else:
        schedule.assert_not_called()
    return answer, [q["sql"] for q in ctx.captured_queries]


def _as_recorded(entry: AuditEntry) -> dict:
    """What `audit.record` would have written for this entry's record: content and hash from scratch."""
    doc = entry.document
    rebuilt = audit.entry_content(at=entry.at, actor=doc["actor"], action=doc["action"],
                                  object_type=doc["object_type"], object_id=doc["object_id"],
                                  event_id=doc["event_id"], before=doc["before"], after=doc["after"],
                                  correlation_id=doc["correlation_id"])
    content = audit.canonical_json(rebuilt).decode()
    return {"content": content, "hash": audit.compute_entry_hash(AuditEntry(content=content))}


def _audit_verifies() -> None:
    audit.chain_seal()
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert out.getvalue().startswith("OK "), out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_new_event_is_one_statement_committed_by_itself(entity):
    user = _sender()
    answer, sql = _receive(f.customer(), user)

    assert answer.status == 202
    # One round trip: the statement is its own transaction (autocommit), so no BEGIN and no COMMIT.
    assert len(sql) == 1, sql
    assert sql[0].lstrip().startswith("WITH") and "audit_auditentry" in sql[0]
    event = Event.objects.get(pk=answer.body["id"])
    receipt = Receipt.objects.get(pk=event.receipt_id)
    assert (receipt.endpoint, receipt.outcome, receipt.status_code) == ("single", "accepted", 202)
    assert receipt.headers == {"Content-Type": "application/json", "User-Agent": "lean-test"}
    assert str(receipt.remote_addr) == "10.0.0.7"
    [entry] = AuditEntry.objects.filter(action="event.received", event_id=event.pk)
    assert entry.after["receipt"] == receipt.pk  # the id drawn in the same statement, as a number
    assert entry.after["payload_sha256"] == event.payload_hash
    assert (entry.actor, entry.object_type, entry.object_id) == ("lean-sender", "event", str(event.pk))
    assert entry.at == event.received_at
    assert {"content": entry.content, "hash": entry.entry_hash} == _as_recorded(entry)
    assert answer.raw == event.response_body.encode()
    _audit_verifies()


@pytest.mark.django_db(transaction=True)
def test_replays_and_conflicts_after_the_lean_attempt_answer_as_before(entity):
    user = _sender()
    payload = f.customer()
    first, _ = _receive(payload, user, **{"Idempotency-Key": "k-1"})
    replay, replay_sql = _receive(payload, user, **{"Idempotency-Key": "k-1"})
    changed = json.loads(json.dumps(payload))
    changed["data"]["name"] = "Someone else"
    conflict, _ = _receive(changed, user)
    other = f.customer()
    key_taken, _ = _receive(other, user, **{"Idempotency-Key": "k-1"})

    assert first.status == 202
    assert (replay.status, replay.headers, replay.raw) == (200, {"Idempotent-Replayed": "true"}, first.raw)
    # The lean statement wrote nothing (its identity is taken), then the transaction that looks decided.
    assert replay_sql[0].lstrip().startswith("WITH") and "BEGIN" not in replay_sql[0]
    assert conflict.status == 409 and conflict.body["code"] == "idempotency_conflict"
    assert key_taken.status == 409 and "Idempotency-Key 'k-1'" in key_taken.body["detail"]
    assert [(r.outcome, r.status_code) for r in Receipt.objects.order_by("id")] == [
        ("accepted", 202), ("replayed", 200), ("conflict", 409), ("conflict", 409)]
    assert Event.objects.count() == 1
    assert not Event.objects.filter(event_id=other["event_id"]).exists()
    assert AuditEntry.objects.filter(action="event.received").count() == 1
    assert AuditEntry.objects.filter(action="receipt.conflict").count() == 2
    _audit_verifies()


@pytest.mark.django_db(transaction=True)
def test_a_batch_is_one_statement_with_bad_items_mixed_in(entity):
    user = _sender()
    good = [f.customer() for _ in range(6)]
    good[2]["event_id"] += "\u2028x"  # rendered escaped, as DRF renders it
    invalid = f.customer()
    invalid["data"].pop("name")
    conflict = json.loads(json.dumps(good[0]))
    conflict["data"]["name"] = "changed"
    not_a_dict = "nonsense"
    events = [good[0], invalid, good[1], good[0], conflict, not_a_dict, *good[2:]]
    body = json.dumps({"events": events}).encode()

    with _scheduled() as schedule, CaptureQueriesContext(connection) as ctx:
        answer = services.event_batch_receive(body=body, user=user, headers=HEADERS, remote_addr="10.0.0.7")

    statuses = [r["status"] for r in answer.body["results"]]
    assert statuses == [202, 422, 202, 200, 409, 422, 202, 202, 202, 202]
    # Receipt, events and audit entries: one statement, its own transaction; then the look-up of the
    # rows the duplicates met (the in-batch duplicate and the conflict).
    sql = [q["sql"] for q in ctx.captured_queries]
    assert len(sql) == 2, sql
    assert sql[0].lstrip().startswith("WITH") and "audit_auditentry" in sql[0]
    results = answer.body["results"]
    assert answer.raw == JSONRenderer().render(answer.body)  # the bytes DRF would have sent
    assert results[3]["body"] == results[0]["body"] and results[3]["headers"] == {"Idempotent-Replayed": "true"}
    assert results[1]["body"]["errors"][0]["field"] == "events[1].data.name"
    assert results[5]["body"]["code"] == "invalid_event"
    [receipt] = Receipt.objects.all()
    assert (receipt.endpoint, receipt.outcome, receipt.status_code) == ("batch", "batch", 200)
    assert receipt.detail == {"events": 10, "invalid": 2}
    assert bytes(receipt.body) == body  # nothing lost: the bad items are kept with the rest
    accepted = [r["body"]["id"] for r in results if r["status"] == 202]
    schedule.assert_called_once()  # one hand-off for the batch, in the batch's order
    assert [str(i) for i in schedule.call_args.args[0]] == accepted
    assert set(map(str, Event.objects.values_list("id", flat=True))) == set(accepted)
    assert list(Event.objects.order_by("seq").values_list("event_id", flat=True)) == [
        e["event_id"] for e in [good[0], good[1], *good[2:]]]  # numbered in the batch's order
    entries = list(AuditEntry.objects.filter(action="event.received").order_by("id"))
    assert sorted(e.object_id for e in entries) == sorted(accepted)
    for entry in entries:
        assert entry.after["receipt"] == receipt.pk
        assert {"content": entry.content, "hash": entry.entry_hash} == _as_recorded(entry)
    _audit_verifies()


@pytest.mark.django_db(transaction=True)
def test_a_batch_of_duplicates_only_writes_its_receipt(entity):
    user = _sender()
    events = [f.customer() for _ in range(3)]
    body = json.dumps({"events": events}).encode()
    services.event_batch_receive(body=body, user=user, headers=HEADERS)
    again = services.event_batch_receive(body=body, user=user, headers=HEADERS)

    assert [r["status"] for r in again.body["results"]] == [200, 200, 200]
    assert again.raw == JSONRenderer().render(again.body)
    assert Receipt.objects.count() == 2 and Event.objects.count() == 3
    assert AuditEntry.objects.filter(action="event.received").count() == 3
    _audit_verifies()


@pytest.mark.django_db(transaction=True)
def test_a_batch_outside_the_tokens_binding_records_its_refusal_in_the_same_statement(entity):
    user = _sender()
    allowed_one, refused_one = f.customer(), f.customer()
    body = json.dumps({"events": [allowed_one, refused_one]}).encode()

    answer = services.event_batch_receive(body=body, user=user, headers=HEADERS,
                                          allowed=lambda p: p["event_id"] == allowed_one["event_id"])

    assert [r["status"] for r in answer.body["results"]] == [202, 403]
    [receipt] = Receipt.objects.all()
    assert receipt.detail == {"events": 2, "invalid": 0, "forbidden": 1}
    forbidden = AuditEntry.objects.get(action="receipt.forbidden")
    assert (forbidden.object_type, forbidden.object_id) == ("receipt", str(receipt.pk))
    assert forbidden.after["events"] == [{"index": 1, "source_system": refused_one["source_system"],
                                          "event_id": refused_one["event_id"], "entity": "US01"}]
    received = AuditEntry.objects.get(action="event.received")
    assert forbidden.pk < received.pk  # the refusal first, as before
    assert {"content": forbidden.content, "hash": forbidden.entry_hash} == _as_recorded(forbidden)
    _audit_verifies()


def test_an_entry_template_names_the_id_in_content_and_object_id():
    entry = audit.entry_template(actor="x", action="receipt.forbidden", object_type="receipt",
                                 object_id=audit.DB_ID, after={"receipt": audit.DB_ID, "note": "ok"})
    assert entry.object_id == audit.SLOT_TOKEN
    assert f'"receipt":{audit.SLOT_TOKEN}' in entry.content
    assert f'"object_id":"{audit.SLOT_TOKEN}"' in entry.content


@pytest.mark.django_db(transaction=True)
def test_a_new_event_over_http_is_one_database_round_trip(entity, settings):
    """The whole request, middleware, token (cached) and throttle included: one statement to PostgreSQL."""
    settings.TIEOUT_TOKEN_CACHE_SECONDS = 5
    raw = tokens.token_issue(username="lean-http", role="integration", actor="test")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    with _scheduled():
        first = client.post("/api/v1/events", json.dumps(f.customer()), content_type="application/json")
        assert first.status_code == 202
        with CaptureQueriesContext(connection) as ctx:
            response = client.post("/api/v1/events", json.dumps(f.customer()), content_type="application/json")
    assert response.status_code == 202
    assert response["X-Correlation-ID"]
    assert len(ctx.captured_queries) == 1, [q["sql"][:80] for q in ctx.captured_queries]


@pytest.mark.django_db
def test_a_cached_token_is_checked_and_throttled_in_one_redis_round_trip(entity, settings, monkeypatch):
    settings.TIEOUT_TOKEN_CACHE_SECONDS = 5
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"token": "3/min"})
    sent = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        sent.append(command)
        return original(self, command, check_health=check_health)

    raw = tokens.token_issue(username="lean-throttle", role="integration", actor="test")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    statuses = [client.get("/api/v1/events").status_code]  # looked up, then cached
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    for _ in range(3):
        sent.clear()
        statuses.append(client.get("/api/v1/events").status_code)
        assert len(sent) == 1  # the revocation counter and the throttle's INCR + EXPIRE, pipelined
    assert statuses == [200, 200, 200, 429]  # each request counted once


@pytest.mark.django_db(transaction=True)
def test_the_lean_statement_is_the_health_check_of_a_kept_connection(entity):
    """A connection kept from an earlier request is not pinged first (Django's CONN_HEALTH_CHECKS would send
    `SELECT 1`): the statement is the check, and a dead connection is replaced and the event accepted once."""
    user = _sender()
    assert _receive(f.customer(), user)[0].status == 202
    pid = connection.connection.info.backend_pid
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    connection.health_check_done = False  # a new request, as `close_old_connections` leaves it

    payload = f.customer()
    answer, _ = _receive(payload, user)

    assert answer.status == 202
    assert connection.connection.info.backend_pid != pid
    assert Event.objects.filter(event_id=payload["event_id"]).count() == 1
    assert AuditEntry.objects.filter(action="event.received", event_id=answer.body["id"]).count() == 1
