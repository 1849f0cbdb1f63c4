"""Event lanes in dispatch (billing_sync/dispatch.py, config/lanes.py): each message holds one lane's events and
goes to that lane's queue, the lane of the event's customer (named in it, or found through its invoice or
payment), else of the first document it changes; eager mode keeps one ordered message. Then a real worker
of two processes consuming every lane processes several customers' interleaved histories, sent as one
batch (so several lanes' messages are in flight at once), with the outcome of one-at-a-time processing and
each document's events processed in acceptance order; and, where a RabbitMQ virtual host is named
(TIEOUT_TEST_AMQP_URL), the same lanes on RabbitMQ."""
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import F

from billing_sync import dispatch, ordering, tasks
from billing_sync.models import Event, Invoice
from billing_sync.services import processing
from config import lanes
from config.celery import app
from exceptions_queue.models import ExceptionRecord
from tests import factories as f
from tests.conftest import BASE_DIR, CeleryWorkerProcess, _reset_broker_pools, _stop, _test_database_url
from tests.fixtures import integration_client, setup_us01
from tests.helpers import send
from tests.histories import eager, outcome, wait_settled

SS = f.SOURCE


def customer_lane(customer_id: str) -> int:
    return lanes.lane_of(ordering.document_key("customer", SS, customer_id))


@pytest.fixture
def accepted_only(monkeypatch):
    """Events are accepted and left for the test to dispatch (nothing scheduled)."""
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)


def test_each_event_routes_by_its_customer_found_in_it_or_through_its_document(entity, integration, monkeypatch):
    send(integration, f.customer("cus_r"))
    send(integration, f.invoice("inv_r", customer_id="cus_r", lines=[("100.00", "0")]))
    send(integration, f.payment("pay_r", customer_id="cus_r", amount="30.00"))
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)
    named = send(integration, f.invoice("inv_r2", customer_id="cus_r", lines=[("10.00", "0")]))
    through_invoice = send(integration, f.credit_note("inv_r", "5.00"))
    through_payment = send(integration, f.refund("pay_r", "1.00"))
    unknown = send(integration, f.write_off("inv_unknown", "1.00", write_off_id="wo_u"))
    ids = [named["id"], through_invoice["id"], through_payment["id"], unknown["id"]]
    found = dispatch.lanes_of(ids)
    lane = customer_lane("cus_r")
    assert [found[i] for i in ids[:3]] == [lane, lane, lane]
    # No customer to be found: the first document it changes (the invoice is not there yet).
    assert found[unknown["id"]] == lanes.lane_of(ordering.document_key("invoice", SS, "inv_unknown"))


def test_the_route_a_request_knows_is_the_one_the_query_finds_and_spares_it(entity, integration, monkeypatch,
                                                                              django_assert_num_queries):
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)
    payloads = [f.invoice("inv_k1", customer_id="cus_k", lines=[("10.00", "0")]),
                f.payment("pay_k1", customer_id="cus_k", amount="5.00"),
                f.write_off("inv_k1", "1.00", write_off_id="wo_k")]  # names no customer: looked up
    ids = [send(integration, p)["id"] for p in payloads]
    routes = processing.events_routes(zip(ids, payloads))
    assert set(routes) == set(ids[:2])
    looked_up = dispatch.lanes_of(ids)
    with django_assert_num_queries(0):
        assert dispatch.lanes_of(ids[:2], routes) == {i: looked_up[i] for i in ids[:2]}
    with django_assert_num_queries(1):  # only the one it does not know
        assert dispatch.lanes_of(ids, routes) == looked_up


def test_the_ingest_hands_its_routes_to_the_dispatcher(entity, integration, monkeypatch):
    handed = []
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: handed.append((ids, routes)))
    single = send(integration, f.invoice("inv_h1", customer_id="cus_h", lines=[("10.00", "0")]))
    response = integration.post("/api/v1/events/batch", {"events": [
        f.invoice("inv_h2", customer_id="cus_h2", lines=[("10.00", "0")]),
        f.write_off("inv_h2", "1.00", write_off_id="wo_h")]})
    assert response.status_code == 200, response.content
    batch_ids = [r["body"]["id"] for r in response.json()["results"]]
    key = ordering.document_key
    assert [([str(i) for i in ids], routes) for ids, routes in handed] == [
        ([single["id"]], {single["id"]: key("customer", SS, "cus_h")}),
        (batch_ids, {batch_ids[0]: key("customer", SS, "cus_h2")})]


def test_an_id_the_query_cannot_read_still_gets_a_lane(db):
    missing = str(uuid.uuid4())
    assert dispatch.lanes_of([missing]) == {missing: dispatch.zlib.crc32(missing.encode()) % lanes.count()}


def test_each_message_holds_one_lanes_events_in_order(entity, integration, accepted_only, settings, monkeypatch):
    settings.TIEOUT_LANES = 8
    customers = [f"cus_m{n}" for n in range(12)]
    assert len({customer_lane(c) for c in customers}) >= 3
    ids = [send(integration, f.customer(c))["id"] for c in customers]
    ids += [send(integration, f.invoice(f"inv_{c}", customer_id=c, lines=[("10.00", "0")]))["id"] for c in customers]
    sent = []
    monkeypatch.setattr(tasks.process_events, "apply_async", lambda args, **kw: sent.append((kw.get("queue"), args[0])))
    settings.CELERY_TASK_ALWAYS_EAGER = False
    dispatch.publish(ids)
    assert sorted(i for _, batch in sent for i in batch) == sorted(ids)
    lane_by_id = dispatch.lanes_of(ids)
    for queue, batch in sent:
        assert {lanes.queue_name(lane_by_id[i]) for i in batch} == {queue}
        assert batch == sorted(batch, key=ids.index)  # acceptance order kept within a lane
    assert len({queue for queue, _ in sent}) == len({customer_lane(c) for c in customers})
    # Eager (the tests' default): no queues, the ids in order, CHUNK at a time.
    sent.clear()
    settings.CELERY_TASK_ALWAYS_EAGER = True
    dispatch.publish(ids)
    assert sent == [(None, ids[start:start + dispatch.CHUNK]) for start in range(0, len(ids), dispatch.CHUNK)]


# ------------------------------------------------------------------------------------------ real worker
def _customer_history(p: str, n: int) -> list[dict]:
    cus, inv, inv2, pay = f"{p}c{n}", f"{p}c{n}_inv", f"{p}c{n}_inv2", f"{p}c{n}_pay"
    return [
        f.customer(cus, event_id=f"{p}c{n}_e0"),
        f.invoice(inv, customer_id=cus, lines=[("100.00", "0")], event_id=f"{p}c{n}_e1"),
        f.invoice(inv, customer_id=cus, lines=[("120.00", "0")], version=2, type_="invoice.amended",
                  event_id=f"{p}c{n}_e2"),
        f.payment(pay, customer_id=cus, amount="50.00", allocations=[(inv, "50.00")], event_id=f"{p}c{n}_e3"),
        f.credit_note(inv, "10.00", credit_note_id=f"{p}c{n}_cn", event_id=f"{p}c{n}_e4"),
        f.invoice(inv2, customer_id=cus, lines=[("40.00", "0")], event_id=f"{p}c{n}_e5"),
        f.invoice_voided(inv2, event_id=f"{p}c{n}_e6"),
        f.refund(pay, "5.00", invoice_id=inv, refund_id=f"{p}c{n}_re", event_id=f"{p}c{n}_e7"),
    ]


def _spread(p: str, customers: int) -> list[int]:
    """Customer numbers whose customers fall in distinct lanes (hashes of random names might share a few)."""
    chosen: dict[int, int] = {}
    for n in range(1000):
        chosen.setdefault(customer_lane(f"{p}c{n}"), n)
        if len(chosen) == customers:
            return sorted(chosen.values())
    raise AssertionError("not enough lanes")


def _interleaved(p: str, customers: list[int]) -> list[dict]:
    histories = [_customer_history(p, n) for n in customers]
    return [h[i] for i in range(len(histories[0])) for h in histories]  # round robin: every customer at once


def _send_batch(client, payloads) -> None:
    response = client.post("/api/v1/events/batch", {"events": payloads}, format="json")
    assert response.status_code < 300, response.content


@pytest.mark.worker
@pytest.mark.slow
def test_a_two_process_worker_on_every_lane_keeps_each_documents_order(live_worker, us01, source, settings):
    queues = {q["name"] for q in live_worker.inspect().active_queues()[live_worker.nodename]}
    assert set(lanes.all_queues()) <= queues and {"celery", "posting"} <= queues

    customers = 6
    results = []
    for mode in ("one_at_a_time", "worker"):
        prefix = f"l{uuid.uuid4().hex[:8]}_"
        chosen = _spread(prefix, customers)
        payloads = _interleaved(prefix, chosen)
        if mode == "one_at_a_time":
            with eager(settings):
                _send_batch(source, payloads)
        else:
            _send_batch(source, payloads)
            wait_settled(prefix, len(payloads), live_worker, 90)
        results.append(outcome(prefix))
    reference, workers = results
    assert workers == reference

    events = list(Event.objects.filter(event_id__startswith=prefix).order_by("seq"))
    assert len(set(dispatch.lanes_of([str(e.pk) for e in events]).values())) >= customers, "one lane per customer"
    assert not [e for e in events if e.status in ("accepted", "exception")], [(e.event_id, e.status) for e in events]
    assert not ExceptionRecord.objects.filter(event__in=events).exclude(status="resolved").exists()
    # Each document's events were processed in acceptance order, whichever process or lane took them.
    by_document: dict[str, list[Event]] = {}
    for event in events:
        for key in event.order_keys:
            if key.startswith(ordering.WRITE):
                by_document.setdefault(key, []).append(event)
    for key, touching in by_document.items():
        times = [e.processed_at for e in touching]
        assert times == sorted(times), (key, [(e.event_id, e.processed_at) for e in touching])
    for n in chosen:
        invoice = Invoice.objects.get(invoice_id=f"{prefix}c{n}_inv")
        assert (invoice.version, invoice.total) == (2, 120)  # the amendment was not taken for stale
        assert Invoice.objects.filter(invoice_id=f"{prefix}c{n}_inv2", status="voided").exists()
    assert not Invoice.objects.filter(invoice_id__startswith=prefix, applied_total__gt=F("total")).exists()


AMQP_URL = os.environ.get("TIEOUT_TEST_AMQP_URL", "")


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.skipif(not AMQP_URL, reason="set TIEOUT_TEST_AMQP_URL to a RabbitMQ virtual host of the tests' own")
def test_the_lanes_work_on_rabbitmq(transactional_db, settings, tmp_path):
    """A two-process worker on RabbitMQ (`CELERY_BROKER_URL=amqp://...`) declares and drains the lanes."""
    setup_us01()
    client = integration_client()
    nodename = f"tieout-amqp-{os.getpid()}@localhost"
    worker = CeleryWorkerProcess(app, nodename, AMQP_URL, _test_database_url(connection.settings_dict),
                                 tmp_path / "worker.log")
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="config.settings.test", CELERY_TASK_ALWAYS_EAGER="false",
               DATABASE_URL=worker.database_url, CELERY_BROKER_URL=AMQP_URL, PYTHONUNBUFFERED="1")
    argv = [str(Path(sys.executable).parent / "celery"), "-A", "config", "worker", "-Q", "celery,posting,callbacks", "--pool=prefork", "-c", "2", "-l", "warning",
            "-n", nodename, "--without-gossip", "--without-mingle", "--purge"]
    previous = (app.conf.broker_url, app.conf.task_always_eager)
    app.conf.broker_url, app.conf.task_always_eager = AMQP_URL, False
    settings.CELERY_TASK_ALWAYS_EAGER = False
    _reset_broker_pools(app)
    with open(worker.log_path, "wb") as log:
        worker.process = subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not worker.ping(timeout=0.5):
                assert worker.process.poll() is None and time.monotonic() < deadline, worker.log_tail()
            queues = {q["name"] for q in worker.inspect().active_queues()[nodename]}
            assert set(lanes.all_queues()) <= queues
            prefix = f"q{uuid.uuid4().hex[:8]}_"
            payloads = _interleaved(prefix, _spread(prefix, 4))
            _send_batch(client, payloads)
            wait_settled(prefix, len(payloads), worker, 90)
            events = Event.objects.filter(event_id__startswith=prefix)
            assert len(set(dispatch.lanes_of([str(e.pk) for e in events]).values())) >= 4
            assert not events.filter(status__in=["accepted", "exception"]).exists()
            assert Invoice.objects.filter(invoice_id__startswith=prefix, version=2).count() == 4
        finally:
            _stop(worker.process)
            app.conf.broker_url, app.conf.task_always_eager = previous
            _reset_broker_pools(app)
