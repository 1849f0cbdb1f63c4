"""Status back to the source: signed Standard Webhooks callbacks on posted, exception and resolution.

A local receiver (tests/standins/webhooks.py) verifies every POST with `standardwebhooks`; deliveries
are followed through their rows, their audit entries and `GET /api/v1/events/{id}/callbacks`. Retries
are driven as production drives them: the sweep re-queues deliveries whose `next_attempt_at` has passed
(tests move that time into the past instead of waiting). Celery runs eagerly here, except in the one
test at the end that goes through Redis to a real worker on the `callbacks` queue.
"""
import base64
import datetime
import hashlib
import hmac
import io
import json
import os
import socket
import time

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient
from standardwebhooks import Webhook, WebhookVerificationError

from audit.models import AuditEntry
from billing_sync import callbacks, tokens
from billing_sync import services as billing
from billing_sync.models import CallbackDelivery, SourceSystem
from billing_sync.tasks import deliver_callback, sweep_callbacks
from config import correlation
from exceptions_queue import services as queue
from exceptions_queue.models import ExceptionRecord
from ledger import services as ledger
from ledger.models import Journal
from tests import factories as f
from tests.fixtures import _user_api
from tests.helpers import send, wait_until
from tests.standins.webhooks import WebhookReceiver

pytestmark = pytest.mark.django_db

SECRET_ENV = "TIEOUT_TEST_CALLBACK_SECRET"
# Set at collection, before any session fixture runs, so that the real Celery worker process (started
# once per session with this environment) can sign too. Tests that need it absent use monkeypatch.
os.environ.setdefault(SECRET_ENV, "whsec_" + base64.b64encode(os.urandom(32)).decode())


@pytest.fixture
def secret():
    return os.environ[SECRET_ENV]


@pytest.fixture
def receiver(secret):
    server = WebhookReceiver(secret).start()
    yield server
    server.stop()


def configure(url, *, name=f.SOURCE, is_active=True):
    source, _ = callbacks.source_system_configure(name=name, callback_url=url, secret_env=SECRET_ENV,
                                                  is_active=is_active, actor="test")
    return source


@pytest.fixture
def source(receiver, db):
    return configure(f"{receiver.url}/hooks/tieout?token=abc")


@pytest.fixture
def run_after_commit(django_capture_on_commit_callbacks):
    """Call a function and run the after-commit work it queued, as a committed transaction would."""
    def run(fn, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(*args, **kwargs)
    return run


def dead_url() -> str:
    """A URL nobody listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks"


def posted_invoice(api) -> dict:
    customer = f.customer()
    send(api, customer)
    event = send(api, f.invoice(customer_id=customer["data"]["customer_id"], lines=[("100.00", "7.25")]))
    assert event["status"] == "posted", event
    return event


def deliveries(event_id, kind=None) -> list[CallbackDelivery]:
    qs = CallbackDelivery.objects.filter(event_id=event_id).order_by("created_at", "id")
    return list(qs.filter(kind=kind) if kind else qs)


def make_due(delivery) -> None:
    past = timezone.now() - datetime.timedelta(seconds=1)
    CallbackDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=past)


def audit_actions(delivery) -> list[str]:
    return list(AuditEntry.objects.filter(object_type="callback_delivery", object_id=str(delivery.pk))
                .order_by("id").values_list("action", flat=True))


# --------------------------------------------------------------------------------------------- the three kinds
def test_posted_event_sends_one_signed_callback_with_the_event_resource(entity, integration, receiver, source):
    event = posted_invoice(integration)

    [delivery] = deliveries(event["id"])
    assert (delivery.kind, delivery.status, delivery.attempts, delivery.last_status_code) == (
        "event.posted", "delivered", 1, 204)
    assert delivery.delivered_at is not None and delivery.next_attempt_at is None
    [received] = receiver.deliveries
    assert received.verified, received.error
    assert received.path == "/hooks/tieout?token=abc"
    assert received.headers["webhook-id"] == str(delivery.pk)
    assert received.headers["content-type"] == "application/json"
    assert received.headers["webhook-signature"].startswith("v1,")
    assert received.body == delivery.payload.encode()  # the row keeps the exact bytes sent
    body = json.loads(received.body)
    assert body["type"] == "event.posted"
    assert body["timestamp"] == delivery.created_at.isoformat().replace("+00:00", "Z")
    assert body["data"] == integration.event(event["id"])  # what GET /api/v1/events/{id} answers
    assert body["data"]["status"] == "posted" and body["data"]["journal_ids"]
    assert audit_actions(delivery) == ["callback.queued", "callback.delivered"]
    assert AuditEntry.objects.filter(object_id=str(delivery.pk), event_id=event["id"]).count() == 2


def test_customer_event_without_journals_sends_nothing(entity, integration, receiver, source):
    event = send(integration, f.customer())
    assert event["status"] == "processed"
    assert deliveries(event["id"]) == [] and receiver.deliveries == []


def test_exception_sends_event_exception_with_the_code(entity, integration, receiver, source):
    event = send(integration, f.invoice(customer_id="cus_nobody", lines=[("10.00", "0")]))
    assert event["status"] == "exception"

    [delivery] = deliveries(event["id"])
    assert (delivery.kind, delivery.status) == ("event.exception", "delivered")
    [received] = receiver.verified
    data = received.payload["data"]
    assert received.payload["type"] == "event.exception"
    assert data["status"] == "exception"
    assert data["exception"]["code"] == "unknown_customer"
    assert data["exception"]["status"] == "open"


def test_resolution_by_hand_sends_event_resolved_with_the_status_it_led_to(entity, integration, finance, receiver,
                                                                           source):
    event = send(integration, f.invoice(customer_id="cus_nobody", lines=[("10.00", "0")]))
    response = finance.post(f"/api/v1/exceptions/{event['exception']['id']}/resolve",
                            {"resolution": "Sent by mistake; cancelled in billing."})
    assert response.status_code == 200, response.content

    assert [d.kind for d in deliveries(event["id"])] == ["event.exception", "event.resolved"]
    resolved = receiver.verified[-1].payload
    assert resolved["type"] == "event.resolved"
    # Fixed after the transaction committed: the event's new status, not the one it had mid-way.
    assert resolved["data"]["status"] == "ignored"
    assert resolved["data"]["exception"]["status"] == "resolved"
    assert resolved["data"] == integration.event(event["id"])


def test_the_missing_customer_arriving_sends_resolved_then_posted(entity, integration, receiver, source):
    event = send(integration, f.invoice(customer_id="cus_late", lines=[("10.00", "0")]))
    send(integration, f.customer("cus_late"))
    assert integration.event(event["id"])["status"] == "posted"

    assert [d.kind for d in deliveries(event["id"])] == ["event.exception", "event.resolved", "event.posted"]
    assert all(d.status == "delivered" for d in deliveries(event["id"]))
    kinds = [r.payload["type"] for r in receiver.verified]
    assert kinds == ["event.exception", "event.resolved", "event.posted"]
    assert receiver.verified[1].payload["data"]["exception"]["status"] == "resolved"


def test_a_failed_posting_sends_event_exception(entity, integration, receiver, source, run_after_commit):
    customer = f.customer()
    send(integration, customer)
    # Received and processed, but its after-commit posting never runs: the posting then fails for good.
    response = integration.client.post("/api/v1/events", json.dumps(f.invoice(
        customer_id=customer["data"]["customer_id"], lines=[("10.00", "0")])), content_type="application/json")
    event_id = response.json()["id"]
    billing.event_process(event_id=event_id)
    journal = Journal.objects.get(event_id=event_id)
    run_after_commit(ledger.journal_post_failed, journal_id=journal.pk, message="ERP said no")

    event = integration.event(event_id)
    assert event["status"] == "exception"
    assert [d.kind for d in deliveries(event_id)] == ["event.exception"]
    assert receiver.verified[-1].payload["data"]["exception"]["code"] == "posting_failed"


# --------------------------------------------------------------------------------------------- retries
def test_receiver_answering_500_then_200_is_retried_and_each_attempt_recorded(entity, integration, receiver, source,
                                                                              run_after_commit):
    receiver.faults.add("error_500")
    event = posted_invoice(integration)

    [delivery] = deliveries(event["id"])
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    assert delivery.last_error.startswith("HTTP 500")
    wait = (delivery.next_attempt_at - timezone.now()).total_seconds()
    assert 0 < wait <= 10  # the first backoff step, with jitter

    # Not due yet: neither a direct call nor the sweep sends it.
    assert callbacks.deliver(delivery.pk).sent is False
    assert run_after_commit(sweep_callbacks) == 0
    assert len(receiver.deliveries) == 1

    make_due(delivery)
    assert run_after_commit(sweep_callbacks) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code, delivery.last_error) == (
        "delivered", 2, 204, "")
    first, second = receiver.deliveries
    assert first.verified and second.verified
    assert first.body == second.body  # the same bytes, re-signed
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == str(delivery.pk)
    assert audit_actions(delivery) == ["callback.queued", "callback.attempt_failed", "callback.delivered"]
    failed = AuditEntry.objects.get(object_id=str(delivery.pk), action="callback.attempt_failed").after
    assert (failed["attempt"], failed["status_code"]) == (1, 500)
    assert failed["payload_sha256"] == hashlib.sha256(delivery.payload.encode()).hexdigest()


def test_a_timeout_is_a_failed_attempt(entity, integration, receiver, source, settings):
    settings.TIEOUT_CALLBACK_READ_TIMEOUT = 0.3
    receiver.slow_seconds = 1.0
    receiver.faults.add("timeout_before")
    event = posted_invoice(integration)
    [delivery] = deliveries(event["id"])
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, None)
    assert delivery.last_error.startswith("timeout")
    assert "token=abc" not in delivery.last_error  # the URL's query may be a credential


def test_receiver_down_for_every_attempt_fails_and_opens_callback_failed(entity, integration, finance, receiver,
                                                                         settings, run_after_commit):
    settings.TIEOUT_CALLBACK_MAX_ATTEMPTS = 3
    configure(dead_url())
    event = posted_invoice(integration)
    [delivery] = deliveries(event["id"])
    for _ in range(2):
        assert delivery.status == "pending"
        make_due(delivery)
        run_after_commit(sweep_callbacks)
        delivery.refresh_from_db()

    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("failed", 3, None)
    assert delivery.last_error.startswith("connection failed")
    assert audit_actions(delivery) == ["callback.queued", "callback.attempt_failed", "callback.attempt_failed",
                                       "callback.failed"]
    exc = ExceptionRecord.objects.get(code="callback_failed")
    assert (exc.process, exc.status, exc.event_id) == ("callback", "open", None)
    assert delivery.exception_id == exc.pk
    assert f.SOURCE in exc.message and event["id"] in exc.message
    # The books are fine: the event stays posted and its own exception slot stays empty.
    assert integration.event(event["id"])["status"] == "posted"
    assert integration.event(event["id"])["exception"] is None
    listed = finance.get("/api/v1/exceptions", status="open", code="callback_failed").json()
    assert [x["id"] for x in listed["results"]] == [str(exc.pk)]

    # A failed delivery is not sent again by the sweep ...
    assert run_after_commit(sweep_callbacks) == 0
    # ... but retry from the exception sends it, once the receiver is reachable again, and closes it.
    configure(f"{receiver.url}/hooks")
    response = finance.post(f"/api/v1/exceptions/{exc.pk}/retry")
    assert response.status_code == 200, response.content
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    exc.refresh_from_db()
    assert exc.status == "resolved"
    assert [r.payload["type"] for r in receiver.verified] == ["event.posted"]


def test_failures_of_one_source_gather_in_one_exception(entity, integration, settings):
    settings.TIEOUT_CALLBACK_MAX_ATTEMPTS = 1
    configure(dead_url())
    first = posted_invoice(integration)
    second = posted_invoice(integration)
    exc = ExceptionRecord.objects.get(code="callback_failed")
    assert {d.exception_id for d in deliveries(first["id"]) + deliveries(second["id"])} == {exc.pk}
    assert exc.message.startswith("2 status callback(s)")
    assert second["id"] in exc.message


def test_missing_secret_is_a_failed_attempt_with_a_clear_message(entity, integration, receiver, source, secret,
                                                                 monkeypatch, run_after_commit):
    monkeypatch.delenv(SECRET_ENV)
    event = posted_invoice(integration)
    [delivery] = deliveries(event["id"])
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, None)
    assert delivery.last_error == f"signing secret missing: environment variable {SECRET_ENV} is not set"
    assert receiver.deliveries == []

    monkeypatch.setenv(SECRET_ENV, "whsec_%%%not-base64")
    make_due(delivery)
    run_after_commit(sweep_callbacks)
    delivery.refresh_from_db()
    assert delivery.last_error == (f"signing secret in {SECRET_ENV} is not a Standard Webhooks secret "
                                   "(whsec_<base64>)")

    monkeypatch.setenv(SECRET_ENV, secret)
    make_due(delivery)
    run_after_commit(sweep_callbacks)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 3)
    assert not AuditEntry.objects.filter(content__icontains=secret[6:]).exists()
    assert secret[6:] not in json.dumps([entry.after for entry in AuditEntry.objects.all()])


def test_a_delivered_callback_is_never_sent_again(entity, integration, receiver, source, run_after_commit):
    event = posted_invoice(integration)
    [delivery] = deliveries(event["id"])
    deliver_callback(str(delivery.pk), 0)  # a duplicate of the first message
    deliver_callback(str(delivery.pk))
    make_due(delivery)  # even with its time in the past
    assert callbacks.deliver(delivery.pk).sent is False
    assert run_after_commit(sweep_callbacks) == 0
    assert len(receiver.deliveries) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 1)


def test_a_stale_copy_of_the_message_does_not_send_twice(entity, integration, receiver, source):
    receiver.faults.add("error_500")
    event = posted_invoice(integration)
    [delivery] = deliveries(event["id"])
    make_due(delivery)
    deliver_callback(str(delivery.pk), 0)  # queued at attempt 0, but attempt 1 already happened
    assert len(receiver.deliveries) == 1
    deliver_callback(str(delivery.pk), 1)  # the sweep's copy: its turn
    assert len(receiver.deliveries) == 2
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 2)


def test_backoff_doubles_with_jitter_and_is_capped_at_an_hour(settings):
    for attempts in range(1, 20):
        ceiling = min(settings.TIEOUT_CALLBACK_BACKOFF_CAP, settings.TIEOUT_CALLBACK_BACKOFF_BASE * 2 ** (attempts - 1))
        waits = {callbacks.backoff(attempts) for _ in range(20)}
        assert all(ceiling / 2 <= w <= ceiling <= 3600 for w in waits)
        assert len(waits) > 1  # jittered


# --------------------------------------------------------------------------------------------- signature
def test_signature_covers_id_timestamp_and_body(entity, integration, receiver, source, secret):
    posted_invoice(integration)
    [received] = receiver.deliveries
    body, headers = received.body, dict(received.headers)
    webhook = Webhook(secret)
    assert webhook.verify(body, headers)["type"] == "event.posted"

    # HMAC-SHA256 over "id.timestamp.body" with the decoded secret, computed without the library.
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(base64.b64decode(secret[6:]), signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60

    tampered = body.replace(b'"status":"posted"', b'"status":"voided"')
    assert tampered != body
    with pytest.raises(WebhookVerificationError):
        webhook.verify(tampered, headers)
    with pytest.raises(WebhookVerificationError):
        webhook.verify(body, {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 1)})
    with pytest.raises(WebhookVerificationError):
        webhook.verify(body, {**headers, "webhook-id": "another-id"})
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(os.urandom(32)).decode()).verify(body, headers)


# --------------------------------------------------------------------------------------------- who is told
def test_no_source_system_means_no_delivery(entity, integration, receiver):
    event = posted_invoice(integration)
    assert CallbackDelivery.objects.count() == 0 and receiver.deliveries == []
    assert integration.get(f"/api/v1/events/{event['id']}/callbacks").json()["results"] == []


def test_an_inactive_or_other_source_system_gets_nothing(entity, integration, receiver):
    configure(f"{receiver.url}/hooks", is_active=False)
    configure(f"{receiver.url}/other", name="another-billing")
    posted_invoice(integration)
    assert CallbackDelivery.objects.count() == 0 and receiver.deliveries == []


def test_switching_callbacks_off_cancels_what_is_still_pending(entity, integration, receiver, source,
                                                               run_after_commit):
    receiver.faults.add("error_500")
    event = posted_invoice(integration)
    configure(source.callback_url, is_active=False)
    [delivery] = deliveries(event["id"])
    make_due(delivery)
    run_after_commit(sweep_callbacks)
    delivery.refresh_from_db()
    assert delivery.status == "failed" and "switched off" in delivery.last_error
    assert len(receiver.deliveries) == 1
    assert not ExceptionRecord.objects.filter(code="callback_failed").exists()  # on purpose, not a failure


# --------------------------------------------------------------------------------------------- API
def test_api_lists_the_deliveries_of_an_event(entity, integration, receiver, source):
    receiver.faults.add("error_503")
    event = posted_invoice(integration)
    response = integration.get(f"/api/v1/events/{event['id']}/callbacks")
    assert response.status_code == 200
    [item] = response.json()["results"]
    delivery = CallbackDelivery.objects.get(event_id=event["id"])
    assert item == {
        "id": str(delivery.pk), "event": event["id"], "source_system": f.SOURCE, "kind": "event.posted",
        "status": "pending", "attempts": 1, "last_status_code": 503, "last_error": delivery.last_error,
        "created_at": delivery.created_at.isoformat().replace("+00:00", "Z"), "delivered_at": None,
        "next_attempt_at": delivery.next_attempt_at.isoformat().replace("+00:00", "Z"), "exception": None,
    }
    assert integration.get(f"/api/v1/events/{event['id']}/callbacks", kind="event.exception").json()["results"] == []
    assert len(integration.get(f"/api/v1/events/{event['id']}/callbacks", status="pending").json()["results"]) == 1


def test_only_readers_of_the_event_read_its_callbacks(entity, integration, auditor, receiver, source,
                                                      django_capture_on_commit_callbacks):
    event = posted_invoice(integration)
    path = f"/api/v1/events/{event['id']}/callbacks"
    other_source = _user_api("other-billing-system", "integration", django_capture_on_commit_callbacks)
    response = other_source.get(path)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert auditor.get(path).status_code == 200
    assert APIClient().get(path).status_code == 401


# --------------------------------------------------------------------------------------------- configuration
def test_setup_source_system_is_idempotent_audited_and_prints_the_name(db):
    def run(*args):
        out = io.StringIO()
        call_command("setup_source_system", *args, stdout=out, stderr=io.StringIO())
        return out.getvalue().splitlines()

    args = ["billing-prod", "--callback-url", "https://billing.example/hooks/tieout", "--secret-env", SECRET_ENV]
    lines = run(*args)
    assert lines[-1] == "billing-prod" and lines[0].startswith("created billing-prod")
    assert run(*args)[0].startswith("unchanged")
    assert run(*args, "--inactive")[0].startswith("updated")
    source = SourceSystem.objects.get(name="billing-prod")
    assert (source.callback_url, source.secret_env, source.is_active) == (
        "https://billing.example/hooks/tieout", SECRET_ENV, False)
    assert list(AuditEntry.objects.filter(object_type="source_system").order_by("id")
                .values_list("action", flat=True)) == ["source_system.created", "source_system.updated"]
    assert source.history.count() == 2


def test_setup_source_system_refuses_a_secret_in_place_of_its_variable_name(db):
    value = "whsec_" + base64.b64encode(os.urandom(24)).decode().rstrip("=").replace("+", "A").replace("/", "B")
    with pytest.raises(CommandError) as raised:
        call_command("setup_source_system", "billing-prod", "--callback-url", "https://billing.example/h",
                     "--secret-env", value, stdout=io.StringIO(), stderr=io.StringIO())
    assert value not in str(raised.value) and value[6:] not in str(raised.value)
    with pytest.raises(CommandError):
        call_command("setup_source_system", "billing-prod", "--callback-url", "ftp://billing.example/h",
                     "--secret-env", SECRET_ENV, stdout=io.StringIO(), stderr=io.StringIO())
    assert not SourceSystem.objects.exists()


# --------------------------------------------------------------------------------------------- real worker
@pytest.mark.worker
@pytest.mark.slow
def test_a_real_worker_delivers_on_the_callbacks_queue(live_worker, receiver):
    with correlation.bound(None), transaction.atomic():
        entity, _ = ledger.entity_setup(code="US01", currency="USD", name="Tieout US", actor="test")
        queue.approval_policy_ensure(entity=entity, actor="test")
    configure(f"{receiver.url}/hooks")
    client = APIClient()
    raw = tokens.token_issue(username="billing-system", role="integration", actor="test")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    customer = f.customer()
    customer_event = client.post("/api/v1/events", customer, format="json").json()["id"]
    # The customer first: an invoice processed at the same moment would wait for it in `exception`.
    wait_until(lambda: client.get(f"/api/v1/events/{customer_event}").json()["status"] == "processed",
               timeout=30, interval=0.1, message=live_worker.log_tail)
    invoice = client.post("/api/v1/events", f.invoice(customer_id=customer["data"]["customer_id"]), format="json")
    event_id = invoice.json()["id"]

    def posted():
        return [r for r in receiver.verified if r.payload["type"] == "event.posted"]

    [received] = wait_until(posted, timeout=30, interval=0.1, message=live_worker.log_tail)
    assert received.payload["data"]["id"] == event_id
    assert received.payload["data"]["status"] == "posted"
    delivery = CallbackDelivery.objects.get(event_id=event_id, kind="event.posted")

    def delivered() -> bool:
        delivery.refresh_from_db()
        return delivery.status == "delivered"

    wait_until(delivered, timeout=10, interval=0.1, message=lambda: f"{delivery.status}\n{live_worker.log_tail()}")
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    assert all(r.verified for r in receiver.deliveries)
