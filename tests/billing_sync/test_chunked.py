"""Set-based processing (issue 13): `events_process` takes a chunk of events in one transaction (no savepoint per
event unless one fails), and must come to exactly what one event at a time comes to.

The same random histories (tests/histories.py) are accepted twice under two id prefixes, then processed one
at a time (TIEOUT_PROCESS_CHUNK=1: a transaction per event, the old worker loop) and in chunks, with wake-ups
queued behind as the eager dispatcher does; the ledger (journals and lines), exceptions, documents, audit
entries (action and subject, in order, per event; but `event.held`, see LOOKS) and traces must be equal with
the prefix taken out. Then a
poisoned event (its handler raises an unexpected error) in a chunk: the others commit, it is rolled back and
fails alone exactly as it does processed by itself. Then two workers (threads, each with its own database
connection) processing overlapping chunks of the same invoices' events at once: each invoice's events are
processed in acceptance order, each once. Then a chunk whose rows written behind are refused as it ends: it
goes one event at a time.
"""
import datetime
import difflib
import json
import re
import threading
import uuid

import psycopg
import pytest
from django.db import IntegrityError, OperationalError, connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from audit import services as audit
from audit.models import AuditEntry
from billing_sync import dispatch, documents, tasks
from billing_sync import services as billing
from billing_sync.models import CanonicalChange, Customer, Event, Invoice
from billing_sync.services import processing
from config import deferred
from config.errors import BusinessRuleError, Codes
from exceptions_queue.models import ExceptionRecord
from ledger.models import Journal
from portal import lineage
from tests import factories as f
from tests.histories import CUSTOMER_HISTORY, customer_events, interleave, outcome

pytestmark = pytest.mark.django_db(transaction=True)


def _accept(integration, payloads, monkeypatch) -> list[str]:
    """Send the history through the API with processing held back; the accepted ids in acceptance order."""
    with monkeypatch.context() as patched:
        patched.setattr(processing, "events_schedule", lambda ids, routes=None: None)
        for payload in payloads:
            response = integration.send(payload)
            assert response.status_code == 202, response.content
    ids = Event.objects.filter(source_system=payloads[0]["source_system"],
                               event_id__in=[p["event_id"] for p in payloads]).order_by("seq")
    return [str(pk) for pk in ids.values_list("pk", flat=True)]


def _process(ids: list[str], chunk: int, settings) -> None:
    """As the worker: the ids handed to the (eager) dispatcher; wake-ups queue behind them."""
    settings.TIEOUT_PROCESS_CHUNK = chunk
    dispatch.schedule(ids)


_NOISE = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "<hash>"),
    (re.compile(r"\bJE-[A-Z0-9]+-\d{4}-\d+"), "<erp document>"),  # the built-in ERP's numbers run on
    (re.compile(r"\b[0-9a-f]{32}\b"), "<hex>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?"), "<time>"),
    (re.compile(r'"(id|chain_seq|seq|size|number)": \d+'), r'"\1": <n>'),
]


def _plain(text: str, prefix: str) -> str:
    text = text.replace(prefix, "")
    for pattern, replacement in _NOISE:
        text = pattern.sub(replacement, text)
    return text


# `event.held` records a look at an event that found it held behind a new holder: how many looks there are
# depends on when wake-ups are computed (after each event's commit, or after its chunk's), as it does between
# one and two worker processes today. Every other entry must be the same, in the same order.
LOOKS = {"event.held"}


def _everything(prefix: str) -> dict:
    """`outcome` plus each event's audit entries (action, subject kind, in order) and its trace, ids out."""
    result = outcome(prefix)
    for event in Event.objects.filter(event_id__startswith=prefix).order_by("seq"):
        name = event.event_id.replace(prefix, "")
        result[name]["audit"] = [(a.action, a.object_type) for a in
                                 AuditEntry.objects.filter(event_id=event.pk).order_by("id") if a.action not in LOOKS]
        trace = dict(lineage.event_trace(event.pk))
        trace["audit"] = [entry for entry in trace["audit"] if entry["action"] not in LOOKS]
        result[name]["trace"] = _plain(json.dumps(trace, sort_keys=True, default=str), prefix)
    return result


def _diff(name, expected, got) -> str:
    """Where a chunked run differs from one at a time (a trace is one long line: split at its commas)."""
    def lines(value):
        return json.dumps(value, sort_keys=True, indent=1, default=str).replace(", ", ",\n").splitlines()
    return f"{name}:\n" + "\n".join(difflib.unified_diff(lines(expected), lines(got), "one at a time", "chunked",
                                                           lineterm="", n=2))


@hsettings(max_examples=25, deadline=None, derandomize=False,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(customers=st.lists(CUSTOMER_HISTORY, min_size=1, max_size=3),
       picks=st.lists(st.integers(0, 2), min_size=0, max_size=30),
       chunk=st.sampled_from([2, 3, 7, 200]))
def test_chunks_come_to_exactly_what_one_event_at_a_time_comes_to(
        entity, integration, settings, monkeypatch, customers, picks, chunk):
    results = []
    for size in (1, chunk):
        prefix = f"k{uuid.uuid4().hex[:8]}_"
        payloads = interleave([customer_events(prefix, c, first, ops) for c, (first, ops) in enumerate(customers)],
                              picks)
        _process(_accept(integration, payloads, monkeypatch), size, settings)
        results.append(_everything(prefix))
    one_at_a_time, chunked = results
    for name in one_at_a_time:
        assert chunked[name] == one_at_a_time[name], _diff(name, one_at_a_time[name], chunked[name])
    assert chunked == one_at_a_time


def _history(p: str) -> list[dict]:
    return [f.customer(f"{p}cus", event_id=f"{p}c"),
            f.invoice(f"{p}in1", customer_id=f"{p}cus", lines=[("100.00", "0")], event_id=f"{p}i1"),
            f.invoice(f"{p}in2", customer_id=f"{p}cus", lines=[("200.00", "0")], event_id=f"{p}i2"),
            f.payment(f"{p}pay", customer_id=f"{p}cus", amount="50.00", allocations=[(f"{p}in1", "50.00")],
                      event_id=f"{p}p1"),
            f.invoice(f"{p}in3", customer_id=f"{p}cus", lines=[("300.00", "0")], event_id=f"{p}i3")]


def test_a_poisoned_event_fails_alone_and_the_rest_of_its_chunk_commits(entity, integration, settings, monkeypatch):
    ids = _accept(integration, _history("pz_"), monkeypatch)
    poisoned = ids[2]  # invoice in2
    real_apply = documents.apply

    def apply(event, *, actor):
        outcome = real_apply(event, actor=actor)  # its writes are made, then it blows up: all rolled back
        if str(event.pk) == poisoned:
            raise ZeroDivisionError("a bug in a handler")
        return outcome

    monkeypatch.setattr(documents, "apply", apply)
    entries_before = AuditEntry.objects.filter(event_id=poisoned).count()
    settings.TIEOUT_PROCESS_CHUNK = 200
    with CaptureQueriesContext(connection) as queries:
        with pytest.raises(ZeroDivisionError, match="a bug in a handler"):  # as event_process raises it alone
            billing.events_process(event_ids=ids)
    # First without a savepoint per event: rolled back whole at the failure; then with them (one around each
    # event, one around its handler); then the poisoned event alone.
    rollbacks = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("ROLLBACK")]
    assert len([r for r in rollbacks if r == "ROLLBACK"]) >= 2 and len(rollbacks) >= 3
    statuses = dict(Event.objects.filter(pk__in=ids).values_list("event_id", "status"))
    assert statuses["pz_i2"] == "accepted"  # untouched: nothing of it committed
    assert {name: s for name, s in statuses.items() if name != "pz_i2"} == {
        "pz_c": "processed", "pz_i1": "posted", "pz_p1": "posted", "pz_i3": "posted"}
    assert not Invoice.objects.filter(invoice_id="pz_in2").exists()
    assert not Journal.objects.filter(event_id=poisoned).exists()
    assert not ExceptionRecord.objects.filter(event_id=poisoned).exists()
    assert AuditEntry.objects.filter(event_id=poisoned).count() == entries_before
    # The others' `event.processed` entries, written together at the end of the chunk, are what `record`
    # writes: content hashed, `at` the moment each was made (in the content too).
    for entry in AuditEntry.objects.filter(event_id__in=ids, action="event.processed"):
        assert entry.entry_hash == audit.compute_entry_hash(entry)
        assert json.loads(entry.content)["at"] == entry.at.astimezone(datetime.timezone.utc).isoformat()
        assert json.loads(entry.content)["event_id"] == str(entry.event_id)
    # Alone it fails the same way (the task retries it); once the bug is gone it goes through.
    with pytest.raises(ZeroDivisionError):
        billing.event_process(event_id=poisoned)
    monkeypatch.setattr(documents, "apply", real_apply)
    assert billing.events_process(event_ids=[poisoned]) == {poisoned: "processed"}
    assert Event.objects.get(pk=poisoned).status == "posted"
    assert Invoice.objects.get(invoice_id="pz_in2").total == 200


def _refusing(monkeypatch, refused: str, *, write_first: bool) -> None:
    """Event `refused`'s handler does its work (written behind in a chunk), then a business rule refuses it; with
    `write_first`, after a statement that changed the database."""
    real_apply = documents.apply

    def apply(event, *, actor):
        outcome = real_apply(event, actor=actor)
        if str(event.pk) == refused:
            if write_first:
                Customer.objects.filter(customer_id=f"{event.event_id[:3]}cus").update(name="Changed, then refused")
            raise BusinessRuleError(Codes.DOCUMENT_CONFLICT, "refused after its work")
        return outcome

    monkeypatch.setattr(documents, "apply", apply)


def _refused_outcome(p: str, ids: list[str], refused: str) -> None:
    statuses = dict(Event.objects.filter(pk__in=ids).values_list("event_id", "status"))
    assert statuses == {f"{p}c": "processed", f"{p}i1": "posted", f"{p}i2": "exception", f"{p}p1": "posted",
                        f"{p}i3": "posted"}
    assert not Invoice.objects.filter(invoice_id=f"{p}in2").exists()  # its work is undone
    assert not Journal.objects.filter(event_id=refused).exists()
    assert not CanonicalChange.objects.filter(event_id=refused).exists()
    assert ExceptionRecord.objects.get(event_id=refused).code == Codes.DOCUMENT_CONFLICT
    assert [a.action for a in AuditEntry.objects.filter(event_id=refused).order_by("id")] == [
        "event.received", "exception.opened", "event.exception"]
    assert Customer.objects.get(customer_id=f"{p}cus").name != "Changed, then refused"
    assert Invoice.objects.filter(invoice_id__startswith=p).count() == 2


def test_a_business_rule_undoes_its_handlers_work_without_a_savepoint(entity, integration, settings, monkeypatch):
    """A chunk's first run takes no savepoint per handler: what a refused handler deferred is dropped instead."""
    p = "br_"
    ids = _accept(integration, _history(p), monkeypatch)
    _refusing(monkeypatch, ids[2], write_first=False)
    settings.TIEOUT_PROCESS_CHUNK = 200
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)
    with CaptureQueriesContext(connection) as queries:
        billing.events_process(event_ids=ids)
    sql = [q["sql"] for q in queries.captured_queries]
    assert not any(s.startswith(("SAVEPOINT", "ROLLBACK")) for s in sql)  # one run, nothing rolled back
    _refused_outcome(p, ids, ids[2])


def test_a_business_rule_after_a_write_runs_the_chunk_again_with_savepoints(entity, integration, settings,
                                                                            monkeypatch):
    """Only a savepoint undoes a statement that reached the database: the chunk is rolled back and runs again with
    one per event, and comes to what the refusal would have come to alone."""
    p = "bw_"
    ids = _accept(integration, _history(p), monkeypatch)
    _refusing(monkeypatch, ids[2], write_first=True)
    settings.TIEOUT_PROCESS_CHUNK = 200
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)
    with CaptureQueriesContext(connection) as queries:
        billing.events_process(event_ids=ids)
    sql = [q["sql"] for q in queries.captured_queries]
    assert sql.count("ROLLBACK") == 1 and any(s.startswith("ROLLBACK TO SAVEPOINT") for s in sql)
    _refused_outcome(p, ids, ids[2])


def _other_connection() -> psycopg.Connection:
    """A second session on the test database (another worker's transaction)."""
    return psycopg.connect(**{k: v for k, v in connection.get_connection_params().items()
                              if k in ("dbname", "user", "host", "port", "password")})


def _retried_on_deadlock(process, attempts=5):
    """As the task runs a chunk: PostgreSQL may abort one of two chunks racing for the same invoices as a
    deadlock victim (each locks documents and journals in its own events' order), and the task's autoretry
    runs it again. Nothing of the victim's transaction was committed, so order and once-only still hold."""
    for attempt in range(attempts):
        try:
            return process()
        except OperationalError as exc:
            if not isinstance(exc.__cause__, psycopg.errors.DeadlockDetected) or attempt == attempts - 1:
                raise


def test_two_workers_on_overlapping_chunks_keep_each_invoice_in_order_and_process_each_event_once(
        entity, integration, settings, monkeypatch):
    p = "tw_"
    history = [f.customer(f"{p}cus", event_id=f"{p}c")]
    for n in range(6):  # each invoice: issued, amended twice, paid in part, credited
        inv = f"{p}in{n}"
        history += [
            f.invoice(inv, customer_id=f"{p}cus", lines=[("100.00", "0")], event_id=f"{p}{n}a"),
            f.invoice(inv, customer_id=f"{p}cus", lines=[("120.00", "0")], version=2, type_="invoice.amended",
                      event_id=f"{p}{n}b"),
            f.invoice(inv, customer_id=f"{p}cus", lines=[("150.00", "0")], version=3, type_="invoice.amended",
                      event_id=f"{p}{n}c"),
            f.payment(f"{p}pay{n}", customer_id=f"{p}cus", amount="40.00", allocations=[(inv, "40.00")],
                      event_id=f"{p}{n}d"),
            f.credit_note(inv, "10.00", credit_note_id=f"{p}cn{n}", event_id=f"{p}{n}e"),
        ]
    ids = _accept(integration, history, monkeypatch)
    # Wake-ups are what the two workers under test do not do: recorded, then handed over afterwards.
    woken: list[str] = []
    lock = threading.Lock()

    def record(event_ids, routes=None):
        with lock:
            woken.extend(str(i) for i in event_ids)

    monkeypatch.setattr(processing, "events_schedule", record)
    settings.TIEOUT_PROCESS_CHUNK = 200
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(chunk):
        try:
            barrier.wait(timeout=30)
            for _ in range(3):  # a worker that is handed its chunk again (a redelivery)
                _retried_on_deadlock(lambda: billing.events_process(event_ids=chunk))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    # Overlapping sets, in different orders: the first worker has them all, the second the later two thirds
    # reversed (and the customer); both race for the same invoices' events.
    threads = [threading.Thread(target=worker, args=(ids,)),
               threading.Thread(target=worker, args=([ids[0]] + ids[len(ids) // 3:][::-1],))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    monkeypatch.undo()
    while woken:  # what the wake-ups asked for, as the dispatcher would hand it on
        batch, woken[:] = list(dict.fromkeys(woken)), []
        billing.events_process(event_ids=batch)

    events = {e.event_id: e for e in Event.objects.filter(pk__in=ids)}
    assert {e.status for e in events.values()} <= {"processed", "posted"}, {
        name: e.status for name, e in events.items()}
    for n in range(6):
        names = [f"{p}{n}{step}" for step in "abcde"]
        # Processed once each (one `event.processed` entry), in acceptance order.
        processed = [AuditEntry.objects.filter(event_id=events[name].pk, action="event.processed").get().pk
                     for name in names]
        assert processed == sorted(processed), (n, processed)
        at = [events[name].processed_at for name in names]
        assert at == sorted(at), (n, at)
        assert [events[name].attempts for name in names] == [1] * 5
        invoice = Invoice.objects.get(invoice_id=f"{p}in{n}")
        assert (invoice.version, invoice.total, invoice.applied_total, invoice.credited_total) == (3, 150, 40, 10)
        assert Journal.objects.filter(event__in=[events[name] for name in names]).count() == 7  # 3 + 2 reversals


def test_a_chunk_reads_its_reference_data_once_and_posts_its_journals_together(entity, integration, settings,
                                                                               monkeypatch):
    """The entity, its account mappings, the month's period and the source's callback settings are read once per
    chunk (config.memo), and the chunk's journals are relayed together after it commits: the built-in ledger posts them in one transaction,
    its gapless counter taken once, numbered in the order the events came."""
    p = "rf_"
    payloads = [f.customer(f"{p}cus", event_id=f"{p}c")] + [
        f.invoice(f"{p}in{n}", customer_id=f"{p}cus", lines=[("100.00", "0")], event_id=f"{p}i{n}") for n in range(8)]
    ids = _accept(integration, payloads, monkeypatch)
    settings.TIEOUT_PROCESS_CHUNK = 200
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)  # no wake-ups: the chunks are ours
    billing.events_process(event_ids=ids[:1])  # the customer; then a chunk of invoices only

    with CaptureQueriesContext(connection) as queries:
        statuses = billing.events_process(event_ids=ids[1:])

    assert set(statuses.values()) == {"processed"}
    sql = [q["sql"] for q in queries.captured_queries]
    assert sum('FROM "ledger_accountmapping"' in s for s in sql) == 1
    assert sum('FROM "ledger_entity"' in s and '"ledger_entity"."code" =' in s for s in sql) == 1
    assert sum('FROM "ledger_period"' in s for s in sql) == 2  # processing's check, and posting's again
    assert sum("ledger_documentsequence" in s for s in sql) == 1
    assert sum('FROM "billing_sync_sourcesystem"' in s for s in sql) == 1  # whom to tell "posted": asked once
    # Written behind (config.deferred): one statement per table for the chunk's rows that nothing reads back.
    for table in ("billing_sync_canonicalchange", "billing_sync_historicalinvoice", "billing_sync_historicalinvoiceline",
                  "ledger_outbox"):
        assert sum(s.startswith(f'INSERT INTO "{table}"') for s in sql) == 1, table
    assert sum('FROM "billing_sync_customer"' in s for s in sql) == 1  # the chunk's customers, read together
    # The events parked on what the chunk provides: looked for as it starts (none are) and again after it commits
    # (for those parked meanwhile), not once per event.
    assert sum('"dependency_key"' in s and "exceptions_queue_exceptionrecord" in s for s in sql) == 2
    # No savepoint: a chunk with no failure runs its handlers without them (a business rule drops what its handler
    # deferred instead: processing._handler_unit).
    assert sum(s.startswith("SAVEPOINT") for s in sql) == 0
    # The documents and journals are written behind too, before anything reads them back: one statement per table,
    # and the invoices are not looked for one by one (the chunk's look found none of them), nor their ids asked for.
    for table in ("billing_sync_invoice", "billing_sync_invoiceline", "ledger_journal", "ledger_journalline"):
        assert sum(s.startswith(f'INSERT INTO "{table}"') for s in sql) == 1, table
    assert sum(s.startswith('SELECT') and 'FROM "billing_sync_invoice"' in s for s in sql) == 1
    assert sum("nextval(" in s for s in sql) == 2  # a batch of ids for the invoices, one for their lines
    # The chunk's entries; after commit, the posting's `journal.posted` and the events' `event.status_changed`.
    assert sum("INSERT INTO audit_auditentry" in s for s in sql) == 3
    journals = {j.event_id: j for j in Journal.objects.filter(event_id__in=ids[1:])}
    assert [journals[uuid.UUID(i)].erp_document_ref for i in ids[1:]] == [
        f"JE-US01-{journals[uuid.UUID(ids[1])].accounting_date.year}-{n:06d}" for n in range(1, 9)]
    assert set(Event.objects.filter(pk__in=ids[1:]).values_list("status", flat=True)) == {"posted"}


def test_a_chunk_whose_rows_written_behind_are_refused_goes_one_event_at_a_time(entity, integration, settings,
                                                                                  monkeypatch):
    """The rows written behind are written as the chunk ends, outside any event's savepoint: if the database refuses
    them, nothing of the chunk commits and its events are processed one at a time, each in its own transaction."""
    ids = _accept(integration, _history("wf_"), monkeypatch)
    real_insert = deferred.insert_models
    failed = []

    def insert_models(instances):
        if deferred.active() is False and not failed and len(instances) > 1:  # the chunk's flush, once
            failed.append(len(instances))
            raise IntegrityError("refused as the chunk ends")
        return real_insert(instances)

    monkeypatch.setattr(deferred, "insert_models", insert_models)
    settings.TIEOUT_PROCESS_CHUNK = 200
    statuses = billing.events_process(event_ids=ids)
    assert failed  # the chunk was refused once
    assert set(statuses) == set(ids)
    by_name = dict(Event.objects.filter(pk__in=ids).values_list("event_id", "status"))
    assert by_name == {"wf_c": "processed", "wf_i1": "posted", "wf_i2": "posted", "wf_p1": "posted", "wf_i3": "posted"}
    assert Invoice.objects.filter(invoice_id__startswith="wf_").count() == 3
    assert AuditEntry.objects.filter(event_id__in=ids, action="event.processed").count() == 5


def test_an_event_parked_while_its_chunk_ran_is_woken_after_the_chunk_commits(entity, integration, settings,
                                                                             monkeypatch):
    """The chunk looks once, as it starts, for the events parked on what it may provide. A payment parked on an
    invoice by another transaction that committed after that look (and whose own look after commit did not see
    the chunk's uncommitted invoice) is woken by the chunk's look after it commits: nothing waits forever."""
    p = "aw_"
    ids = _accept(integration, [
        f.customer(f"{p}cus", event_id=f"{p}c"),
        f.payment(f"{p}pay", customer_id=f"{p}cus", amount="50.00", allocations=[(f"{p}in1", "50.00")],
                  event_id=f"{p}p1"),
        f.invoice(f"{p}in1", customer_id=f"{p}cus", lines=[("100.00", "0")], event_id=f"{p}i1")], monkeypatch)
    settings.TIEOUT_PROCESS_CHUNK = 200
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)  # the chunks are ours to run
    billing.events_process(event_ids=ids[:2])  # the customer; the payment parks, awaiting its invoice
    payment = Event.objects.get(pk=ids[1])
    assert payment.status == "exception"
    assert ExceptionRecord.objects.get(event_id=payment.pk).dependency_key.endswith(f":{p}in1")
    # As if the payment had parked after the chunk's look: the look finds nothing waiting.
    monkeypatch.setattr(processing.queue, "dependencies_awaited", lambda keys: set())
    billing.events_process(event_ids=ids[2:])
    assert Event.objects.get(pk=ids[2]).status == "posted"
    assert Event.objects.get(pk=ids[1]).status == "accepted"  # woken after the chunk committed, to be processed
    assert AuditEntry.objects.filter(event_id=ids[1], action="event.requeued").exists()
    billing.events_process(event_ids=ids[1:2])
    assert Event.objects.get(pk=ids[1]).status == "posted"


def test_a_chunk_runs_prepared_statements_on_their_generic_plans_and_only_it(entity, integration, settings,
                                                                             monkeypatch):
    """Inside a chunk's transaction the prepared statements are not planned again for each event's values
    (`plan_cache_mode`), and the setting ends with the transaction: other work on the connection is planned as
    PostgreSQL chooses."""
    ids = _accept(integration, _history("gp_"), monkeypatch)
    seen = []
    real_apply = documents.apply

    def apply(event, *, actor):
        with connection.cursor() as cursor:
            cursor.execute("SHOW plan_cache_mode")
            seen.append(cursor.fetchone()[0])
        return real_apply(event, actor=actor)

    monkeypatch.setattr(documents, "apply", apply)
    settings.TIEOUT_PROCESS_CHUNK = 200
    billing.events_process(event_ids=ids)
    assert seen and set(seen) == {"force_generic_plan"}
    with connection.cursor() as cursor:
        cursor.execute("SHOW plan_cache_mode")
        assert cursor.fetchone()[0] == "auto"


def test_a_task_fills_its_chunk_with_the_oldest_ready_events(entity, integration, settings, monkeypatch):
    """Events that arrived one message each: the first task takes the others waiting too, in one transaction, in
    acceptance order (the payment after its invoice); their own messages then find nothing left to do."""
    ids = _accept(integration, _history("fl_"), monkeypatch)
    settings.TIEOUT_PROCESS_CHUNK = 200
    settings.TIEOUT_PROCESS_FILL = True
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)
    with CaptureQueriesContext(connection) as queries:
        tasks.process_events.run([ids[0]])
    statuses = dict(Event.objects.filter(pk__in=ids).values_list("event_id", "status"))
    assert statuses == {"fl_c": "processed", "fl_i1": "posted", "fl_i2": "posted", "fl_p1": "posted", "fl_i3": "posted"}
    processing_commits = [q for q in queries.captured_queries if q["sql"] == "COMMIT"]
    assert len(processing_commits) == 2  # the chunk, then its journals posted together
    entries = AuditEntry.objects.filter(event_id__in=ids).count()
    for event_id in ids[1:]:
        tasks.process_events.run([event_id])
    assert dict(Event.objects.filter(pk__in=ids).values_list("event_id", "status")) == statuses
    assert AuditEntry.objects.filter(event_id__in=ids).count() == entries


def test_a_task_never_fills_with_events_another_worker_holds(entity, integration, settings, monkeypatch):
    """Filling skips rows locked by another transaction (a chunk in another worker) rather than waiting for it."""
    ids = _accept(integration, _history("fs_"), monkeypatch)
    settings.TIEOUT_PROCESS_CHUNK = 200
    settings.TIEOUT_PROCESS_FILL = True
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)
    billing.events_process(event_ids=ids[:1])  # the customer
    other = _other_connection()
    try:
        other.execute("BEGIN")
        other.execute("SELECT 1 FROM billing_sync_event WHERE id = %s FOR UPDATE", [ids[4]])  # invoice in3
        tasks.process_events.run([ids[1]])
        statuses = dict(Event.objects.filter(pk__in=ids).values_list("event_id", "status"))
        assert statuses["fs_i3"] == "accepted"  # held by the other transaction: left to its own message
        assert {statuses[n] for n in ("fs_i1", "fs_i2", "fs_p1")} == {"posted"}
    finally:
        other.rollback()
        other.close()
    tasks.process_events.run([ids[4]])
    assert Event.objects.get(pk=ids[4]).status == "posted"


def test_a_task_skips_its_own_events_another_chunk_holds(entity, integration, settings, monkeypatch):
    """A task's message names events another worker's chunk has taken (its fill, or a wake-up's message): the task
    processes the others and leaves those to the chunk that holds them, rather than waiting for it to commit."""
    ids = _accept(integration, _history("sk_"), monkeypatch)
    settings.TIEOUT_PROCESS_CHUNK = 200
    settings.TIEOUT_PROCESS_FILL = True
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: None)
    billing.events_process(event_ids=ids[:1])  # the customer
    other = _other_connection()
    try:
        other.execute("BEGIN")
        other.execute("SELECT 1 FROM billing_sync_event WHERE id = %s FOR UPDATE", [ids[2]])  # invoice in2
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '5s'")  # waiting for in2 would fail the task instead of hanging
        tasks.process_events.run(ids[1:])
        by_name = dict(Event.objects.filter(pk__in=ids).values_list("event_id", "status"))
        assert by_name["sk_i2"] == "accepted"
        assert {by_name[n] for n in ("sk_i1", "sk_p1", "sk_i3")} == {"posted"}
    finally:
        other.rollback()
        other.close()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    # Processed by whoever holds it next (here: its own message again); one at a time never skips.
    billing.event_process(event_id=ids[2])
    assert Event.objects.get(pk=ids[2]).status == "posted"
    assert Invoice.objects.get(invoice_id="sk_in2").total == 200


def test_an_event_held_behind_a_holder_that_finishes_while_its_chunk_runs_is_scheduled_after_commit(
        entity, integration, settings, monkeypatch):
    """The chunk finds the credit note held behind its invoice's issue, which another worker then processes and
    commits before the chunk does: the issue's wake-up finds the note locked by the chunk (a worker's task
    skips it), so the chunk itself schedules it again once it commits, its holder being done (a two-process
    worker left such an event unprocessed until the sweep)."""
    p = "hr_"
    ids = _accept(integration, [
        f.customer(f"{p}cus", event_id=f"{p}c"),
        f.invoice(f"{p}in1", customer_id=f"{p}cus", lines=[("100.00", "0")], event_id=f"{p}i1"),
        f.credit_note(f"{p}in1", "10.00", credit_note_id=f"{p}cn", event_id=f"{p}n1")], monkeypatch)
    settings.TIEOUT_PROCESS_CHUNK = 200
    scheduled: list = []
    monkeypatch.setattr(processing, "events_schedule", lambda ids, routes=None: scheduled.extend(map(str, ids)))
    billing.events_process(event_ids=ids[:1])  # the customer
    real_held_by = processing.ordering.held_by

    def held_by(event):
        holder = real_held_by(event)
        if str(event.pk) == ids[2] and not scheduled_before:
            # Another worker processes the issue and commits, while this chunk still holds the note's row.
            worker = threading.Thread(target=lambda: (billing.event_process(event_id=ids[1]), connection.close()))
            worker.start()
            worker.join()
            scheduled_before.extend(scheduled)
            scheduled.clear()
        return holder

    scheduled_before: list = []
    monkeypatch.setattr(processing.ordering, "held_by", held_by)
    assert billing.events_process(event_ids=ids[2:])[ids[2]] == "accepted"  # held: the issue was accepted
    assert Event.objects.get(pk=ids[1]).status in ("processed", "posted")
    assert ids[2] in scheduled_before  # the wake-up: a task would skip the note, locked by the chunk
    assert scheduled == [ids[2]]  # the chunk's own look after it committed
    assert processing._held_released([ids[2]]) == 1
    monkeypatch.undo()
    assert billing.event_process(event_id=ids[2]) in ("processed", "posted")
