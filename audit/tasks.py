"""Celery tasks of the audit core, on the beat: seal the chain, sign the daily digests, make the monthly
partitions ahead of time and keep their statistics current (the scheduled chain check, which may raise an alarm
in the queue, is `exceptions_queue.tasks.verify_audit_chain`)."""
from celery import shared_task

from audit import services


@shared_task(name="audit.tasks.seal_audit_chain", ignore_result=True)
def seal_audit_chain():
    services.chain_seal()


@shared_task(name="audit.tasks.build_audit_digests", ignore_result=True)
def build_audit_digests():
    services.digests_build()


@shared_task(name="audit.tasks.ensure_partitions", ignore_result=True)
def ensure_partitions():
    services.partitions_ensure()


@shared_task(name="audit.tasks.analyze_tables", ignore_result=True)
def analyze_tables():
    services.tables_analyze()
