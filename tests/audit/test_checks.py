"""The scheduled chain check (`audit.services.chain_check`): it records each run as an `AuditCheck`, goes
incremental from the last good one (and notices when the chain under that anchor changed), and a failure
is logged, returned and read by the metric; it opens no exception itself (that is the queue's task,
tests/exceptions_queue/test_tasks.py)."""
import logging

import pytest

from audit import services as audit
from audit.models import AuditCheck
from exceptions_queue.models import ExceptionRecord
from tests.audit.helpers import record_change, sealed
from tests.audit.tamper import edit_entry, triggers_off


@pytest.mark.django_db
def test_the_scheduled_check_goes_incremental_and_returns_a_break_without_opening_an_exception(caplog, client):
    entries = sealed(6)
    first = audit.chain_check()
    assert (first.ok, first.full, first.from_seq, first.to_seq, first.checked) == (True, True, 1, 6, 6)
    for i in range(4):
        record_change(object_id=f"more-{i}")
    second = audit.chain_check()
    # Only what is new, anchored on what the last good run saw.
    assert (second.ok, second.full, second.from_seq, second.to_seq, second.checked) == (True, False, 7, 10, 4)
    assert 'tieout_audit_chain_ok 1.0' in client.get("/metrics").content.decode()

    with triggers_off() as cursor:
        edit_entry(cursor, entries[1].pk, actor="mallory")
    record_change(object_id="after-the-tampering")
    incremental = audit.chain_check()
    assert incremental.ok  # the incremental run only looks at what is new...
    with caplog.at_level(logging.ERROR, logger="audit.services.checks"):
        full = audit.chain_check(full=True)  # ...the daily full run finds the old edit
    assert not full.ok and full.bad_entry_id == entries[1].pk
    assert f"entry {entries[1].pk} (seq 2) was altered" in full.problem
    assert any(r.message == "audit chain broken" for r in caplog.records)
    assert 'tieout_audit_chain_ok 0.0' in client.get("/metrics").content.decode()
    # The audit core reports; raising the alarm is the layer above's (exceptions_queue.tasks).
    assert not ExceptionRecord.objects.filter(code="audit_chain_broken").exists()

    again = audit.chain_check(full=True)
    assert not again.ok and again.problem == full.problem
    assert AuditCheck.objects.count() == 5


@pytest.mark.django_db
def test_the_incremental_check_notices_that_its_anchor_changed():
    sealed(5)
    assert audit.chain_check().ok
    with triggers_off() as cursor:
        cursor.execute("UPDATE audit_auditseal SET chain_hash = repeat('b', 64) WHERE seq = 5")
    check = audit.chain_check()
    assert not check.ok and check.to_seq == 5
    assert "the chain at seq 5" in check.problem and "is gone or changed since" in check.problem
