"""Celery tasks of the exceptions queue: the scheduled audit chain check, which turns a failed check (the
audit core only reports it) into the `audit_chain_broken` alarm in the queue."""
from celery import shared_task

from audit import services as audit
from audit.models import AuditCheck
from config.errors import Codes
from exceptions_queue.models import ExceptionRecord
from exceptions_queue.services import exception_open_system


def audit_chain_alarm(check: AuditCheck, *, actor="system") -> ExceptionRecord | None:
    """Open `audit_chain_broken` for a failed audit check; nothing for a good one.

    One alarm open at a time: raised again while one is unresolved, it leaves that one alone. The check's
    row is committed before the alarm opens; should the worker die in between, the late ack redelivers
    the task and the re-run (incremental from the last good check, or full) finds the same break.
    """
    if check.ok:
        return None
    return exception_open_system(code=Codes.AUDIT_CHAIN_BROKEN, message=f"Audit chain broken: {check.problem}",
                                 actor=actor)


@shared_task(name="exceptions_queue.tasks.verify_audit_chain", ignore_result=True)
def verify_audit_chain(full: bool = False):
    """Incremental from the last good run (full=True: from the genesis, Merkle roots re-computed)."""
    audit_chain_alarm(audit.chain_check(full=full))
