"""End to end on real infrastructure: HTTP API -> commit -> Redis -> real Celery worker -> built-in ERP.

Nothing here runs eagerly: the tests are transactional (commits are real, so the after-commit hooks
publish to the real broker) and the `live_worker` fixture's worker process, on the same test database,
does the processing and posting. Also covered: the two repair paths for work that a crash between
commit and enqueue leaves behind, the outbox sweep and the accepted-events sweep.
"""
from unittest import mock

import pytest

from billing_sync import services as billing
from billing_sync.models import Event
from billing_sync.services import processing as billing_processing
from ledger import services as ledger
from ledger.models import Journal, Outbox
from ledger.services import outbox as ledger_outbox
from tests import factories as f
from tests.helpers import send_accepted, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.slow]

POLL_SECONDS = 30
SETTLED_ELSEWHERE = {"exception", "rejected", "ignored"}  # none of these turns into `posted` by itself


def wait_for(client, event_id, statuses, worker, timeout=POLL_SECONDS) -> dict:
    """Poll the event resource until its status is one of `statuses` (bounded; fails with the worker log)."""
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)
    body = None

    def describe() -> str:
        return (f"event {event_id} is {body and body['status']}, not {sorted(statuses)} "
                f"(exception: {body and body['exception']})\n--- worker log ---\n{worker.log_tail()}")

    def reached():
        nonlocal body
        body = client.get(f"/api/v1/events/{event_id}").json()
        if body["status"] in SETTLED_ELSEWHERE - statuses:
            pytest.fail(describe())  # no point waiting
        return body if body["status"] in statuses else None

    return wait_until(reached, timeout=timeout, interval=0.1, message=describe)


def trace(client, event_id) -> dict:
    response = client.get(f"/api/v1/events/{event_id}/trace")
    assert response.status_code == 200, response.content
    return response.json()


def test_events_sent_over_http_are_processed_and_posted_by_the_worker(live_worker, us01, source):
    customer = f.customer()
    customer_id = customer["data"]["customer_id"]
    invoice = f.invoice(customer_id=customer_id, lines=[("100.00", "7.25"), ("50.00", "0")])
    invoice_id = invoice["data"]["invoice_id"]
    payment = f.payment(customer_id=customer_id, amount="100.00", allocations=[(invoice_id, "100.00")])

    # One at a time, so that the ERP numbers come out in a known order.
    sent = send_accepted(source, customer)
    assert sent["status"] == "accepted"
    assert wait_for(source, sent["id"], "processed", live_worker)["journal_ids"] == []

    sent_invoice = send_accepted(source, invoice)
    posted_invoice = wait_for(source, sent_invoice["id"], "posted", live_worker)
    sent_payment = send_accepted(source, payment)
    posted_payment = wait_for(source, sent_payment["id"], "posted", live_worker)

    for body, ref in ((posted_invoice, "JE-US01-2026-000001"), (posted_payment, "JE-US01-2026-000002")):
        assert len(body["journal_ids"]) == 1
        journal = Journal.objects.get(pk=body["journal_ids"][0])
        assert journal.status == Journal.Status.POSTED
        assert journal.erp_document_ref == ref
        assert journal.posted_at is not None
        assert journal.outbox.get().dispatched_at is not None

        lineage = trace(source, body["id"])
        assert lineage["event"]["status"] == "posted"
        assert lineage["receipt"]["endpoint"] == "single"
        [traced] = lineage["journals"]
        assert traced["id"] == str(journal.pk)
        assert traced["erp_document_ref"] == ref
        assert traced["erp_attempts"], "the ERP posting attempt is part of the trace"
        assert traced["erp_attempts"][-1]["outcome"] == "posted"
        assert traced["erp_attempts"][-1]["erp_document_ref"] == ref
        assert {"journal.created", "journal.posted"} <= {entry["action"] for entry in lineage["audit"]}

    # The worker wrote these journals under the correlation id the API answered with.
    assert Journal.objects.get(pk=posted_invoice["journal_ids"][0]).correlation_id == sent_invoice["correlation_id"]
    invoice_state = source.get(f"/api/v1/events/{sent_invoice['id']}/trace").json()["reconciliation"]["invoices"]
    assert invoice_state == [{"invoice_id": invoice_id, "open_amount": "57.25", "ledger_open_amount": "57.25",
                              "ties_out": True}]


def test_an_outbox_row_left_undispatched_is_swept_and_posted_by_the_worker(live_worker, us01, source):
    customer = f.customer()
    wait_for(source, send_accepted(source, customer)["id"], "processed", live_worker)
    invoice = f.invoice(customer_id=customer["data"]["customer_id"])

    # The "crash": the event is received but not scheduled, and this process then writes its journal with
    # the relay gone, so the outbox row is committed and never handed to Celery.
    with mock.patch.object(billing_processing, "events_schedule", lambda event_ids, routes=None: None):
        event_id = send_accepted(source, invoice)["id"]
    with mock.patch.object(ledger_outbox, "outbox_relay", lambda outbox_ids: None):
        assert billing.event_process(event_id=event_id) == "processed"

    journal = Journal.objects.get(event_id=event_id)
    outbox = Outbox.objects.get(journal=journal)
    assert outbox.dispatched_at is None
    live_worker.wait_idle()  # nothing was sent to the worker and it has nothing left: the journal just waits
    journal.refresh_from_db()
    assert journal.status == Journal.Status.READY

    assert ledger.outbox_sweep(older_than_seconds=0) == 1

    wait_for(source, event_id, "posted", live_worker)
    journal.refresh_from_db()
    outbox.refresh_from_db()
    assert journal.erp_document_ref == "JE-US01-2026-000001"
    assert outbox.dispatched_at is not None
    [traced] = trace(source, event_id)["journals"]
    assert traced["erp_attempts"][-1]["erp_document_ref"] == "JE-US01-2026-000001"
    assert ledger.outbox_sweep(older_than_seconds=0) == 0  # nothing left behind


def test_an_event_left_accepted_is_swept_processed_and_posted(live_worker, us01, source):
    customer = f.customer()
    wait_for(source, send_accepted(source, customer)["id"], "processed", live_worker)
    invoice = f.invoice(customer_id=customer["data"]["customer_id"])

    # The "crash" between the receipt's commit and the hand-off to Celery.
    with mock.patch.object(billing_processing, "events_schedule", lambda event_ids, routes=None: None):
        event_id = send_accepted(source, invoice)["id"]
    live_worker.wait_idle()  # nothing was handed to the worker: the event stays accepted
    assert Event.objects.get(pk=event_id).status == Event.Status.ACCEPTED

    assert billing.events_sweep_accepted(older_than_seconds=0) == 1

    body = wait_for(source, event_id, "posted", live_worker)
    assert Journal.objects.get(pk=body["journal_ids"][0]).erp_document_ref == "JE-US01-2026-000001"
    assert Event.objects.get(pk=event_id).attempts == 1
    assert billing.events_sweep_accepted(older_than_seconds=0) == 0
