"""Celery tasks of the audit app: seal the chain on a schedule."""
from celery import shared_task

from audit import services


@shared_task(name="audit.tasks.seal_audit_chain", ignore_result=True)
def seal_audit_chain():
    services.seal()
