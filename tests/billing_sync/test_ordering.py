"""Acceptance order per document (billing_sync/ordering.py), one event at a time and with real workers.

The first part runs eagerly (each event processed in its request, one at a time) and pins the rules:
which documents an event touches, what holds an event back, what passes a parked one, and that a batch
numbers its events in the batch's order. The second part sends histories in order through the API to
a real Celery worker of two processes on real Redis, and compares the outcome with one-at-a-time
processing of the same history: the two cases of issue #10 by name, then random histories (hypothesis).
"""
import datetime
import uuid

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from audit.models import AuditEntry
from billing_sync import ordering, tasks
from billing_sync import services as billing
from billing_sync.models import Event, Invoice, Payment
from billing_sync.services import processing
from exceptions_queue.models import ExceptionRecord
from ledger.models import JournalLine
from tests import factories as f
from tests.helpers import send
from tests.histories import CUSTOMER_HISTORY, customer_events, eager, interleave, outcome, wait_settled

SS = f.SOURCE


def k(kind, document_id) -> str:
    return f"{kind}:{SS}:{document_id}"


# ------------------------------------------------------------------------------------------ the rules
def test_documents_of_each_type():
    writes, reads, provides = ordering.documents_of(f.invoice("in1", customer_id="c1"))
    assert (writes, reads, provides) == ({k("invoice", "in1")}, {k("customer", "c1")}, [k("invoice", "in1")])
    writes, reads, provides = ordering.documents_of(
        f.payment("p1", customer_id="c1", amount="10.00", allocations=[("in1", "4.00"), ("in2", "6.00")]))
    assert writes == {k("payment", "p1"), k("invoice", "in1"), k("invoice", "in2")}
    assert (reads, provides) == ({k("customer", "c1")}, [k("payment", "p1")])
    writes, reads, _ = ordering.documents_of(f.refund("p1", "1.00", invoice_id="in1", refund_id="r1"))
    assert writes == {k("payment", "p1"), k("invoice", "in1"), k("refund", "r1")} and not reads
    writes, _, provides = ordering.documents_of(f.customer("c1"))
    assert writes == {k("customer", "c1")} == set(provides)
    for payload in (f.credit_note("in1", "1.00"), f.write_off("in1", "1.00"), f.invoice_voided("in1")):
        assert k("invoice", "in1") in ordering.documents_of(payload)[0]


def test_order_keys_mark_what_an_event_changes():
    keys = ordering.order_keys(f.invoice("in1", customer_id="c1"))
    assert keys == sorted([k("customer", "c1"), k("invoice", "in1"), "w|" + k("invoice", "in1")])


needs_db = pytest.mark.django_db


@needs_db
def test_a_batch_numbers_its_events_in_the_batch_order_not_the_insert_order(entity, integration):
    events = [f.customer("cus_b", event_id=f"evt_{name}") for name in ("zz", "aa", "mm")]
    events[1] = f.customer("cus_b", version=2, event_id="evt_aa")
    events[2] = f.customer("cus_b", version=3, event_id="evt_mm")
    response = integration.post("/api/v1/events/batch", {"events": events})
    assert response.status_code == 200, response.content
    seqs = [Event.objects.get(event_id=e["event_id"]).seq for e in events]
    assert seqs == sorted(seqs), seqs
    assert [Event.objects.get(event_id=e["event_id"]).status for e in events] == ["processed"] * 3


@needs_db
def test_early_payment_keeps_its_place_ahead_of_the_credit_note(entity, integration):
    send(integration, f.customer("cus_e"))
    payment = send(integration, f.payment("pay_e", customer_id="cus_e", amount="100.00",
                                          allocations=[("inv_e", "100.00")]))
    assert payment["exception"]["code"] == "awaiting_dependency"
    send(integration, f.invoice("inv_e", customer_id="cus_e", lines=[("100.00", "0")]))
    assert integration.event(payment["id"])["status"] == "posted"  # woken in the invoice's transaction
    note = send(integration, f.credit_note("inv_e", "20.00", credit_note_id="cn_e"))
    refund = send(integration, f.refund("pay_e", "20.00", invoice_id="inv_e", refund_id="re_e"))
    assert (note["status"], refund["status"]) == ("posted", "posted")
    assert not ExceptionRecord.objects.exclude(status="resolved").exists()


@needs_db
def test_later_events_on_a_parked_documents_wait_and_others_do_not(entity, integration):
    send(integration, f.customer("cus_w"))
    send(integration, f.customer("cus_other"))
    payment = send(integration, f.payment("pay_w", customer_id="cus_w", amount="50.00",
                                          allocations=[("inv_w", "50.00")]))
    refund = send(integration, f.refund("pay_w", "10.00", invoice_id="inv_w", refund_id="re_w"))
    assert refund["status"] == "accepted" and refund["exception"] is None  # held behind the payment
    held = Event.objects.get(pk=refund["id"])
    assert ordering.held_by(held) == Event.objects.get(pk=payment["id"]).pk
    # Another invoice of the same customer only reads the customer: it does not wait.
    assert send(integration, f.invoice("inv_w2", customer_id="cus_w", lines=[("5.00", "0")]))["status"] == "posted"
    # Another customer's documents are not held up.
    assert send(integration, f.invoice("inv_o", customer_id="cus_other", lines=[("5.00", "0")]))["status"] == "posted"

    send(integration, f.invoice("inv_w", customer_id="cus_w", lines=[("50.00", "0")]))
    assert integration.event(payment["id"])["status"] == "posted"
    assert integration.event(refund["id"])["status"] == "posted"
    assert Payment.objects.get(payment_id="pay_w").refunded_total == 10


@needs_db
def test_a_business_rule_exception_does_not_hold_what_follows(entity, integration, finance):
    send(integration, f.customer("cus_b"))
    send(integration, f.invoice("inv_b", customer_id="cus_b", lines=[("100.00", "0")]))
    over = send(integration, f.payment("pay_b", customer_id="cus_b", amount="150.00",
                                       allocations=[("inv_b", "150.00")]))
    assert over["exception"]["code"] == "over_application"
    # The amendment that fixes the cause is processed (one at a time, it would be), then a person retries.
    amended = send(integration, f.invoice("inv_b", customer_id="cus_b", lines=[("150.00", "0")], version=2,
                                          type_="invoice.amended"))
    assert amended["status"] == "posted"
    response = finance.post(f"/api/v1/exceptions/{over['exception']['id']}/retry")
    assert response.status_code == 200 and response.json()["status"] == "resolved"


@needs_db
def test_resolving_a_parked_event_releases_the_events_behind_it(entity, integration, finance):
    send(integration, f.customer("cus_r"))
    void = send(integration, f.invoice_voided("inv_r"))
    assert void["exception"]["code"] == "awaiting_dependency"
    note = send(integration, f.credit_note("inv_r", "5.00"))
    assert note["status"] == "accepted"  # behind the void
    response = finance.post(f"/api/v1/exceptions/{void['exception']['id']}/resolve",
                            {"resolution": "invoice never existed in billing"})
    assert response.status_code == 200, response.content
    assert integration.event(void["id"])["status"] == "ignored"
    after = integration.event(note["id"])
    assert after["status"] == "exception" and after["exception"]["code"] == "awaiting_dependency"


@needs_db
def test_a_stale_amendment_keeps_its_place_behind_an_application_held_by_a_parked_payment(entity, integration):
    """The stale amendment of inv_1 touches inv_1, which the held application of pay_s changes: one at a
    time it waits there (pay_s is parked on inv_0); once inv_0 arrives all three run, and it is ignored."""
    send(integration, f.customer("cus_s"))
    payment = send(integration, f.payment("pay_s", customer_id="cus_s", amount="100.00",
                                          allocations=[("inv_0", "40.00")]))
    send(integration, f.invoice("inv_1", customer_id="cus_s", lines=[("100.00", "0")]))
    applied = send(integration, f.payment_applied("pay_s", [("inv_1", "10.00")]))
    stale = send(integration, f.invoice("inv_1", customer_id="cus_s", lines=[("100.00", "0")],
                                        type_="invoice.amended"))
    assert (applied["status"], stale["status"]) == ("accepted", "accepted")
    assert ordering.held_by(Event.objects.get(pk=stale["id"])) == Event.objects.get(pk=applied["id"]).pk

    send(integration, f.invoice("inv_0", customer_id="cus_s", lines=[("40.00", "0")]))
    assert integration.event(payment["id"])["status"] == "posted"
    assert integration.event(applied["id"])["status"] == "posted"
    assert integration.event(stale["id"])["status"] == "ignored"
    assert Invoice.objects.get(invoice_id="inv_1").applied_total == 10


@needs_db
def test_the_provider_passes_events_queued_behind_a_parked_one(entity, integration):
    """Payment and credit note both before their invoice: the invoice passes both, both then book."""
    send(integration, f.customer("cus_q"))
    payment = send(integration, f.payment("pay_q", customer_id="cus_q", amount="60.00",
                                          allocations=[("inv_q", "60.00")]))
    note = send(integration, f.credit_note("inv_q", "40.00", credit_note_id="cn_q"))
    assert (payment["status"], note["status"]) == ("exception", "accepted")
    send(integration, f.invoice("inv_q", customer_id="cus_q", lines=[("100.00", "0")]))
    assert integration.event(payment["id"])["status"] == "posted"
    assert integration.event(note["id"])["status"] == "posted"
    assert Invoice.objects.get(invoice_id="inv_q").open_amount == 0


# ------------------------------------------------------------------------------------------ real workers
POLL_SECONDS = 60


def post_all(client, payloads) -> None:
    for payload in payloads:
        response = client.post("/api/v1/events", payload, format="json")
        assert response.status_code == 202, response.content


def run_both(source, settings, worker, build) -> tuple[dict, dict]:
    """The same history one event at a time and then through the two-process worker; both outcomes."""
    results = []
    for mode in ("one_at_a_time", "worker"):
        prefix = f"o{uuid.uuid4().hex[:8]}_"
        payloads = build(prefix)
        if mode == "one_at_a_time":
            with eager(settings):
                post_all(source, payloads)
        else:
            post_all(source, payloads)
            wait_settled(prefix, len(payloads), worker, POLL_SECONDS)
        results.append(outcome(prefix))
    return results[0], results[1]


def _early_payment_history(p: str) -> list[dict]:
    """Issue #10's first case: the payment arrives before its invoice, then a credit note and a refund."""
    return [
        f.customer(f"{p}cus", event_id=f"{p}e1"),
        f.payment(f"{p}pay", customer_id=f"{p}cus", amount="100.00", allocations=[(f"{p}inv", "100.00")],
                  event_id=f"{p}e2"),
        f.invoice(f"{p}inv", customer_id=f"{p}cus", lines=[("100.00", "0")], event_id=f"{p}e3"),
        f.credit_note(f"{p}inv", "20.00", credit_note_id=f"{p}cn", event_id=f"{p}e4"),
        f.refund(f"{p}pay", "20.00", invoice_id=f"{p}inv", refund_id=f"{p}re", event_id=f"{p}e5"),
    ]


@pytest.mark.worker
@pytest.mark.slow
def test_early_payment_credit_note_and_refund_tie_out_with_two_worker_processes(live_worker, us01, source, settings):
    reference, workers = run_both(source, settings, live_worker, _early_payment_history)
    assert workers == reference
    statuses = [workers[f"e{i}"]["status"] for i in range(1, 6)]
    assert statuses == ["processed", "posted", "posted", "posted", "posted"], workers
    assert not [e for e in ExceptionRecord.objects.exclude(status="resolved")], "no exception left open"
    assert workers["invoices"]["inv"][3] == "100.0000"  # applied in full: the payment was not over-applied


def _amendments_history(p: str) -> list[dict]:
    """Issue #10's second case, many times over: each invoice's v2 accepted right after its v1."""
    history = [f.customer(f"{p}cus", event_id=f"{p}c")]
    for n in range(12):
        history.append(f.invoice(f"{p}inv{n}", customer_id=f"{p}cus", lines=[("100.00", "0")], event_id=f"{p}i{n}"))
        history.append(f.invoice(f"{p}inv{n}", customer_id=f"{p}cus", lines=[("120.00", "0")], version=2,
                                 type_="invoice.amended", event_id=f"{p}a{n}"))
    return history


@pytest.mark.worker
@pytest.mark.slow
def test_an_amendment_accepted_after_its_issue_never_makes_the_issue_stale(live_worker, us01, source, settings):
    reference, workers = run_both(source, settings, live_worker, _amendments_history)
    assert workers == reference
    for n in range(12):
        assert workers[f"i{n}"]["status"] == "posted", workers[f"i{n}"]
        assert workers[f"a{n}"]["status"] == "posted", workers[f"a{n}"]
        assert workers["invoices"][f"inv{n}"][1:3] == (2, "120.0000")


@pytest.mark.worker
@pytest.mark.slow
@hsettings(max_examples=8, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(customers=st.lists(CUSTOMER_HISTORY, min_size=1, max_size=3),
       picks=st.lists(st.integers(0, 2), min_size=0, max_size=30))
def test_random_histories_give_the_one_at_a_time_outcome_with_two_worker_processes(
        live_worker, us01, source, settings, customers, picks):
    def build(p):
        return interleave([customer_events(p, c, first, ops) for c, (first, ops) in enumerate(customers)], picks)

    reference, workers = run_both(source, settings, live_worker, build)
    assert workers == reference
    # And the books tie out: the trial balance balances over what posted.
    lines = JournalLine.objects.filter(journal__status="posted")
    assert sum(line.debit for line in lines) == sum(line.credit for line in lines)


@needs_db
def test_the_sweep_leaves_events_held_behind_a_parked_one_and_takes_the_rest(entity, integration):
    send(integration, f.customer("cus_s"))
    void = send(integration, f.invoice_voided("inv_s"))
    note = send(integration, f.credit_note("inv_s", "5.00"))
    held = Event.objects.get(pk=note["id"])
    assert held.status == "accepted" and held.held_by_id == Event.objects.get(pk=void["id"]).pk
    later = timezone.now() + datetime.timedelta(minutes=5)
    assert note["id"] not in map(str, ordering.accepted_not_parked_behind(received_before=later, limit=100))
    # A lost message: an accepted event that nothing holds is swept.
    lost = send(integration, f.customer("cus_s2"))
    Event.objects.filter(pk=lost["id"]).update(status="accepted")
    assert [str(i) for i in ordering.accepted_not_parked_behind(received_before=later, limit=100)] == [lost["id"]]
    assert billing.events_sweep_accepted(older_than_seconds=-600) == 1
    # The audit trail says what it waited behind.
    assert AuditEntry.objects.filter(action="event.held", event_id=note["id"]).count() == 1
    # Its holder still parked, it is not one a chunk would schedule again after commit; done, it is.
    assert ordering.held_released([note["id"], lost["id"]]) == []
    Event.objects.filter(pk=void["id"]).update(status="ignored")
    assert [str(i) for i in ordering.held_released([note["id"], lost["id"]])] == [note["id"]]


@pytest.mark.parametrize("payload", [
    f.customer("c1"), f.invoice("in1", customer_id="c1"),
    f.invoice("in1", customer_id="c1", version=2, type_="invoice.amended"), f.invoice_voided("in1"),
    f.payment("p1", customer_id="c1", amount="5.00", allocations=[("in1", "5.00")]),
    f.payment_applied("p1", [("in1", "1.00")]), f.refund("p1", "1.00", invoice_id="in1"),
    f.credit_note("in1", "1.00"), f.write_off("in1", "1.00"),
], ids=lambda p: p["type"])
def test_what_an_event_provides_reads_back_from_its_stored_keys(payload):
    assert ordering.provides_from_keys(payload["type"], ordering.order_keys(payload)) == \
        sorted(ordering.documents_of(payload)[2])


@needs_db
def test_a_provider_that_passes_a_parked_event_holds_the_next_provider(entity, integration, monkeypatch):
    """Credit note parked on its invoice; the issue and the amendment of that invoice both accepted and not yet
    processed (two workers would take them at once): the issue may pass the parked credit note, the
    amendment must wait for the issue, which is running, not waiting (a random history found this)."""
    send(integration, f.customer("cus_p"))
    note = send(integration, f.credit_note("inv_p", "5.00"))
    assert note["exception"]["code"] == "awaiting_dependency"
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)  # accepted, not yet taken
    issued = send(integration, f.invoice("inv_p", customer_id="cus_p", lines=[("100.00", "0")]))
    amended = send(integration, f.invoice("inv_p", customer_id="cus_p", lines=[("120.00", "0")], version=2,
                                          type_="invoice.amended"))
    assert (issued["status"], amended["status"]) == ("accepted", "accepted")
    assert ordering.held_by(Event.objects.get(pk=issued["id"])) is None
    assert ordering.held_by(Event.objects.get(pk=amended["id"])) == Event.objects.get(pk=issued["id"]).pk
    monkeypatch.undo()
    assert billing.event_process(event_id=amended["id"]) == "accepted"  # held
    assert billing.event_process(event_id=issued["id"]) == "processed"
    # The issue woke the credit note in its own transaction: it goes before the amendment.
    assert Event.objects.get(pk=note["id"]).status == "accepted"
    assert ordering.held_by(Event.objects.get(pk=amended["id"])) == Event.objects.get(pk=note["id"]).pk
    assert billing.event_process(event_id=note["id"]) == "processed"
    assert billing.event_process(event_id=amended["id"]) == "processed"
    assert Invoice.objects.get(invoice_id="inv_p").version == 2


@needs_db
def test_a_parked_event_whose_document_exists_holds_the_next_provider_until_it_is_woken(
        entity, integration, monkeypatch, settings):
    """The void parked on its invoice; the issue processed in a chunk that did not wake it in its own
    transaction (the void parked while the chunk ran) and the wake-up after commit not yet run; then the
    amendment. One at a time the void is woken before the amendment arrives and the amendment finds the invoice
    void: the amendment must wait behind the void, not pass it as a first provider would (a random history with
    two worker processes found this: the amendment posted and the void reversed the amended amount)."""
    send(integration, f.customer("cus_y"))
    void = send(integration, f.invoice_voided("inv_y"))
    assert void["exception"]["code"] == "awaiting_dependency"
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)  # accepted, not yet taken
    issued = send(integration, f.invoice("inv_y", customer_id="cus_y", lines=[("100.00", "0")]))
    amended = send(integration, f.invoice("inv_y", customer_id="cus_y", lines=[("120.00", "0")], version=2,
                                          type_="invoice.amended"))
    monkeypatch.setattr(processing, "dependents_wake", lambda keys: 0)  # the wake-up, after commit, not yet run
    assert billing.event_process(event_id=issued["id"]) == "processed"
    assert Event.objects.get(pk=void["id"]).status == "exception"
    assert ordering.held_by(Event.objects.get(pk=amended["id"])) == Event.objects.get(pk=void["id"]).pk
    assert billing.event_process(event_id=amended["id"]) == "accepted"  # held behind the void
    monkeypatch.undo()

    # The wake-up was lost (a killed worker): the sweep finds the void parked on an invoice that exists.
    assert billing.events_sweep_parked(older_than_seconds=3600) == 0  # not before the cutoff
    settings.TIEOUT_OUTBOX_SWEEP_AFTER_SECONDS = -600
    assert tasks.sweep_parked_events.run() == 1  # what beat's `events-parked-sweep` runs
    assert Event.objects.get(pk=void["id"]).status == "accepted"
    assert billing.event_process(event_id=void["id"]) == "processed"
    assert billing.event_process(event_id=amended["id"]) == "exception"
    after = integration.event(amended["id"])
    assert after["status"] == "exception" and after["exception"]["code"] == "document_conflict"
    assert Invoice.objects.get(invoice_id="inv_y").status == "voided"
    assert AuditEntry.objects.filter(action="event.requeued", event_id=void["id"]).count() == 1
    assert billing.events_sweep_parked(older_than_seconds=-600) == 0


@needs_db
@pytest.mark.parametrize("key, exists", [
    ("customer:{ss}:cus_k", True), ("customer:{ss}:cus_none", False), ("invoice:{ss}:inv_k:2026", True),
    ("invoice:{ss}:inv_k", False), ("invoice:other:inv_k:2026", False), ("payment:{ss}:pay_k", True),
    ("payment:{ss}:cus_k", False), ("entity:US01", True), ("entity:ZZ99", False), ("refund:{ss}:re_1", False),
])
def test_dependency_exists_reads_each_kind_of_key(entity, integration, key, exists):
    send(integration, f.customer("cus_k"))
    send(integration, f.invoice("inv_k:2026", customer_id="cus_k", lines=[("10.00", "0")]))
    send(integration, f.payment("pay_k", customer_id="cus_k", amount="5.00", allocations=[("inv_k:2026", "5.00")]))
    assert ordering.dependency_exists(key.format(ss=SS), SS) is exists


def test_beat_sweeps_the_parked_events_every_few_minutes(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["events-parked-sweep"]
    assert entry["task"] == tasks.sweep_parked_events.name == "billing_sync.tasks.sweep_parked_events"
    assert entry["schedule"] <= 600.0


@needs_db
def test_dependency_exists_splits_a_key_by_the_events_source_system_not_at_a_colon(entity, integration):
    """`invoice:<ss>:eu:inv_c` names invoice `eu:inv_c` of source `<ss>` for an event of `<ss>`, and invoice `inv_c`
    of source `<ss>:eu` for an event of that source: only the first exists, and the second must not be taken
    for it (its parked event would be sent round again and again)."""
    send(integration, f.customer("cus_c"))
    send(integration, f.invoice("eu:inv_c", customer_id="cus_c", lines=[("10.00", "0")]))
    assert ordering.dependency_exists(f"invoice:{SS}:eu:inv_c", SS) is True
    assert ordering.dependency_exists(f"invoice:{SS}:eu:inv_c", f"{SS}:eu") is False
    assert ordering.dependency_exists(f"invoice:{SS}:eu:inv_c", "other") is False


@needs_db
def test_the_sweep_takes_a_provider_whose_recorded_holder_now_waits_for_it(entity, integration, monkeypatch):
    """The customer was held behind its invoice while that was running; the invoice then parked waiting for
    the customer. Had the wake-up been lost with a killed worker, the sweep must still take the customer
    (the production-layout test found it left behind)."""
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)
    invoice = send(integration, f.invoice("inv_h", customer_id="cus_h", lines=[("10.00", "0")]))
    customer = send(integration, f.customer("cus_h"))
    assert billing.event_process(event_id=customer["id"]) == "accepted"  # behind the invoice, running
    assert billing.event_process(event_id=invoice["id"]) == "exception"  # unknown_customer: parked on it
    held = Event.objects.get(pk=customer["id"])
    assert held.held_by_id == Event.objects.get(pk=invoice["id"]).pk and ordering.held_by(held) is None
    later = timezone.now() + datetime.timedelta(minutes=5)
    assert customer["id"] in map(str, ordering.accepted_not_parked_behind(received_before=later, limit=100))


# ------------------------------------------------------------------ two voids before their invoice
def _two_voids_before_the_issue(integration) -> dict:
    """Two voids of inv_v (no invoice yet), a payment allocated to inv_x (never issued), the issue of inv_v last,
    for customer cus_v (sent before, processed). Accepted one at a time; whether each is processed in its request
    is up to the caller."""
    return {
        "void1": integration.send(f.invoice_voided("inv_v", event_id="evt_void1")).json()["id"],
        "void2": integration.send(f.invoice_voided("inv_v", event_id="evt_void2")).json()["id"],
        "payment": integration.send(f.payment("pay_v", customer_id="cus_v", amount="30.00",
                                              allocations=[("inv_x", "30.00")], event_id="evt_pay")).json()["id"],
        "issue": integration.send(f.invoice("inv_v", customer_id="cus_v", lines=[("100.00", "0")],
                                            event_id="evt_issue")).json()["id"],
    }


def _assert_issued_then_voided(ids: dict) -> None:
    """The issue books and posts its invoice journal; the first void, once the invoice exists, reverses it (the
    invoice is voided: nothing was applied to it); the second void finds it voided already and is ignored. Only
    the payment still waits, for inv_x, which never came."""
    events = {name: Event.objects.get(pk=pk) for name, pk in ids.items()}
    assert {name: e.status for name, e in events.items()} == {
        "void1": "posted", "void2": "ignored", "payment": "exception", "issue": "posted"}
    issued = events["issue"].journals.get()
    assert (issued.kind, issued.status, issued.document_id) == ("invoice", "posted", "inv_v")
    reversal = events["void1"].journals.get()
    assert (reversal.kind, reversal.status, reversal.reverses_id) == ("invoice_reversal", "posted", issued.pk)
    assert not events["void2"].journals.exists()
    invoice = Invoice.objects.get(invoice_id="inv_v")
    assert (invoice.status, invoice.open_amount, invoice.current_journal_id) == ("voided", 0, None)
    open_exceptions = ExceptionRecord.objects.exclude(status="resolved")
    assert [(x.event_id, x.code, x.dependency_key) for x in open_exceptions] == [
        (events["payment"].pk, "awaiting_dependency", k("invoice", "inv_x"))]
    # The voids' own exceptions closed when they were processed.
    assert ExceptionRecord.objects.filter(event=events["void1"], status="resolved").count() == 1


@needs_db
def test_two_voids_accepted_before_their_invoice_do_not_hold_the_issue_one_at_a_time(entity, integration):
    """The property test's sequence (void, void, a payment for another invoice, the issue), one event at a time:
    the first void parks on the invoice, the second is held behind it; the issue provides the invoice both wait
    for, so it passes both (it must not wait behind the held void) and wakes the first."""
    send(integration, f.customer("cus_v"))
    ids = _two_voids_before_the_issue(integration)
    _assert_issued_then_voided(ids)
    held = AuditEntry.objects.filter(action="event.held", event_id=ids["void2"])
    assert [entry.object_id for entry in held] == [ids["void2"]]
    assert not AuditEntry.objects.filter(action="event.held", event_id=ids["issue"]).exists()


@needs_db
@pytest.mark.parametrize("order", ["acceptance", "issue_first", "issue_between"])
def test_two_voids_accepted_before_their_invoice_in_one_chunk(entity, integration, monkeypatch,
                                                              django_capture_on_commit_callbacks, order):
    """The same events all accepted before any is processed, then handed to `events_process` as one chunk in
    acceptance order, or with the issue first (a worker took it before the voids ran: it waits behind the
    first void, which is running, not waiting) or between the voids; wake-ups run as the eager dispatcher runs
    them. Each order comes to the one-at-a-time outcome."""
    send(integration, f.customer("cus_v"))
    with monkeypatch.context() as held_back:
        held_back.setattr(processing, "events_schedule", lambda ids, routes=None: None)
        ids = _two_voids_before_the_issue(integration)
    assert {Event.objects.get(pk=pk).status for pk in ids.values()} == {"accepted"}
    names = {"acceptance": ["void1", "void2", "payment", "issue"], "issue_first": ["issue", "void1", "void2", "payment"],
             "issue_between": ["void1", "issue", "void2", "payment"]}[order]
    with django_capture_on_commit_callbacks(execute=True):
        billing.events_process(event_ids=[ids[name] for name in names])
    _assert_issued_then_voided(ids)


@needs_db
def test_the_issue_is_not_held_behind_a_void_held_behind_a_void_parked_on_it(entity, integration, monkeypatch):
    """The rule itself, looked at between steps: first void parked on inv_v, second held behind it (accepted); the
    issue of inv_v may go (`held_by` None) and, processed, wakes the first void; the sweep would take it too."""
    send(integration, f.customer("cus_v"))
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)
    ids = _two_voids_before_the_issue(integration)
    assert billing.event_process(event_id=ids["void1"]) == "exception"
    assert billing.event_process(event_id=ids["void2"]) == "accepted"
    assert billing.event_process(event_id=ids["payment"]) == "exception"
    void2, issue = Event.objects.get(pk=ids["void2"]), Event.objects.get(pk=ids["issue"])
    assert ordering.held_by(void2) == void2.held_by_id == Event.objects.get(pk=ids["void1"]).pk
    assert ordering.held_by(issue) is None
    later = timezone.now() + datetime.timedelta(minutes=5)
    swept = list(map(str, ordering.accepted_not_parked_behind(received_before=later, limit=100)))
    assert ids["issue"] in swept and ids["void2"] not in swept
    assert billing.event_process(event_id=ids["issue"]) == "processed"
    assert Event.objects.get(pk=ids["void1"]).status == "accepted"  # woken in the issue's transaction
    assert ordering.held_by(void2) == Event.objects.get(pk=ids["void1"]).pk  # still behind the first void
    assert billing.event_process(event_id=ids["void1"]) == "processed"
    assert billing.event_process(event_id=ids["void2"]) == "ignored"
    assert Invoice.objects.get(invoice_id="inv_v").status == "voided"


# ------------------------------------------------- a cycle through a parked provider (refund, issue, payment)
def _refund_issue_payment(integration) -> dict:
    """A refund of pay_c naming inv_c before the payment (it parks on the payment), the issue of inv_c (held
    behind the refund, which changes inv_c), then pay_c allocated to inv_c: it may pass the refund, which waits
    for it, and the issue, held only behind that one, but then parks on inv_c, whose issue waits behind the
    refund: a cycle, unless the issue may pass the refund through the payment parked on its invoice."""
    return {
        "refund": integration.send(f.refund("pay_c", "10.00", invoice_id="inv_c", refund_id="re_c",
                                            event_id="evt_refund")).json()["id"],
        "issue": integration.send(f.invoice("inv_c", customer_id="cus_c", lines=[("100.00", "0")],
                                            event_id="evt_issue_c")).json()["id"],
        "payment": integration.send(f.payment("pay_c", customer_id="cus_c", amount="50.00",
                                              allocations=[("inv_c", "50.00")], event_id="evt_pay_c")).json()["id"],
    }


def _assert_all_booked(ids: dict) -> None:
    events = {name: Event.objects.get(pk=pk) for name, pk in ids.items()}
    assert {name: e.status for name, e in events.items()} == {"refund": "posted", "issue": "posted",
                                                              "payment": "posted"}
    for event in events.values():
        assert [j.status for j in event.journals.all()] == ["posted"], event.type
    invoice = Invoice.objects.get(invoice_id="inv_c")
    assert (invoice.applied_total, invoice.refunded_total, invoice.open_amount) == (50, 10, 60)
    assert Payment.objects.get(payment_id="pay_c").refunded_total == 10
    assert not ExceptionRecord.objects.exclude(status="resolved").exists()


@needs_db
def test_an_issue_held_behind_a_refund_parked_on_a_payment_parked_on_that_invoice_passes(entity, integration):
    """One at a time: the refund parks on pay_c; the issue waits behind it (pay_c may come without inv_c);
    pay_c passes both and parks on inv_c, which wakes the issue: it passes the refund now (its invoice wakes
    pay_c, whose arrival wakes the refund) and all three book. Before, the issue stayed accepted for ever."""
    send(integration, f.customer("cus_c"))
    ids = _refund_issue_payment(integration)
    _assert_all_booked(ids)
    woken = AuditEntry.objects.filter(action="event.requeued").values_list("event_id", flat=True)
    assert sorted(map(str, woken)) == sorted([ids["refund"], ids["payment"]])


@needs_db
@pytest.mark.parametrize("order", ["acceptance", "payment_first", "issue_last"])
def test_the_refund_issue_payment_cycle_in_one_chunk(entity, integration, monkeypatch,
                                                     django_capture_on_commit_callbacks, order):
    """The same three accepted before any is processed, then one chunk (`events_process`) in three orders."""
    send(integration, f.customer("cus_c"))
    with monkeypatch.context() as held_back:
        held_back.setattr(processing, "events_schedule", lambda ids, routes=None: None)
        ids = _refund_issue_payment(integration)
    names = {"acceptance": ["refund", "issue", "payment"], "payment_first": ["payment", "refund", "issue"],
             "issue_last": ["refund", "payment", "issue"]}[order]
    with django_capture_on_commit_callbacks(execute=True):
        billing.events_process(event_ids=[ids[name] for name in names])
    _assert_all_booked(ids)


@needs_db
def test_the_issue_passes_a_refund_only_once_the_payment_it_waits_for_is_parked_on_the_invoice(
        entity, integration, monkeypatch, django_capture_on_commit_callbacks):
    """The rule step by step: behind a refund parked on a payment that has not come, the issue keeps its place
    (the payment may come without naming the invoice); once that payment is parked on the invoice, the issue may
    go, and the payment parking woke it (nothing after the payment on its documents would)."""
    send(integration, f.customer("cus_c"))
    scheduled: list = []
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: scheduled.extend(map(str, ids)))
    ids = _refund_issue_payment(integration)
    refund, issue = Event.objects.get(pk=ids["refund"]), Event.objects.get(pk=ids["issue"])
    assert billing.event_process(event_id=ids["refund"]) == "exception"
    assert billing.event_process(event_id=ids["issue"]) == "accepted"
    assert ordering.held_by(issue) == refund.pk
    scheduled.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert billing.event_process(event_id=ids["payment"]) == "exception"
    assert ExceptionRecord.objects.get(event_id=ids["payment"]).dependency_key == k("invoice", "inv_c")
    assert ids["issue"] in scheduled
    assert ordering.held_by(Event.objects.get(pk=ids["issue"])) is None
    assert billing.event_process(event_id=ids["issue"]) == "processed"
    assert Event.objects.get(pk=ids["payment"]).status == "accepted"  # woken in the issue's transaction
    assert billing.event_process(event_id=ids["payment"]) == "processed"
    assert Event.objects.get(pk=ids["refund"]).status == "accepted"  # woken in the payment's transaction
    assert billing.event_process(event_id=ids["refund"]) == "processed"
    assert Invoice.objects.get(invoice_id="inv_c").refunded_total == 10


@needs_db
def test_the_sweep_takes_an_issue_held_behind_a_refund_once_the_payment_parks_on_its_invoice(entity, integration,
                                                                                           monkeypatch):
    """The wake-up of the parked payment lost (a killed worker): the sweep must take the issue, whose recorded
    holder (the refund) waits for the payment, parked on the issue's invoice; not before the payment parks."""
    send(integration, f.customer("cus_c"))
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)
    ids = _refund_issue_payment(integration)
    assert billing.event_process(event_id=ids["refund"]) == "exception"
    assert billing.event_process(event_id=ids["issue"]) == "accepted"
    later = timezone.now() + datetime.timedelta(minutes=5)

    def swept():
        return list(map(str, ordering.accepted_not_parked_behind(received_before=later, limit=100)))
    assert ids["issue"] not in swept()  # behind the refund, which waits for a payment that may not name inv_c
    assert billing.event_process(event_id=ids["payment"]) == "exception"
    assert swept() == [ids["issue"]]
