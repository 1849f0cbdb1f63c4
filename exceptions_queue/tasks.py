"""Celery tasks of the exceptions queue: the scheduled audit chain check, which turns a failed check (the
audit core only reports it) into the `audit_chain_broken` alarm in the queue."""
from celery import shared_task

from audit import services as audit
from exceptions_queue import services


@shared_task(name="exceptions_queue.tasks.verify_audit_chain", ignore_result=True)
def verify_audit_chain(full: bool = False):
    """Incremental from the last good run (full=True: from the genesis, Merkle roots re-computed)."""
    services.exception_open_for_audit_check(check=audit.chain_check(full=full), actor="system")
