"""Celery tasks of the audit app: seal the chain, verify it, sign the daily digests (all on the beat)."""
from celery import shared_task

from audit import services


@shared_task(name="audit.tasks.seal_audit_chain", ignore_result=True)
def seal_audit_chain():
    services.seal()


@shared_task(name="audit.tasks.verify_audit_chain", ignore_result=True)
def verify_audit_chain(full: bool = False):
    """Incremental from the last good run (full=True: from the genesis); a failure raises the alarm."""
    services.chain_check(full=full)


@shared_task(name="audit.tasks.build_audit_digests", ignore_result=True)
def build_audit_digests():
    services.digests_build()
