"""The queue's Celery tasks: the scheduled audit chain check opens `audit_chain_broken` when the audit core
reports a break (once: raised again, it leaves the open alarm alone), and nothing for a good chain; the
beat sends both runs (every 5 minutes, daily full) to it by name, and a real worker runs it; the
operator's `audit_verify --record` raises the same alarm."""
import io
import time

import pytest
from django.conf import settings
from django.core.management import call_command

from audit.models import AuditCheck, AuditEntry
from config.celery import app
from exceptions_queue import services as queue
from exceptions_queue import tasks
from exceptions_queue.models import ExceptionRecord
from tests.audit.helpers import sealed
from tests.audit.tamper import edit_entry, triggers_off


def _alarms():
    return ExceptionRecord.objects.filter(code="audit_chain_broken")


@pytest.mark.django_db
def test_the_task_opens_audit_chain_broken_once_when_the_check_finds_a_break():
    entries = sealed(6)
    with triggers_off() as cursor:
        edit_entry(cursor, entries[1].pk, actor="mallory")
    tasks.verify_audit_chain.apply(kwargs={"full": True})
    [alarm] = _alarms()
    check = AuditCheck.objects.get()
    assert not check.ok and check.bad_entry_id == entries[1].pk
    assert alarm.message == f"Audit chain broken: {check.problem}" and f"entry {entries[1].pk}" in alarm.message
    assert (alarm.status, alarm.process, alarm.event_id, alarm.journal_id) == ("open", "system", None, None)
    opened = AuditEntry.objects.get(action="exception.opened", object_id=str(alarm.pk))
    assert opened.actor == "system"

    tasks.verify_audit_chain.apply(kwargs={"full": True})
    assert AuditCheck.objects.filter(ok=False).count() == 2
    assert list(_alarms()) == [alarm]  # raised once


@pytest.mark.django_db
def test_the_task_opens_nothing_for_a_good_chain():
    sealed(3)
    tasks.verify_audit_chain.apply()
    assert AuditCheck.objects.get().ok
    assert not ExceptionRecord.objects.exists()
    assert queue.exception_open_for_audit_check(check=AuditCheck.objects.get(), actor="system") is None


@pytest.mark.django_db
def test_audit_verify_record_stores_the_run_and_opens_the_alarm():
    entries = sealed(4)
    out = io.StringIO()
    call_command("audit_verify", "--record", stdout=out, stderr=io.StringIO())
    assert out.getvalue().strip() == "OK 4 entries"
    assert AuditCheck.objects.get().ok and not _alarms().exists()

    with triggers_off() as cursor:
        edit_entry(cursor, entries[2].pk, after={"n": "forged"})
    with pytest.raises(SystemExit) as exited:
        call_command("audit_verify", "--record", stdout=out, stderr=io.StringIO())
    assert exited.value.code == 1
    assert out.getvalue().strip().splitlines()[-1] == (f"FAIL entry {entries[2].pk}: entry {entries[2].pk} "
                                                       "(seq 3) was altered")
    [alarm] = _alarms()
    assert alarm.message == f"Audit chain broken: entry {entries[2].pk} (seq 3) was altered"


def test_the_beat_sends_both_chain_checks_to_the_queue_task():
    app.loader.import_default_modules()
    schedule = settings.CELERY_BEAT_SCHEDULE
    assert schedule["audit-verify"] == {"task": "exceptions_queue.tasks.verify_audit_chain", "schedule": 300.0}
    assert schedule["audit-verify-full"] == {"task": "exceptions_queue.tasks.verify_audit_chain",
                                             "schedule": 86400.0, "kwargs": {"full": True}}
    unknown = [entry["task"] for entry in schedule.values() if entry["task"] not in app.tasks]
    assert not unknown, f"the beat names tasks no worker has: {unknown}"


@pytest.mark.worker
@pytest.mark.slow
def test_a_real_worker_runs_the_beat_s_full_check_and_opens_the_alarm(live_worker):
    entries = sealed(5)
    with triggers_off() as cursor:
        edit_entry(cursor, entries[3].pk, actor="mallory")
    entry = settings.CELERY_BEAT_SCHEDULE["audit-verify-full"]
    app.send_task(entry["task"], kwargs=entry["kwargs"])  # as celery beat sends it
    deadline = time.monotonic() + 30
    while not _alarms().exists():
        if time.monotonic() > deadline:
            pytest.fail(f"no audit_chain_broken alarm\n--- worker log ---\n{live_worker.log_tail()}")
        time.sleep(0.1)
    [alarm] = _alarms()
    assert f"entry {entries[3].pk} (seq 4) was altered" in alarm.message
