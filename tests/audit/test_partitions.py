"""Monthly partitions of audit entries, receipts and events (issue 13 item 4): made ahead of time by beat's
task, rows landing in their month, the key tables keeping every uniqueness guarantee (identity, seq,
Idempotency-Key, entry ids) and every foreign key, and the migrations copying existing rows."""
import datetime
import json
import time
import uuid

import pytest
from django.conf import settings
from django.core import checks as django_checks
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from audit import services as audit
from audit import tasks
from audit.models import AuditEntry
from billing_sync import services
from billing_sync.models import Event, EventKey, Receipt, ReceiptKey
from tests import factories as f
from tests.audit.helpers import latest_migrations, migrated, sealed  # noqa: F401 (the fixture, used below)

# The partitions must be there: audit's migration test may have left its process's database at audit 0005.
pytestmark = pytest.mark.usefixtures("migrated")

HEADERS = {"Content-Type": "application/json", "Idempotency-Key": "k-1"}


def _this_month() -> datetime.date:
    return timezone.now().astimezone(datetime.UTC).date().replace(day=1)


def _exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        return cursor.fetchone()[0]


def _partition_of(table: str, pk) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT tableoid::regclass::text FROM {table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def test_beat_runs_partitions_ensure_daily():
    entry = settings.CELERY_BEAT_SCHEDULE["partitions-ensure"]
    assert entry["task"] == "audit.tasks.ensure_partitions" == tasks.ensure_partitions.name
    assert entry["schedule"] <= 86400.0


@pytest.mark.django_db(transaction=True)
def test_tables_analyze_takes_a_plain_tables_statistics_again_after_a_burst():
    """Not only partitions: invoices, payments and journals are plain tables, and a chunk's look-up of its
    documents by id read every invoice of the source system through another index until they were analysed
    (bench/drain.py). A table that changed less than the thresholds is left alone; no partitioned parent is
    ever named (it holds no rows of its own)."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE analyze_probe (n integer)")
    try:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO analyze_probe SELECT generate_series(1, 6000)")
            deadline = time.monotonic() + 10
            modified = 0
            while modified < 6000 and time.monotonic() < deadline:  # the counters reach the view within a second
                time.sleep(0.2)
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute("SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'analyze_probe'")
                modified = cursor.fetchone()[0]
        assert "analyze_probe" not in audit.tables_analyze(min_rows=10000)
        analysed = audit.tables_analyze(min_rows=5000, fraction=0.02)
        assert "analyze_probe" in analysed
        assert not set(analysed) & {"billing_sync_event", "billing_sync_receipt", "audit_auditentry"}
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'analyze_probe'")
            assert cursor.fetchone()[0] == 6000
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE analyze_probe")


def test_beat_takes_the_tables_statistics_again_every_half_minute():
    """A month-end burst plans on fresh statistics (tests/billing_sync/test_ordering_plans.py shows why)."""
    entry = settings.CELERY_BEAT_SCHEDULE["tables-analyze"]
    assert entry["task"] == "audit.tasks.analyze_tables" == tasks.analyze_tables.name
    assert entry["schedule"] <= 60.0


@pytest.mark.django_db
def test_beats_task_creates_the_next_months_partitions_ahead_of_time_audited():
    ahead = [audit.month_add(_this_month(), n) for n in range(settings.TIEOUT_PARTITIONS_AHEAD + 1)]
    last = ahead[-1]
    with connection.cursor() as cursor:  # as if the months ahead had not been made yet
        for table in audit.PARTITIONED:
            cursor.execute(f'DROP TABLE "{audit.partition_name(table, last)}"')
    assert not _exists(audit.partition_name("billing_sync_event", last))

    tasks.ensure_partitions.delay()

    for table in audit.PARTITIONED:
        assert set(ahead) <= set(audit.partitions_list(table))
    created = AuditEntry.objects.get(action="partitions.created")
    assert sorted(created.after["created"]) == sorted(audit.partition_name(t, last) for t in audit.PARTITIONED)
    assert audit.partitions_ensure() == []  # idempotent: nothing more to make, nothing audited
    assert AuditEntry.objects.filter(action="partitions.created").count() == 1


@pytest.mark.django_db
def test_rows_land_in_their_months_partition(entity):
    answer = services.event_receive(body=json.dumps(f.customer()).encode(), user=None, headers=HEADERS)
    assert answer.status == 202
    month = f"{_this_month():%Y%m}"
    event = Event.objects.get(pk=answer.body["id"])
    assert _partition_of("billing_sync_event", event.pk) == f"billing_sync_event_p{month}"
    assert _partition_of("billing_sync_receipt", event.receipt_id) == f"billing_sync_receipt_p{month}"
    entry = AuditEntry.objects.get(action="event.received", event_id=event.pk)
    assert _partition_of("audit_auditentry", entry.pk) == f"audit_auditentry_p{month}"
    key = EventKey.objects.get(pk=event.pk)
    assert (key.source_system, key.event_id, key.seq, key.idempotency_key) == (
        event.source_system, event.event_id, event.seq, "k-1")
    assert ReceiptKey.objects.filter(pk=event.receipt_id).exists()


@pytest.mark.django_db
def test_the_key_tables_keep_every_uniqueness_guarantee(entity):
    answer = services.event_receive(body=json.dumps(f.customer()).encode(), user=None, headers=HEADERS)
    event = Event.objects.get(pk=answer.body["id"])
    columns = ("id, source_system, event_id, type, entity_code, occurred_at, payload, payload_hash, idempotency_key, "
               "status, correlation_id, received_at, response_body, attempts")

    def insert(*, identity=None, key=None, on_conflict=""):
        source, external = identity or (event.source_system, f"other-{uuid.uuid4()}")
        with connection.cursor() as cursor:
            cursor.execute(f"""INSERT INTO billing_sync_event ({columns}) VALUES
                (%s, %s, %s, 'customer.upserted', 'US01', now(), '{{}}', 'h', %s, 'accepted', '', %s, '{{}}', 0)
                {on_conflict} RETURNING id""", [uuid.uuid4(), source, external, key, timezone.now()])
            return cursor.fetchone()

    for kwargs, constraint in (({"identity": (event.source_system, event.event_id)}, "event_unique_identity"),
                               ({"key": "k-1"}, "event_unique_idem_key")):
        with pytest.raises(IntegrityError, match=constraint), transaction.atomic():
            insert(**kwargs)
        # As on the unpartitioned table, an INSERT ... ON CONFLICT DO NOTHING skips the row instead.
        assert insert(**kwargs, on_conflict="ON CONFLICT DO NOTHING") is None
    with pytest.raises(IntegrityError, match="event_unique_seq"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"""INSERT INTO billing_sync_event ({columns}, seq) SELECT %s, source_system, 'again', type,
                           entity_code, occurred_at, payload, payload_hash, NULL, status, correlation_id,
                           received_at, response_body, attempts, seq FROM billing_sync_event WHERE id = %s""",
                       [uuid.uuid4(), event.pk])
    with pytest.raises(Exception, match="never change"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE billing_sync_event SET seq = seq + 1000 WHERE id = %s", [event.pk])
    assert insert() is not None  # a new identity is welcome
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:  # entry ids
        entry = AuditEntry.objects.filter(action="event.received").first()
        cursor.execute("""INSERT INTO audit_auditentry (id, at, actor, action, object_type, object_id, event_id,
                          correlation_id, content, entry_hash) SELECT id, at + interval '40 days', actor, action,
                          object_type, object_id, event_id, correlation_id, content, entry_hash
                          FROM audit_auditentry WHERE id = %s""", [entry.pk])
    assert Event.objects.count() == 2


@pytest.mark.django_db
def test_foreign_keys_point_at_the_key_tables(entity):
    with pytest.raises(IntegrityError, match="fk_key"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("""INSERT INTO billing_sync_event (id, source_system, event_id, type, entity_code, occurred_at,
                          payload, payload_hash, status, correlation_id, received_at, receipt_id, response_body,
                          attempts) VALUES (%s, 's', 'e', 't', 'US01', now(), '{}', 'h', 'accepted', '', now(),
                          987654321, '', 0)""", [uuid.uuid4()])


@pytest.mark.django_db
def test_a_row_moved_to_another_month_keeps_its_key(entity):
    answer = services.event_receive(body=json.dumps(f.customer()).encode(), user=None, headers={})
    event = Event.objects.get(pk=answer.body["id"])
    earlier = timezone.now() - datetime.timedelta(days=62)
    audit.partitions_ensure(since=earlier.date())
    Event.objects.filter(pk=event.pk).update(received_at=earlier)  # as the demo loader back-dates its history
    Receipt.objects.filter(pk=event.receipt_id).update(received_at=earlier)
    assert _partition_of("billing_sync_event", event.pk) == audit.partition_name(
        "billing_sync_event", earlier.astimezone(datetime.UTC).date().replace(day=1))
    assert EventKey.objects.get(pk=event.pk).received_at == earlier
    assert ReceiptKey.objects.get(pk=event.receipt_id).received_at == earlier
    with pytest.raises(Exception, match="never change"), transaction.atomic():
        Event.objects.filter(pk=event.pk).update(event_id="renamed")


@pytest.mark.django_db
def test_the_audit_chain_verifies_on_the_partitioned_log():
    sealed(5)
    result = audit.chain_verify(roots=True)
    assert result.ok and result.count >= 5


@pytest.mark.django_db(transaction=True)
def test_the_migrations_copy_existing_rows(entity):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([("audit", "0005_entry_content"), ("billing_sync", "0012_reconciliation_mark_lean")])
    try:
        answers = [services.event_receive(body=json.dumps(f.customer()).encode(), user=None,
                                          headers={"Idempotency-Key": f"m-{n}"}) for n in range(3)]
        assert [a.status for a in answers] == [202] * 3
        audit.chain_seal()
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_partitioned_table")
            assert cursor.fetchone()[0] == 0
            cursor.execute("SELECT (SELECT count(*) FROM audit_auditentry), (SELECT count(*) FROM billing_sync_event),"
                           " (SELECT count(*) FROM billing_sync_receipt)")
            before = cursor.fetchone()
    finally:
        latest_migrations()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_partitioned_table")
        assert cursor.fetchone()[0] == 3
        cursor.execute("SELECT (SELECT count(*) FROM audit_auditentry), (SELECT count(*) FROM billing_sync_event),"
                       " (SELECT count(*) FROM billing_sync_receipt)")
        assert cursor.fetchone() == before
    assert EventKey.objects.count() == 3 and ReceiptKey.objects.count() == 3
    assert audit.chain_verify(roots=True).ok
    again = services.event_receive(body=json.dumps(Event.objects.first().payload).encode(), user=None,
                                   headers={"Idempotency-Key": "m-0"})
    assert again.status in (200, 409)  # the identity stayed taken across the migration
    assert Event.objects.count() == 3


@pytest.mark.django_db
def test_a_month_with_rows_in_the_default_partition_is_skipped_and_the_rest_made(entity):
    answer = services.event_receive(body=json.dumps(f.customer()).encode(), user=None, headers={})
    later = timezone.now() + datetime.timedelta(days=400)  # no partition that far ahead: DEFAULT takes it
    Event.objects.filter(pk=answer.body["id"]).update(received_at=later)
    assert _partition_of("billing_sync_event", answer.body["id"]) == "billing_sync_event_pdefault"
    month = later.astimezone(datetime.UTC).date().replace(day=1)

    created = audit.partitions_ensure(months_ahead=15)

    blocked = audit.partition_name("billing_sync_event", month)
    assert blocked not in created and audit.partition_name("billing_sync_receipt", month) in created
    assert AuditEntry.objects.get(action="partitions.created").after["blocked"] == [blocked]


def _relation_locks_held(tables) -> int:
    """The relation locks this session holds on `tables`, their partitions and all their indexes (every mode)."""
    with connection.cursor() as cursor:
        cursor.execute("""
            WITH rels AS (SELECT inhrelid AS oid FROM pg_inherits WHERE inhparent = ANY(%s::regclass[])
                          UNION ALL SELECT unnest(%s::regclass[])::oid),
                 every AS (SELECT oid FROM rels UNION ALL SELECT x.indexrelid FROM pg_index x JOIN rels r
                                                                  ON x.indrelid = r.oid)
            SELECT count(*) FROM pg_locks l JOIN every e ON l.relation = e.oid
             WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation'""", [tables, tables])
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_the_lock_need_counts_what_an_unpruned_worker_transaction_locks(entity):
    """Reading, row-locking and updating events by id (as a worker does: the id says nothing of the month) locks
    every partition and index in each mode; the need covers it, and grows with every month made."""
    answer = services.event_receive(body=json.dumps(f.customer()).encode(), user=None, headers=HEADERS)
    event = Event.objects.get(pk=answer.body["id"])
    with transaction.atomic():
        list(Event.objects.filter(pk=event.pk))
        list(Event.objects.select_for_update().filter(pk=event.pk))
        Event.objects.filter(pk=event.pk).update(attempts=0)
        held = _relation_locks_held(["billing_sync_event"])
    need = audit.partitions_lock_need()
    months = len(audit.partitions_list("billing_sync_event")) + 1  # and DEFAULT
    assert held >= months * 3  # at least each partition in three modes: no pruning
    assert need["need"] >= held
    assert need["relations"] > 0
    assert need["enough"] == (need["max_locks_per_transaction"] >= need["need"])

    audit.partitions_ensure(months_ahead=settings.TIEOUT_PARTITIONS_AHEAD + 2)
    grown = audit.partitions_lock_need()
    assert grown["relations"] > need["relations"] and grown["need"] > need["need"]


@pytest.mark.django_db
def test_the_system_check_warns_when_the_lock_table_is_too_small():
    messages = django_checks.run_checks(databases=["default"], tags=[django_checks.Tags.database])
    warned = [m for m in messages if m.id == "tieout.W001"]
    need = audit.partitions_lock_need()
    assert bool(warned) is not need["enough"]
    if warned:
        assert f"at least {need['need']}" in warned[0].hint
        assert str(need["max_locks_per_transaction"]) in warned[0].msg
