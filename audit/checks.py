"""Django system checks of the audit layer: `manage.py check --database default` warns (tieout.W001) when
PostgreSQL's `max_locks_per_transaction` is below what one worker transaction may lock across the monthly
partitions of events, receipts and audit entries (`audit.services.partitions_lock_need`)."""
from django.core import checks
from django.db import DatabaseError

from audit import services as audit


@checks.register(checks.Tags.database)
def lock_table_check(app_configs=None, databases=None, **kwargs) -> list:
    if not databases or "default" not in databases:
        return []
    try:
        budget = audit.partitions_lock_need()
    except DatabaseError as exc:  # not migrated yet: nothing is partitioned to count
        return [checks.Info(f"partitions not counted: {exc}", id="tieout.I001")]
    if budget["enough"]:
        return []
    return [checks.Warning(
        f"max_locks_per_transaction is {budget['max_locks_per_transaction']}; one worker transaction may lock "
        f"{budget['need']} relations ({budget['relations']} partitioned tables, partitions and indexes, each in up "
        f"to three modes, and the ordinary tables). Concurrent workers can exhaust PostgreSQL's lock table "
        f"(\"out of shared memory\").",
        hint=f"Set max_locks_per_transaction to at least {budget['need']} in postgresql.conf and restart "
             f"PostgreSQL (README, Scale out: partitions and the lock table).",
        id="tieout.W001")]
