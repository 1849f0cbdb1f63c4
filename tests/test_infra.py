"""The test infrastructure itself: flushing past the append-only triggers, and the real Celery worker."""
import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from config.celery import app
from tests.helpers import wait_until

INSERT_AUDIT_ENTRY = """
    INSERT INTO audit_auditentry (at, actor, action, object_type, object_id, correlation_id, content, entry_hash)
    VALUES ('2026-12-01T00:00:00Z', 'test', 'infra.check', 'test', '1', '',
            '{"action":"infra.check","actor":"test","after":null,"at":"2026-12-01T00:00:00+00:00","before":null,'
            '"correlation_id":"","event_id":null,"object_id":"1","object_type":"test"}', repeat('0', 64))
"""


def _count(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return cursor.fetchone()[0]


def _refused(sql: str) -> bool:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    except DatabaseError as exc:
        assert "append-only" in str(exc)
        return True
    return False


@pytest.mark.django_db(transaction=True)
def test_flush_passes_the_append_only_triggers_which_stay_active():
    with connection.cursor() as cursor:
        cursor.execute(INSERT_AUDIT_ENTRY)
    assert _refused("TRUNCATE audit_auditentry, audit_auditseal")
    assert _refused("DELETE FROM audit_auditentry")

    call_command("flush", interactive=False, verbosity=0)  # what pytest-django runs after this test

    assert _count("audit_auditentry") == 0
    with connection.cursor() as cursor:
        cursor.execute("SHOW session_replication_role")
        assert cursor.fetchone()[0] == "origin"
        cursor.execute(INSERT_AUDIT_ENTRY)  # left for the teardown flush, which must pass too
    assert _refused("DELETE FROM audit_auditentry")
    assert _refused("TRUNCATE ledger_journal CASCADE")


@pytest.mark.django_db(transaction=True)
def test_the_teardown_flush_left_no_audit_rows():
    assert _count("audit_auditentry") == 0


@pytest.mark.worker
def test_real_worker_consumes_both_queues(live_worker):
    assert live_worker.ping()
    queues = {q["name"] for q in live_worker.inspect().active_queues()[live_worker.nodename]}
    assert {"celery", "posting"} <= queues

    # celery.accumulate is one of Celery's built-in tasks: it proves a message crosses Redis and runs.
    for queue in ("celery", "posting"):
        app.send_task("celery.accumulate", args=(1, 2), queue=queue)
    wait_until(lambda: live_worker.inspect().stats()[live_worker.nodename]["total"].get("celery.accumulate", 0) >= 2,
               timeout=20, interval=0.2, message=lambda: f"worker did not run the tasks:\n{live_worker.log_tail()}")
